"""Patient-grouped, stratified splits and splits.csv."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import numpy as np
import pytest

from histoedge.training.data import (DataError, ImageRecord, load_dataset, read_splits_csv, split_dataset,
                           splits_from_rows, write_splits_csv)


@pytest.fixture(scope="module")
def breakhis(synth_root):
    return load_dataset(synth_root, image_size=16)


def test_patient_grouped_split_has_no_shared_patient_and_is_stratified(breakhis):
    splits = split_dataset(breakhis, seed=0)
    assert set(splits) == {"train", "val", "test"}
    all_idx = np.concatenate(list(splits.values()))
    assert len(all_idx) == len(set(all_idx.tolist())) == len(breakhis.labels)
    patients = {name: {breakhis.records[i].patient for i in idx} for name, idx in splits.items()}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    overall = breakhis.labels.mean()
    for name, idx in splits.items():
        assert idx.dtype == np.int64 and len(idx) > 0
        assert set(breakhis.labels[idx].tolist()) == {0, 1}
        assert abs(breakhis.labels[idx].mean() - overall) < 0.2, name
    assert len(splits["train"]) > len(splits["val"]) and len(splits["train"]) > len(splits["test"])


def test_split_is_deterministic_for_a_seed(breakhis):
    a, b = split_dataset(breakhis, seed=4), split_dataset(breakhis, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    others = [split_dataset(breakhis, seed=s)["test"] for s in (5, 6, 7)]
    assert any(not np.array_equal(a["test"], other) for other in others)


def test_images_are_their_own_groups_without_patients(three_class_folder):
    dataset = load_dataset(three_class_folder, image_size=8)
    splits = split_dataset(dataset, fractions=(0.5, 0.25, 0.25), seed=0)
    assert sorted(dataset.labels[splits["train"]].tolist()) == [0, 0, 1, 1, 2, 2]
    for name in ("val", "test"):
        assert sorted(dataset.labels[splits[name]].tolist()) == [0, 1, 2]


def test_too_few_patients_per_class(synth_root):
    dataset = load_dataset(synth_root, image_size=8)
    benign_patients = sorted({r.patient for r in dataset.records if r.label == "benign"})
    keep = [i for i, r in enumerate(dataset.records)
            if r.label == "malignant" or r.patient in benign_patients[:2]]
    dataset.records = [dataset.records[i] for i in keep]
    dataset.labels = dataset.labels[keep]
    with pytest.raises(DataError, match="class 'benign' has only 2 patients.*at least 3"):
        split_dataset(dataset)


def test_rare_class_gets_into_every_split():
    rare = SimpleNamespace(labels=np.array([0] * 3 + [1] * 200), classes=["rare", "common"],
                           records=[ImageRecord(path=f"/x/{i}.png", label="?") for i in range(203)])
    splits = split_dataset(rare, fractions=(0.9, 0.05, 0.05))
    assert all(sorted(set(rare.labels[idx].tolist())) == [0, 1] for idx in splits.values())
    assert 170 < len(splits["train"]) < 195


def test_impossible_split_is_refused(three_class_folder):
    # the rare class only occurs inside three large patients, which all fit best in train
    labels, patients = [], []
    for p in range(10):
        labels += [0] * (p < 3) + [1] * 50
        patients += [f"p{p}"] * ((p < 3) + 50)
    dataset = SimpleNamespace(labels=np.array(labels), classes=["rare", "common"],
                              records=[ImageRecord(path=f"/x/{i}.png", label="?", patient=pid)
                                       for i, pid in enumerate(patients)])
    with pytest.raises(DataError, match="every class in every split"):
        split_dataset(dataset, fractions=(0.8, 0.1, 0.1))
    for path in (three_class_folder / "c").rglob("*.png"):
        if path.name != "c_0.png" and path.name != "c_1.png":
            path.unlink()
    with pytest.raises(DataError, match="class 'c' has only 2 images.*at least 3"):
        split_dataset(load_dataset(three_class_folder, image_size=8))


@pytest.mark.parametrize("fractions", [(0.8, 0.2), (0.7, 0.3, 0.0), (0.5, 0.2, 0.2)])
def test_bad_fractions(breakhis, fractions):
    with pytest.raises(DataError, match="fractions"):
        split_dataset(breakhis, fractions=fractions)


def test_splits_csv_round_trip(breakhis, three_class_folder, tmp_path):
    splits = split_dataset(breakhis, seed=1)
    path = tmp_path / "run" / "splits.csv"
    write_splits_csv(path, breakhis, splits)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "label", "patient", "split"]
    assert len(rows) == len(breakhis.records)
    assert all(r["patient"].startswith("14-") for r in rows)
    back = splits_from_rows(breakhis, read_splits_csv(path))
    assert all(np.array_equal(back[k], splits[k]) for k in splits)
    folder = load_dataset(three_class_folder, image_size=8)
    write_splits_csv(tmp_path / "f.csv", folder, split_dataset(folder, fractions=(0.5, 0.25, 0.25)))
    assert {r.patient for r in read_splits_csv(tmp_path / "f.csv")} == {None}


def test_splits_csv_errors(breakhis, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_splits_csv(tmp_path / "missing.csv")
    (tmp_path / "bad.csv").write_text("path,label\nx,y\n")
    with pytest.raises(DataError, match="lacks column"):
        read_splits_csv(tmp_path / "bad.csv")
    (tmp_path / "other.csv").write_text("path,label,patient,split\n/nowhere.png,benign,,train\n")
    with pytest.raises(DataError, match="not in the dataset"):
        splits_from_rows(breakhis, read_splits_csv(tmp_path / "other.csv"))
