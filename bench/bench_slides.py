"""Whole slides: accuracy against the synthetic ground truth, throughput against raw onnxruntime,
stream vs unary transport, and peak memory as the slide grows.

Usage (from the repository root; a trained model, e.g. the demo's)::

    python -m bench.bench_slides --model demo/models/breast
    python -m bench.bench_slides --model demo/models/breast --quick     # small slides

What it does, in one run:

1. writes two synthetic slides (``histoedge data synth-slide``): W x H and 2W x 2H (4x the area);
2. predicts the first in process and scores the tiles against the ground-truth mask
   (tile ROC-AUC: a tile is malignant when most of its ground-truth tissue is), the tissue
   detector against the mask (IoU), and checks that pen and border are not called tissue;
3. throughput (on the larger slide): the slide pipeline (read + resize + classify, overlapped) against raw
   onnxruntime ``session.run`` on the same tiles already in memory, same threads, same batch
   size, alternating A/B twice and keeping each side's best; then the same slide through a
   ``histoedge serve`` process with the ModelStreamInfer stream and with concurrent unary calls
   (alternating, three times each, best of each);
4. peak memory (``VmHWM``) of ``histoedge slide predict`` in a fresh process for each slide.

A model exported before manifests recorded the field of view gets one in a cached copy
(``--model-mpp``, microns per pixel of its training images, 2.0 for the synthetic data at 64 px).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import CACHE_DIR, check, checks_table, machine_info, md_table, python_exe, quiet_env, serve
from bench.common import write_results


def _slide(width: int, height: int, seed: int) -> Path:
    from histoedge.training.data.synth_slide import write_synthetic_slide

    path = CACHE_DIR / "slides" / f"synthetic-{width}x{height}-s{seed}.tiff"
    if not path.exists():
        started = time.perf_counter()
        write_synthetic_slide(path, width=width, height=height, seed=seed)
        print(f"wrote {path} in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def _model_with_fov(model: Path, mpp: float | None) -> Path:
    """The model folder, or a cached copy whose manifests record a field of view."""
    from histoedge.serving.slides.backends import resolve_version_dir

    version_dir = resolve_version_dir(model)
    manifest = json.loads((version_dir / "manifest.json").read_text())
    if manifest.get("field_of_view"):
        return version_dir
    if mpp is None:
        raise SystemExit(f"{version_dir} records no field of view; give --model-mpp")
    height, width = manifest["inputs"][0]["shape"][1:3]
    copy = CACHE_DIR / "slide-models" / manifest["name"] / str(manifest["version"])
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir(parents=True)
    shutil.copy2(version_dir / "model.onnx", copy / "model.onnx")
    manifest["field_of_view"] = {"microns_per_pixel": mpp, "image_size": [height, width]}
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return copy


def _truth_scores(slide: Path, out_dir: Path) -> dict:
    """Tile ROC-AUC against the mask, tissue IoU, pen and border called tissue."""
    import cv2
    import openslide
    from sklearn.metrics import roc_auc_score

    from histoedge.serving.slides.tissue import detect_tissue, tile_fractions
    from histoedge.training.data.synth_slide import BENIGN, BORDER, MALIGNANT, PEN

    labels = cv2.imread(str(slide.with_name(slide.stem + ".mask.png")), cv2.IMREAD_UNCHANGED)
    downsample = json.loads(slide.with_name(slide.stem + ".mask.json").read_text())["downsample"]
    with open(out_dir / "tiles.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    boxes = np.array([[int(r[k]) for k in ("x", "y", "width", "height")] for r in rows])
    probability = np.array([float(r["p_malignant"]) for r in rows])
    tissue = (labels == BENIGN) | (labels == MALIGNANT)
    tissue_under = tile_fractions(tissue, boxes, downsample)
    malignant_under = tile_fractions(labels == MALIGNANT, boxes, downsample)
    junk_under = tile_fractions((labels == PEN) | (labels == BORDER), boxes, downsample)
    has_truth = tissue_under > 0
    truth = malignant_under[has_truth] / tissue_under[has_truth] >= 0.5
    auc = float(roc_auc_score(truth, probability[has_truth])) if 0 < truth.sum() < truth.size else None
    with openslide.OpenSlide(str(slide)) as handle:
        thumbnail = np.asarray(handle.get_thumbnail(labels.shape[::-1]).convert("RGB"))
    detected = detect_tissue(thumbnail)
    return {
        "tiles_scored": int(len(rows)), "tiles_with_truth": int(has_truth.sum()),
        "tiles_malignant": int(truth.sum()), "tile_roc_auc": auc,
        "tile_accuracy_at_threshold": float(np.mean((probability[has_truth] >= 0.5) == truth)),
        "tissue_iou": float((detected & tissue).sum() / (detected | tissue).sum()),
        "pen_called_tissue": float(detected[labels == PEN].mean()),
        "border_called_tissue": float(detected[labels == BORDER].mean()),
        "tiles_mostly_pen_or_border": int((junk_under >= 0.5).sum()),
    }


def _raw_tiles_per_second(version_dir: Path, tiles: np.ndarray, threads: int, batch: int) -> float:
    from histoedge.export.manifest import IMAGE, PROBABILITIES
    from histoedge.serving.runtime import create_session
    from histoedge.serving.settings import ServerSettings

    session = create_session((version_dir / "model.onnx").read_bytes(), ServerSettings(threads=threads, device="cpu"))
    session.run([PROBABILITIES], {IMAGE: tiles[:batch]})
    started = time.perf_counter()
    for start in range(0, len(tiles), batch):
        session.run([PROBABILITIES], {IMAGE: tiles[start:start + batch]})
    return len(tiles) / (time.perf_counter() - started)


def _pipeline(slide: Path, out: Path, backend, batch: int, concurrency: int) -> dict:
    from histoedge.serving.slides.pipeline import PipelineSettings
    from histoedge.serving.slides.predict import PredictOptions, predict_slide

    options = PredictOptions(pipeline=PipelineSettings(batch_size=batch, concurrency=concurrency, progress=False))
    return predict_slide(slide, out, backend, options)


def _peak_rss_mb(slide: Path, version_dir: Path, threads: int, batch: int) -> float:
    # VmHWM, not ru_maxrss: ru_maxrss keeps the high-water mark of the forked parent across exec
    code = ("import sys\nfrom histoedge.cli import main\n"
            f"code = main(['slide', 'predict', {str(slide)!r}, '--out', {str(CACHE_DIR / 'memory')!r}, "
            f"'--model', {str(version_dir)!r}, '--threads', '{threads}', '--batch-size', '{batch}', "
            "'--no-progress'])\n"
            "status = open('/proc/self/status').read().split('VmHWM:')[1].split()[0]\n"
            "print('PEAK_KB', status)\nsys.exit(code)\n")
    result = subprocess.run([python_exe(), "-c", code], capture_output=True, text=True, env=quiet_env())
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    kb = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("PEAK_KB")][0]
    return int(kb) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("demo/models/breast"))
    parser.add_argument("--model-mpp", type=float, default=None)
    parser.add_argument("--width", type=int, default=8192)
    parser.add_argument("--height", type=int, default=6144)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="2048 x 1536 slides")
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.height = 2048, 1536
    from histoedge.serving.client import InferenceClient
    from histoedge.serving.slides.backends import LocalBackend, StreamBackend, UnaryBackend, remote_model_info
    from histoedge.serving.slides.pipeline import read_batch
    from histoedge.serving.slides.tiling import plan_tiles

    machine = machine_info()
    version_dir = _model_with_fov(args.model, args.model_mpp)
    small = _slide(args.width, args.height, args.seed)
    large = _slide(2 * args.width, 2 * args.height, args.seed)
    out = CACHE_DIR / "slide-out"

    print("accuracy against the ground truth", flush=True)
    local = LocalBackend(version_dir, threads=args.threads)
    summary = _pipeline(small, out, local, args.batch_size, 2)
    truth = _truth_scores(small, Path(summary["out_dir"]))
    print(json.dumps(truth, indent=2), flush=True)

    print("throughput: pipeline vs raw onnxruntime on the same tiles", flush=True)
    import openslide
    summary = _pipeline(large, out, local, args.batch_size, 2)
    with open(Path(summary["out_dir"]) / "tiles.csv", newline="") as handle:
        boxes = np.array([[int(r[k]) for k in ("x", "y", "width", "height")] for r in csv.DictReader(handle)])
    with openslide.OpenSlide(str(large)) as handle:
        plan = plan_tiles(handle.dimensions, handle.level_downsamples, (0.5, 0.5), local.info.field_of_view,
                          local.info.input_size)
        tiles = read_batch(handle, plan, boxes)
    raw, piped = [], []
    for _ in range(2):
        raw.append(_raw_tiles_per_second(version_dir, tiles, args.threads, args.batch_size))
        piped.append(_pipeline(large, out, local, args.batch_size, 2)["tiles_per_second"])
    local.close()
    print(f"  raw {max(raw):.0f} tiles/s, pipeline {max(piped):.0f} tiles/s", flush=True)

    print("transport: ModelStreamInfer vs concurrent ModelInfer through histoedge serve", flush=True)
    repo = CACHE_DIR / "slide-repo"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(version_dir, repo / version_dir.parent.name / version_dir.name)
    transports: dict[str, list[float]] = {"stream": [], "unary": []}
    with serve(repo, threads=args.threads, max_batch_size=args.batch_size, log_name="slide-server") as server:
        client = InferenceClient(server["address"], timeout=120)
        info = remote_model_info(client, "")
        for _ in range(3):
            for name, kind in (("stream", StreamBackend), ("unary", UnaryBackend)):
                backend = kind(client, info)
                transports[name].append(_pipeline(large, out, backend, args.batch_size, 4)["tiles_per_second"])
                backend.close()
        client.close()
    print(f"  stream {max(transports['stream']):.0f} tiles/s, unary {max(transports['unary']):.0f} tiles/s",
          flush=True)

    print("peak memory of slide predict, slide vs 4x the slide", flush=True)
    rss_small = _peak_rss_mb(small, version_dir, args.threads, args.batch_size)
    rss_large = _peak_rss_mb(large, version_dir, args.threads, args.batch_size)
    print(f"  {rss_small:.0f} MB vs {rss_large:.0f} MB", flush=True)

    ratio = max(piped) / max(raw)
    growth = rss_large / rss_small - 1
    checks = [
        check("tile ROC-AUC vs ground truth", truth["tile_roc_auc"], ">=", 0.90),
        check("tissue IoU vs ground truth", truth["tissue_iou"], ">=", 0.90),
        check("pen pixels called tissue", truth["pen_called_tissue"], "<=", 0.0),
        check("border pixels called tissue", truth["border_called_tissue"], "<=", 0.0),
        check("slide pipeline / raw onnxruntime (tiles/s)", ratio, ">=", 0.85),
        check("peak memory growth for a 4x larger slide", growth, "<", 0.20),
    ]
    data = {"machine": machine, "model": str(version_dir), "slides": [str(small), str(large)],
            "threads": args.threads, "batch_size": args.batch_size, "truth": truth,
            "raw_tiles_per_second": raw, "pipeline_tiles_per_second": piped, "ratio": ratio,
            "transport_tiles_per_second": transports, "peak_rss_mb": [rss_small, rss_large],
            "memory_growth": growth, "checks": checks}
    body = "\n".join([
        f"Slides {args.width} x {args.height} and {2 * args.width} x {2 * args.height} px at 0.5 um/px "
        f"(accuracy on the first, throughput on the second, memory on both); model "
        f"`{version_dir}`; {args.threads} onnxruntime threads, batches of {args.batch_size}.",
        "",
        md_table(["measure", "value"], [
            ["tiles scored (first slide / second)", f"{truth['tiles_scored']} / {len(tiles)}"],
            ["tile ROC-AUC vs mask", f"{truth['tile_roc_auc']:.4f}" if truth["tile_roc_auc"] else "n/a"],
            ["tissue IoU vs mask", f"{truth['tissue_iou']:.4f}"],
            ["pen / border pixels called tissue", f"{truth['pen_called_tissue']:.4f} / "
                                                  f"{truth['border_called_tissue']:.4f}"],
            ["raw onnxruntime, tiles in memory", f"{max(raw):.0f} tiles/s"],
            ["slide pipeline (read + resize + classify)", f"{max(piped):.0f} tiles/s ({ratio:.2f}x raw)"],
            ["server, ModelStreamInfer stream", f"{max(transports['stream']):.0f} tiles/s"],
            ["server, concurrent ModelInfer", f"{max(transports['unary']):.0f} tiles/s"],
            ["peak RSS, slide / 4x slide", f"{rss_small:.0f} / {rss_large:.0f} MB ({growth:+.1%})"],
        ]),
        "",
        checks_table(checks),
    ])
    write_results("slides", data, "Whole slides", body, quick=args.quick)
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
