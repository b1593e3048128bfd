"""Loading ImageFolder and BreakHis trees: labels, filters, bad files, duplicates, errors."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from histoedge.training.data import DataError, ImageRecord, detect_layout, load_dataset



def test_imagefolder_with_three_classes_and_nested_files(three_class_folder):
    dataset = load_dataset(three_class_folder, image_size=16)
    assert dataset.layout == "imagefolder"
    assert dataset.classes == ["a", "b", "c"]
    assert dataset.images.shape == (12, 16, 16, 3) and dataset.images.dtype == np.uint8
    assert dataset.labels.dtype == np.int64
    assert np.bincount(dataset.labels).tolist() == [4, 4, 4]
    assert any("/deeper/" in r.path for r in dataset.records)
    for record, label, image in zip(dataset.records, dataset.labels, dataset.images):
        assert Path(record.path).is_absolute() and record.patient is None
        assert dataset.classes[label] == record.label
        # colours survive decoding as RGB: the class colour's channel dominates
        assert int(np.argmax(image.reshape(-1, 3).mean(0))) == "abc".index(record.label)
    assert dataset.unreadable == [] and dataset.duplicates == []


def test_breakhis_binary_labels_and_parsed_fields(synth_root, synth_args):
    assert detect_layout(synth_root) == "breakhis"
    dataset = load_dataset(synth_root, image_size=24)
    assert dataset.layout == "breakhis"
    assert dataset.classes == ["benign", "malignant"]
    assert len(dataset.records) == synth_args["n"]
    assert dataset.images.shape == (synth_args["n"], 24, 24, 3)
    record = dataset.records[0]
    assert isinstance(record, ImageRecord)
    with pytest.raises(AttributeError):
        record.label = "x"  # frozen
    for r in dataset.records:
        name = Path(r.path).name
        assert r.patient is not None and r.patient.startswith("14-") and r.patient[3:] in name
        assert f"_{r.subtype}-" in name and r.magnification in {"40X", "100X", "200X", "400X"}
        assert r.label == ("malignant" if name.startswith("SOB_M_") else "benign")
    assert dataset.patients is not None and len(set(dataset.patients)) == synth_args["patients"]


def test_breakhis_subtype_labels(synth_root):
    dataset = load_dataset(synth_root, image_size=16, label="subtype")
    assert dataset.classes == sorted(["A", "F", "PT", "TA", "DC", "LC", "MC", "PC"])
    assert all(r.label == r.subtype for r in dataset.records)


@pytest.mark.parametrize("value", ["40X", "40x", "40"])
def test_breakhis_magnification_filter(synth_root, value):
    dataset = load_dataset(synth_root, image_size=16, magnification=value)
    assert dataset.records and {r.magnification for r in dataset.records} == {"40X"}
    everything = load_dataset(synth_root, image_size=16)
    assert len(dataset.records) == sum(r.magnification == "40X" for r in everything.records)


def test_bad_files_are_listed_not_fatal(three_class_folder, tmp_path):
    good = three_class_folder / "a" / "a_0.png"
    truncated = three_class_folder / "a" / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    (three_class_folder / "b" / "empty.png").write_bytes(b"")
    (three_class_folder / "c" / "notes.png").write_text("this is not an image\n")
    (three_class_folder / "c" / "fake.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken jpeg")
    (three_class_folder / "c" / "readme.txt").write_text("ignored: not an image extension")
    (three_class_folder / "loose.png").write_bytes(good.read_bytes())
    dataset = load_dataset(three_class_folder, image_size=16)
    assert len(dataset.records) == 12
    reasons = dict(dataset.unreadable)
    assert set(reasons) == {str(p) for p in (truncated, three_class_folder / "b" / "empty.png",
                                             three_class_folder / "c" / "notes.png",
                                             three_class_folder / "c" / "fake.jpg",
                                             three_class_folder / "loose.png")}
    assert reasons[str(three_class_folder / "b" / "empty.png")] == "empty file"
    assert "class folder" in reasons[str(three_class_folder / "loose.png")]
    dataset.write_reports(tmp_path / "run")
    with open(tmp_path / "run" / "unreadable.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", "reason"] and len(rows) == 6


def test_byte_identical_duplicates_are_reported_and_first_kept(three_class_folder, tmp_path):
    original = three_class_folder / "a" / "a_0.png"
    copy = three_class_folder / "b" / "zz_copy.png"
    shutil.copy(original, copy)
    dataset = load_dataset(three_class_folder, image_size=16)
    assert dataset.duplicates == [(str(copy), str(original))]
    assert str(copy) not in {r.path for r in dataset.records}
    assert len(dataset.records) == 12
    dataset.write_reports(tmp_path / "run")
    rows = list(csv.reader(open(tmp_path / "run" / "duplicates.csv", newline="")))
    assert rows == [["path", "duplicate_of"], [str(copy), str(original)]]


def test_reports_have_headers_when_empty(three_class_folder, tmp_path):
    load_dataset(three_class_folder, image_size=16).write_reports(tmp_path / "run")
    assert (tmp_path / "run" / "unreadable.csv").read_text().strip() == "path,reason"
    assert (tmp_path / "run" / "duplicates.csv").read_text().strip() == "path,duplicate_of"


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope", image_size=16)


def test_empty_folder(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no image files"):
        load_dataset(tmp_path / "empty", image_size=16)


def test_single_class(three_class_folder):
    shutil.rmtree(three_class_folder / "b")
    shutil.rmtree(three_class_folder / "c")
    with pytest.raises(DataError, match="only one class .'a'."):
        load_dataset(three_class_folder, image_size=16)


def test_nothing_decodable(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "d" / name).mkdir(parents=True)
        (tmp_path / "d" / name / "x.png").write_text("not a png")
    with pytest.raises(DataError, match="could be decoded"):
        load_dataset(tmp_path / "d", image_size=16)


def test_magnification_filter_that_keeps_nothing(synth_copy):
    for path in list(synth_copy.rglob("*-40-*.png")):
        path.unlink()
    with pytest.raises(DataError, match="magnification 40X.*found 100X, 200X, 400X"):
        load_dataset(synth_copy, image_size=16, magnification="40X")


def test_breakhis_options_on_imagefolder_are_refused(three_class_folder):
    with pytest.raises(DataError, match="needs the BreakHis layout"):
        load_dataset(three_class_folder, image_size=16, magnification="40X")
    with pytest.raises(DataError, match="needs the BreakHis layout"):
        load_dataset(three_class_folder, image_size=16, label="subtype")
    with pytest.raises(DataError, match="label must be one of"):
        load_dataset(three_class_folder, image_size=16, label="colour")


def test_stray_image_in_a_breakhis_tree_is_listed(synth_copy, three_class_folder, synth_args):
    stray = synth_copy / "BreaKHis_v1" / "overview.png"
    shutil.copy(three_class_folder / "a" / "a_0.png", stray)
    dataset = load_dataset(synth_copy, image_size=16)
    assert dataset.layout == "breakhis" and len(dataset.records) == synth_args["n"]
    assert dataset.unreadable == [(str(stray), "file name does not match the BreakHis pattern")]
