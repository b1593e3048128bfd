"""``histoedge train`` on two workers (MultiWorkerMirroredStrategy) as separate processes on 127.0.0.1.

Each worker gets its own ``--out`` folder, as two pods with their own disks would: the chief's
must hold the whole run, the other worker's nothing.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from histoedge.training.distributed import cluster_from, read_tf_config
from histoedge.training.errors import RunError
from tests.support.ports import free_ports

HISTOEDGE = str(Path(sys.executable).parent / "histoedge")
MEMBER = "cw_plain"
# Balanced class weights and an L2 penalty, but no dropout, batch norm or augmentation: the
# replicas then compute exactly what one process would.
TINY = ["--recipe", MEMBER, "--set", "recipes={cw_plain: {base: class_weight, "
        "regularisation: {regularizer: l2, l2: 0.0001, head_dropout: 0.0}}}", "--image-size", "32", "--batch-size", "16", "--seed", "0", "--quiet",
        "--set", "model.filters=[4, 8]", "--set", "model.block_dropout=[0.0, 0.0]",
        "--set", "model.dense_units=[8]", "--set", "evaluation.bootstrap=20",
        "--set", "preprocess.stain_normalisation=reinhard",  # every worker normalises as the chief does
        "--set", "augmentation={rotation: 0.0, horizontal_flip: false, vertical_flip: false, zoom: 0.0, "
        "shear: 0.0, width_shift: 0.0, height_shift: 0.0, brightness: 0.0, contrast: 0.0, stain: 0.0}"]
TOLERANCE = 1e-5  # max |w_distributed - w_single|: float sums in another order, nothing more
DIGEST = re.compile(r"weights digest ([0-9a-f]{64})")


def start_worker(index: int, ports: list[int], data: Path, out: Path, epochs: int, log: Path) -> subprocess.Popen:
    tf_config = {"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                 "task": {"type": "worker", "index": index}}
    env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen([HISTOEDGE, "train", "--data", str(data), "--out", str(out), "--epochs", str(epochs)]
                            + TINY, env=env, stdout=open(log, "a"), stderr=subprocess.STDOUT)


def start_pair(data: Path, root: Path, epochs: int) -> list[subprocess.Popen]:
    ports = free_ports(2)
    return [start_worker(i, ports, data, root / f"worker{i}", epochs, root / f"worker{i}.log") for i in range(2)]


def finish(processes, timeout: float = 300) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(max(1.0, deadline - time.monotonic())) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()


def digests(root: Path) -> list[list[str]]:
    return [DIGEST.findall((root / f"worker{i}.log").read_text()) for i in range(2)]


def history(run: Path) -> list[dict]:
    with open(run / "members" / MEMBER / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def load_weights(path: Path) -> list[np.ndarray]:
    import keras

    return keras.models.load_model(path, compile=False).get_weights()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from tests.training.conftest import write_image_folder

    return write_image_folder(tmp_path_factory.mktemp("dist") / "data")


def test_two_workers_match_one_worker(data, tmp_path):
    """One epoch: 33 training images in global batches of 16 (the last of one image, so one replica
    gets none and trains on a zero-weight padding row).  Later epochs are not compared: Keras'
    ``fit`` skips some of the seeded pipeline's reshuffles between epochs (an implementation
    detail), so its epoch 2 sees another, equally random order than the distributed loop."""
    pair = start_pair(data, tmp_path, epochs=1)
    single = subprocess.Popen([HISTOEDGE, "train", "--data", str(data), "--out", str(tmp_path / "single"),
                               "--epochs", "1", "--distributed", "off"] + TINY,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
                              stdout=open(tmp_path / "single.log", "w"), stderr=subprocess.STDOUT)
    codes = finish(pair + [single])
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in ("worker0", "worker1", "single")}
    assert codes == [0, 0, 0], {name: text[-2000:] for name, text in logs.items()}

    # both workers finished with bit-identical weights
    (chief_digest,), (worker_digest,) = digests(tmp_path)
    assert chief_digest == worker_digest
    assert "MultiWorkerMirroredStrategy: task worker-1 of 2 workers (2 replicas)" in logs["worker1"]

    # the chief alone wrote the run directory; the other worker wrote nothing
    chief, other = tmp_path / "worker0", tmp_path / "worker1"
    for path in ("config.yaml", "splits.csv", "metrics.json", "ensemble.json", "predictions.npz", "report.html",
                 f"members/{MEMBER}/model.keras", f"members/{MEMBER}/history.csv", f"members/{MEMBER}/DONE"):
        assert (chief / path).is_file(), path
    assert not [p for p in other.rglob("*") if p.is_file()]
    assert not (chief / "backup").exists()  # backups are removed when a member finishes

    # same global batch (16) on one worker: the same model within TOLERANCE
    got, want = load_weights(chief / "members" / MEMBER / "model.keras"), \
        load_weights(tmp_path / "single" / "members" / MEMBER / "model.keras")
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(got, want))
    print(f"\nmax |w_2 workers - w_1 worker| = {difference:.3g} (tolerance {TOLERANCE})")
    assert difference <= TOLERANCE, difference
    assert any(float(np.max(np.abs(w))) > 0 for w in got)
    for row_got, row_want in zip(history(chief), history(tmp_path / "single"), strict=True):
        for key in ("loss", "val_loss", "accuracy", "val_accuracy", "lr"):
            assert float(row_got[key]) == pytest.approx(float(row_want[key]), rel=1e-4, abs=1e-5), key
    distributed_metrics = json.loads((chief / "metrics.json").read_text())
    single_metrics = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert distributed_metrics["models"]["ensemble"]["test"]["roc_auc"] == pytest.approx(
        single_metrics["models"]["ensemble"]["test"]["roc_auc"], abs=1e-6)


def _backup_epoch(folder: Path) -> int:
    try:
        return json.loads((folder / "training_metadata.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def test_killed_worker_resumes_from_its_backup(data, tmp_path):
    epochs = 8  # a wide window to kill worker 1 mid-run even on a loaded machine
    pair = start_pair(data, tmp_path, epochs)
    backups = [tmp_path / f"worker{i}" / "backup" / MEMBER / f"worker-{i}" for i in range(2)]
    deadline = time.monotonic() + 240
    while min(_backup_epoch(b) for b in backups) < 1 and time.monotonic() < deadline and pair[1].poll() is None:
        time.sleep(0.05)
    killed_after = _backup_epoch(backups[1])
    assert 1 <= killed_after < epochs, "worker 1 never wrote a backup mid-run"
    pair[1].send_signal(signal.SIGKILL)
    codes = finish(pair, timeout=120)  # the chief's collectives fail once its peer is gone
    assert codes[1] == -signal.SIGKILL and codes[0] != 0
    assert not (tmp_path / "worker0" / "metrics.json").exists()
    assert all(_backup_epoch(b) >= 1 for b in backups)

    restarted = start_pair(data, tmp_path, epochs)  # same folders, new ports (as new pods)
    codes = finish(restarted)
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], [text[-2000:] for text in logs]
    resumed = [int(m) for text in logs for m in re.findall(r"resuming from the backup in .* after epoch (\d+)", text)]
    print(f"\nworker 1 killed after its backup of epoch {killed_after}; restarted workers resumed after epochs "
          f"{resumed} of {epochs}")
    assert len(resumed) == 2 and min(resumed) >= 1, resumed
    (first, second) = digests(tmp_path)
    assert first[-1] == second[-1]
    assert [int(row["epoch"]) for row in history(tmp_path / "worker0")] == list(range(1, epochs + 1))
    assert (tmp_path / "worker0" / "metrics.json").is_file()
    assert not any(b.exists() for b in backups)


def test_tf_config_detection():
    assert read_tf_config({}) is None
    one = {"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}}
    assert read_tf_config({"TF_CONFIG": json.dumps(one)}) is None  # a single task is not a cluster
    assert cluster_from("auto", {"TF_CONFIG": json.dumps(one)}) is None
    with pytest.raises(RunError, match="TF_CONFIG"):
        read_tf_config({"TF_CONFIG": "{not json"})
    two = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 2}}
    with pytest.raises(RunError, match="not in its cluster"):
        read_tf_config({"TF_CONFIG": json.dumps(two)})
    with pytest.raises(RunError, match="needs TF_CONFIG"):
        cluster_from("multi-worker", {})
    with pytest.raises(RunError, match="--distributed"):
        cluster_from("parameter-server", {})
