"""The synthetic H&E generator: layout, file names, determinism, class signal."""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

import histoedge.cli
from histoedge.training.data import DataError
from histoedge.training.data.synth import generate_synthetic

NAME = re.compile(r"^SOB_(?P<kind>[BM])_(?P<subtype>[A-Z]+)-14-(?P<pid>[0-9A-Z]+)-"
                  r"(?P<mag>40|100|200|400)-(?P<seq>\d{3})\.png$")


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.png"))


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in _files(root)}


def test_layout_and_file_names_follow_breakhis(synth_root, synth_args):
    files = _files(synth_root)
    assert len(files) == synth_args["n"]
    labels_of_patient = defaultdict(set)
    mags_of_patient = defaultdict(set)
    subtypes = set()
    for path in files:
        match = NAME.match(path.name)
        assert match, path.name
        kind, subtype, pid, mag = match["kind"], match["subtype"], match["pid"], match["mag"]
        label = "malignant" if kind == "M" else "benign"
        rel = path.relative_to(synth_root).parts
        assert rel[:5] == ("BreaKHis_v1", "histology_slides", "breast", label, "SOB")
        assert rel[5] == subtype
        assert rel[6] == f"SOB_{kind}_{subtype}_14-{pid}"
        assert rel[7] == f"{mag}X"
        assert subtype in ({"A", "F", "PT", "TA"} if kind == "B" else {"DC", "LC", "MC", "PC"})
        labels_of_patient[pid].add(label)
        mags_of_patient[pid].add(mag)
        subtypes.add(subtype)
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert len(labels_of_patient) == synth_args["patients"]
    assert all(len(v) == 1 for v in labels_of_patient.values())  # one label per patient
    assert all(len(v) == 4 for v in mags_of_patient.values())  # every magnification per patient
    assert subtypes == {"A", "F", "PT", "TA", "DC", "LC", "MC", "PC"}
    malignant = sum("/malignant/" in str(p) for p in files)
    assert malignant == round(synth_args["n"] * synth_args["malignant_fraction"])


def test_same_seed_gives_identical_files_and_other_seed_differs(synth_root, synth_args, tmp_path):
    again = tmp_path / "again"
    generate_synthetic(again, **synth_args)
    assert _digest(again) == _digest(synth_root)
    other = tmp_path / "other"
    generate_synthetic(other, **{**synth_args, "seed": 1})
    assert _digest(other) != _digest(synth_root)


def test_tiles_look_like_h_and_e_and_malignant_nuclei_are_denser(tmp_path):
    root = tmp_path / "s"
    generate_synthetic(root, n=80, size=64, patients=10, seed=3)
    stats = {"benign": [], "malignant": []}
    for path in _files(root):
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(float)
        label = "malignant" if "/malignant/" in str(path) else "benign"
        # haematoxylin-rich (purple/blue) pixels: blue well above green and fairly dark
        nuclear = (rgb[..., 2] - rgb[..., 1] > 40) & (rgb.mean(-1) < 150)
        stats[label].append(nuclear.mean())
        stats.setdefault("pink", []).append(rgb[..., 0].mean() > rgb[..., 1].mean())
    assert np.mean(stats["pink"]) > 0.9  # eosin background: red above green
    assert np.mean(stats["malignant"]) > 1.5 * np.mean(stats["benign"])
    # but the classes overlap: some benign tiles are busier than some malignant ones
    assert max(stats["benign"]) > min(stats["malignant"])


def test_cli_writes_dataset_and_prints_summary(tmp_path, capsys):
    out = tmp_path / "cli"
    code = histoedge.cli.main(["data", "synth", "--out", str(out), "--n", "24", "--size", "24",
                           "--patients", "8", "--seed", "5"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "wrote 24 images from 8 patients" in printed
    assert "benign" in printed and "malignant" in printed
    assert len(_files(out)) == 24


def test_default_patients_mirror_breakhis_and_shrink_for_small_sets(tmp_path, capsys):
    assert histoedge.cli.main(["data", "synth", "--out", str(tmp_path / "small"), "--n", "40",
                           "--size", "16"]) == 0
    assert "wrote 40 images from 8 patients" in capsys.readouterr().out
    assert histoedge.cli.main(["data", "synth", "--out", str(tmp_path / "big"), "--n", "500",
                           "--size", "16"]) == 0
    assert "wrote 500 images from 82 patients" in capsys.readouterr().out


@pytest.mark.parametrize("kwargs, message", [
    (dict(n=10, patients=20), "--patients"),
    (dict(n=10, patients=4, size=8), "too small"),
    (dict(n=10, patients=4, malignant_fraction=1.5), "malignant-fraction"),
])
def test_bad_arguments_raise_data_error(tmp_path, kwargs, message):
    with pytest.raises(DataError, match=message):
        generate_synthetic(tmp_path / "bad", **kwargs)


def test_refuses_to_write_into_an_existing_dataset(synth_copy, synth_args):
    with pytest.raises(DataError, match="already holds images"):
        generate_synthetic(synth_copy, **synth_args)
