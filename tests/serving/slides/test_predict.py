"""``histoedge slide predict`` and ``slide info`` end to end, in process and against a server."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from histoedge.cli import main
from histoedge.training.data.synth_slide import write_synthetic_slide
from tests.serving.slides.conftest import MODEL


def _tiles(folder: Path) -> list[dict]:
    with open(folder / "tiles.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def local_run(slide, slide_repo, tmp_path_factory):
    out = tmp_path_factory.mktemp("predicted")
    assert main(["slide", "predict", str(slide), "--out", str(out), "--model", str(slide_repo / MODEL),
                 "--batch-size", "8", "--no-progress"]) == 0
    return out / "synthetic"


def test_outputs_are_written_and_consistent(local_run, slide):
    names = {p.name for p in local_run.iterdir()}
    assert names == {"tiles.csv", "heatmap.png", "annotations.geojson", "summary.json"}
    rows = _tiles(local_run)
    summary = json.loads((local_run / "summary.json").read_text())
    assert summary["tiles"]["scored"] == len(rows) > 5
    assert summary["tiles"]["scored"] + summary["tiles"]["skipped_little_tissue"] == summary["tiles"]["grid"] == 48
    assert summary["model"]["name"] == MODEL and len(summary["model"]["sha256"]) == 64
    assert summary["resolution_check"]["passed"] and summary["tiling"]["level"] == 1
    assert 0.01 < summary["tissue_area_mm2"] < 1024 * 768 * 0.25e-6 * 0.5  # a few tissue fragments
    positive = np.array([float(r["p_malignant"]) for r in rows])
    top = np.sort(positive)[-max(1, round(0.05 * len(positive))):]
    assert summary["score"] == pytest.approx(top.mean(), abs=1e-6)
    for row in rows:
        assert float(row["p_benign"]) + float(row["p_malignant"]) == pytest.approx(1, abs=1e-5)
        assert row["label"] == ("malignant" if float(row["p_malignant"]) >= 0.5 else "benign")
        assert float(row["tissue_fraction"]) >= 0.5 and row["width"] == row["height"] == "128"


def test_geojson_is_valid_and_inside_the_slide(local_run):
    collection = json.loads((local_run / "annotations.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    rows = _tiles(local_run)
    assert len(collection["features"]) == len(rows)
    for feature, row in zip(collection["features"], rows):
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        (ring,) = feature["geometry"]["coordinates"]
        assert len(ring) == 5 and ring[0] == ring[-1]  # closed
        xs, ys = [p[0] for p in ring], [p[1] for p in ring]
        assert min(xs) >= 0 and max(xs) <= 1024 and min(ys) >= 0 and max(ys) <= 768
        assert (min(xs), min(ys)) == (int(row["x"]), int(row["y"]))
        properties = feature["properties"]
        assert properties["objectType"] == "tile"
        assert properties["classification"]["name"] == row["label"]
        assert properties["measurements"]["P(malignant)"] == pytest.approx(float(row["p_malignant"]), abs=1e-6)


def test_heatmap_shows_the_slide_the_probabilities_and_a_colour_bar(local_run):
    picture = cv2.imread(str(local_run / "heatmap.png"))
    assert picture is not None and picture.shape[1] > 900  # small slides are enlarged to be readable
    # the colour bar: a column whose colour runs through the turbo ramp from top (1) to bottom (0)
    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(-1, 1), cv2.COLORMAP_TURBO)[:, 0]
    bar_columns = [x for x in range(picture.shape[1] - 200, picture.shape[1])
                   if np.any(np.all(picture[:, x] == lut[255], axis=1)) and
                   np.any(np.all(picture[:, x] == lut[0], axis=1))]
    assert bar_columns
    column = picture[:, bar_columns[len(bar_columns) // 2]]
    top = np.where(np.all(column == lut[255], axis=1))[0].min()
    bottom = np.where(np.all(column == lut[0], axis=1))[0].max()
    assert top < bottom
    # the title (dark text) is drawn above the picture
    assert (picture[:80].min(axis=2) < 60).sum() > 200


def test_server_and_local_results_are_identical(slide, slide_repo, local_run, start_server, tmp_path):
    server = start_server(slide_repo)
    local = _tiles(local_run)
    for transport in ("stream", "unary"):
        out = tmp_path / transport
        assert main(["slide", "predict", str(slide), "--out", str(out), "--server", f"127.0.0.1:{server.port}",
                     "--transport", transport, "--batch-size", "8", "--no-progress"]) == 0
        remote = _tiles(out / "synthetic")
        assert [(r["x"], r["y"], r["label"]) for r in remote] == [(r["x"], r["y"], r["label"]) for r in local]
        np.testing.assert_allclose([float(r["p_malignant"]) for r in remote],
                                   [float(r["p_malignant"]) for r in local], atol=1e-5)
        summary = json.loads((out / "synthetic" / "summary.json").read_text())
        assert summary["model"]["transport"] == f"grpc-{transport}"


@pytest.fixture(scope="module")
def bad_slides(tmp_path_factory, slide):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "notes.txt").write_text("this is not a slide\n")
    data = slide.read_bytes()
    (folder / "truncated.tiff").write_bytes(data[: len(data) // 3])
    write_synthetic_slide(folder / "nompp.tiff", width=512, height=512, seed=5, record_mpp=False)
    with tifffile.TiffWriter(folder / "glass.tiff") as tif:
        tif.write(np.full((512, 512, 3), 238, np.uint8), tile=(256, 256), photometric="rgb",
                  resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    return folder


def test_bad_slides_get_one_line_each_and_the_good_one_is_predicted(bad_slides, slide, slide_repo, tmp_path,
                                                                    capsys):
    names = ["notes.txt", "truncated.tiff", "nompp.tiff", "glass.tiff"]
    paths = [str(bad_slides / name) for name in names]
    code = main(["slide", "predict", *paths[:2], str(slide), *paths[2:], "--out", str(tmp_path),
                 "--model", str(slide_repo / MODEL), "--no-progress"])
    assert code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 4
    for name, reason in zip(names, ["not a slide", "truncated", "no pixel size; give --mpp", "no tissue"]):
        (line,) = [line for line in errors if name in line]
        assert reason in line, line
    assert (tmp_path / "synthetic" / "summary.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]


def test_a_too_coarse_slide_is_refused_unless_forced(slide, slide_repo, tmp_path, capsys):
    args = ["slide", "predict", str(slide), "--out", str(tmp_path), "--model", str(slide_repo / MODEL),
            "--no-progress", "--mpp", "5.2"]  # 1.3x coarser than the model's 4 um
    assert main(args) == 1
    assert "1.30x coarser" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0
    check = json.loads((tmp_path / "synthetic" / "summary.json").read_text())["resolution_check"]
    assert check["forced"] and not check["passed"] and check["ratio"] == pytest.approx(1.3)


def test_slide_info(slide, bad_slides, capsys):
    assert main(["slide", "info", str(slide), str(bad_slides / "nompp.tiff")]) == 0
    out = capsys.readouterr().out
    assert "generic-tiff, 1024 x 768 px" in out and "level 1          256 x 192 (downsample 4" in out
    assert "0.5 x 0.5 um" in out and "problem: no pixel size" in out
    assert main(["slide", "info", str(bad_slides / "notes.txt"), str(slide), "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["mpp"] == [0.5, 0.5]
    assert captured.err.count("error:") == 1
