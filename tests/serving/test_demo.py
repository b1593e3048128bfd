"""``histoedge demo`` helpers: reuse of an earlier export, the choice of held-out images, and a
run left by an older version."""

import json
import subprocess

import pytest
import yaml

import histoedge
import histoedge.serving.demo as demo
from histoedge.serving.demo import MODEL_NAME, _existing_export, _held_out_images, _Superseded
from tests.training.conftest import write_image_folder


def _write_version(repo, version, source, precision):
    folder = repo / MODEL_NAME / str(version)
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"precision": precision, "source": str(source)}))
    return folder


def test_existing_export_finds_the_newest_version_of_the_same_run_and_precision(tmp_path):
    repo, run, other = tmp_path / "models", tmp_path / "run", tmp_path / "other"
    _write_version(repo, 1, run, "int8")
    newest = _write_version(repo, 3, run, "int8")
    _write_version(repo, 4, run, "fp32")
    _write_version(repo, 5, other, "int8")
    (repo / MODEL_NAME / ".tmp-6-123").mkdir()  # an export in progress is not a version
    assert _existing_export(repo, run, "int8") == newest
    assert _existing_export(repo, run, "fp16") is None
    assert _existing_export(tmp_path / "empty", run, "int8") is None


def test_held_out_images_come_from_the_test_split_and_alternate_classes(tmp_path):
    rows = ["path,label,patient,split"]
    rows += [f"/train/{i}.png,benign,p1,train" for i in range(3)]
    rows += [f"/test/b{i}.png,benign,p2,test" for i in range(3)]
    rows += [f"/test/m{i}.png,malignant,p3,test" for i in range(2)]
    (tmp_path / "splits.csv").write_text("\n".join(rows) + "\n")
    picked = _held_out_images(tmp_path, 5)
    assert picked == ["/test/b0.png", "/test/m0.png", "/test/b1.png", "/test/m1.png", "/test/b2.png"]
    assert len(_held_out_images(tmp_path, 50)) == 5


def test_training_output_becomes_one_bar_per_member_and_the_rest_is_printed():
    from histoedge.serving.demo import _StepProgress

    progress = _StepProgress("member")
    lines = ["Epoch 1/3", "17/17 - 3s - 196ms/step - loss: 0.4", "Epoch 2/3", "Epoch 2: learning rate scaled",
             "Epoch 1/3", "Epoch 3/3", "I0000 00:00:1796 port.cc:153] oneDNN custom operations are on",
             "Test split (231 images), stacking of ldam, focal:"]
    shown = [line for line in lines if not progress.line(line)]
    progress.close()
    assert shown == ["Test split (231 images), stacking of ldam, focal:"]
    assert progress.runs == 2


def test_held_out_images_are_copied_to_short_names(tmp_path):
    from histoedge.serving.demo import _copy_short

    deep = tmp_path / "data" / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "SOB_B_A-14-1-40-001.png").write_bytes(b"png")
    short = _copy_short([str(deep / "SOB_B_A-14-1-40-001.png")], tmp_path / "held-out")
    assert short == ["held-out/SOB_B_A-14-1-40-001.png"]
    assert (tmp_path / short[0]).read_bytes() == b"png"


def test_training_that_refuses_a_run_with_other_settings_is_recognised(tmp_path):
    """A real ``histoedge train`` child exits with its own status, and nothing in the run is touched."""
    data = write_image_folder(tmp_path / "data", per_class=(6, 6))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"seed": 12345}))
    with pytest.raises(_Superseded):
        demo._histoedge_with_progress("training member", "train", "--ensemble", "--data", str(data),
                                      "--out", str(run), "--image-size", "32", "--quiet")
    assert [p.name for p in run.iterdir()] == ["config.yaml"]
    assert yaml.safe_load((run / "config.yaml").read_text()) == {"seed": 12345}


def test_a_superseded_run_is_moved_aside_with_its_exports_and_trained_afresh(tmp_path, monkeypatch):
    run, repo = tmp_path / "run", tmp_path / "models"
    (run / "members").mkdir(parents=True)
    (run / "config.yaml").write_text("old")
    (repo / MODEL_NAME / "1").mkdir(parents=True)
    calls = []

    def train_step(title, *args):
        calls.append(args)
        if len(calls) == 1:
            raise _Superseded("refused")
        assert not run.exists() and not repo.exists()  # the second attempt starts from nothing

    monkeypatch.setattr(demo, "_histoedge_with_progress", train_step)
    demo._train(tmp_path / "data", run, repo, 64)
    assert len(calls) == 2 and calls[0] == calls[1] and "--ensemble" in calls[0]
    (aside,) = tmp_path.glob("superseded-*")
    assert (aside / "run" / "config.yaml").read_text() == "old"
    assert (aside / "models" / MODEL_NAME / "1").is_dir()


def test_child_commands_ignore_a_histoedge_folder_in_the_working_directory(tmp_path):
    """Run from inside another checkout, the demo's children must still run the installed package."""
    shadow = tmp_path / "histoedge"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("")
    (shadow / "__main__.py").write_text("raise SystemExit('shadowed')\n")
    result = subprocess.run(demo._command(("--version",), verbose=False), cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert histoedge.__version__ in result.stdout
    # the same child without -P would pick up the folder: the test above checks the fix, not luck
    command = [part for part in demo._command(("--version",), verbose=False) if part != "-P"]
    assert "shadowed" in subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120).stderr
