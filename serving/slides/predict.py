"""``histoedge slide predict``: from whole slides to tile probabilities, heatmaps and slide scores.

For each slide: open it, take its pixel size (metadata or ``--mpp``), plan tiles at the
model's field of view (refusing a slide too coarse for the model), find tissue on a
thumbnail, classify the tissue tiles through the bounded pipeline, and write
``tiles.csv``, ``annotations.geojson``, ``heatmap.png`` and ``summary.json``.  A slide that
fails is reported in one line and the others are still predicted.

Example::

    histoedge slide predict slides/*.svs --out results --model models/breast
    histoedge slide predict slide.tiff --out results --server 127.0.0.1:8001
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import histoedge
from histoedge import HistoedgeError
from histoedge.serving.errors import SlideError
from histoedge.serving.slides import outputs
from histoedge.serving.slides.pipeline import PipelineSettings, classify_tiles
from histoedge.serving.slides.reader import open_slide, slide_mpp, thumbnail
from histoedge.serving.slides.tiling import plan_tiles
from histoedge.serving.slides.tissue import TissueSettings, detect_tissue, tile_fractions

MASK_PIXELS_PER_TILE = 8  # tissue mask resolution: a tile spans about 8 x 8 mask pixels
MAX_MASK_SIDE = 4096
HEATMAP_SIDE = 1400  # longest side of the heatmap's slide picture (smaller slides are enlarged)


@dataclass(frozen=True)
class PredictOptions:
    """Per-slide options of ``histoedge slide predict``.

    Args:
        mpp: level-0 microns per pixel to use instead of the slide's metadata.
        force: tile even when the resolution check fails (recorded in the summary).
        min_tissue: tiles with a smaller tissue fraction are skipped and counted.
        pipeline: batch size, concurrency and progress bar.
        tissue: tissue detection settings.
    """

    mpp: float | None = None
    force: bool = False
    min_tissue: float = 0.5
    pipeline: PipelineSettings = PipelineSettings()
    tissue: TissueSettings = TissueSettings()

    def __post_init__(self):
        if self.mpp is not None and not self.mpp > 0:
            raise SlideError(f"--mpp must be positive, got {self.mpp}")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise SlideError(f"--min-tissue must be between 0 and 1, got {self.min_tissue}")


def slide_name(path: Path) -> str:
    """The output folder name of a slide: its file name without the extension."""
    return Path(path).stem or Path(path).name


def _tissue(slide, tile_size: tuple[int, int], settings: TissueSettings):
    """(thumbnail RGB, tissue mask, downsample) at about 8 mask pixels per tile side."""
    width, height = slide.dimensions
    downsample = max(min(tile_size) / MASK_PIXELS_PER_TILE, max(width, height) / MAX_MASK_SIDE, 1.0)
    size = (max(1, round(width / downsample)), max(1, round(height / downsample)))
    picture = thumbnail(slide, size)
    return picture, detect_tissue(picture, settings), width / size[0]


def predict_slide(path: Path, out_root: Path, backend, options: PredictOptions) -> dict[str, Any]:
    """Predict one slide; return its summary (also written to ``summary.json``)."""
    import openslide

    started = time.perf_counter()
    path = Path(path)
    info = backend.info
    with open_slide(path) as slide:
        slide_width = slide.dimensions[0]
        try:
            recorded = slide_mpp(slide)
            if options.mpp is not None:
                mpp, mpp_source = (options.mpp, options.mpp), "--mpp"
            elif recorded is not None:
                mpp, mpp_source = recorded, "slide metadata"
            else:
                raise SlideError(f"{path}: the slide records no pixel size; give --mpp "
                                 "(microns per pixel at level 0, e.g. 0.25 for a 40x scan)")
            try:
                plan = plan_tiles(slide.dimensions, slide.level_downsamples, mpp, info.field_of_view,
                                  info.input_size, options.force)
            except SlideError as error:
                raise SlideError(f"{path}: {error}") from None
            _, mask, downsample = _tissue(slide, plan.tile_size, options.tissue)
            fractions = tile_fractions(mask, plan.boxes, downsample)
            keep = fractions >= options.min_tissue
            if not mask.any() or not keep.any():
                raise SlideError(f"{path}: no tissue found (tissue covers {100 * mask.mean():.2f}% of the "
                                 f"thumbnail; no tile has {options.min_tissue:.0%} tissue)")
            boxes, fractions = plan.boxes[keep], fractions[keep]
            inference_started = time.perf_counter()
            probabilities = classify_tiles(slide, plan, boxes, backend, options.pipeline, name=path.name)
            inference_seconds = time.perf_counter() - inference_started
            scale = HEATMAP_SIDE / max(slide.dimensions)
            picture_rgb = thumbnail(slide, (max(1, round(slide.dimensions[0] * min(scale, 1.0))),
                                            max(1, round(slide.dimensions[1] * min(scale, 1.0)))))
        except openslide.OpenSlideError as error:
            raise SlideError(f"{path}: damaged slide: {error}") from None
        except SlideError as error:
            message = str(error)
            raise SlideError(message if message.startswith(str(path)) else f"{path}: {message}") from None

    positive_index = 1 if info.positive_class is None else info.positive_class
    positive_index = min(positive_index, len(info.classes) - 1)
    labels = info.labels(probabilities)
    positive = probabilities[:, positive_index]
    out_dir = Path(out_root) / slide_name(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs.write_tiles_csv(out_dir / "tiles.csv", boxes, fractions, probabilities, info.classes, labels)
    outputs.write_geojson(out_dir / "annotations.geojson",
                          outputs.geojson(boxes, probabilities, info.classes, labels, positive_index))
    score = outputs.slide_score(positive)
    positive_fraction = float(np.mean([label == info.classes[positive_index] for label in labels]))
    mask_mpp = min(mpp) * downsample
    summary = {
        "slide": str(path), "name": slide_name(path),
        "model": {"name": info.name, "version": info.version, "sha256": info.sha256,
                  "classes": list(info.classes), "threshold": info.threshold, "transport": backend.transport},
        "score": round(score, 6), "score_class": info.classes[positive_index],
        "aggregation": outputs.AGGREGATION,
        "positive_tile_fraction": round(positive_fraction, 6),
        "tissue_area_mm2": round(float(mask.sum()) * (mask_mpp / 1000.0) ** 2, 4),
        "tiles": {"grid": int(len(plan.boxes)), "scored": int(len(boxes)),
                  "skipped_little_tissue": int(len(plan.boxes) - len(boxes)),
                  "min_tissue_fraction": options.min_tissue},
        "tiling": {"level": plan.level, "level_downsample": round(plan.level_downsample, 4),
                   "tile_size_level0": list(plan.tile_size), "read_size": list(plan.read_size),
                   "input_size": list(plan.input_size), "mpp": list(mpp), "mpp_source": mpp_source},
        "resolution_check": plan.check.to_dict(),
        "seconds": {"total": None, "inference": round(inference_seconds, 3)},
        "tiles_per_second": round(len(boxes) / max(inference_seconds, 1e-9), 2),
        "toolkit_version": histoedge.__version__,
    }
    picture = outputs.render_heatmap(
        picture_rgb, slide_width / picture_rgb.shape[1], boxes, positive, title=path.name,
        subtitle=f"score {score:.3f} ({outputs.TOP_FRACTION:.0%} top tiles), {positive_fraction:.0%} of "
                 f"{len(boxes)} tiles {info.classes[positive_index]}; model {info.name} v{info.version}",
        label=f"P({info.classes[positive_index]})", threshold=info.threshold)
    outputs.write_heatmap(out_dir / "heatmap.png", picture)
    summary["seconds"]["total"] = round(time.perf_counter() - started, 3)
    outputs.write_summary(out_dir / "summary.json", summary)
    summary["out_dir"] = str(out_dir)
    return summary


def _open_backend(args):
    """The backend named by ``--model`` or ``--server`` (exactly one), and what to close."""
    if bool(args.model) == bool(args.server):
        raise HistoedgeError("give exactly one of --model MODELS/NAME[/VERSION] or --server HOST:PORT")
    if args.model:
        from histoedge.serving.settings import _default_threads
        from histoedge.serving.slides.backends import LocalBackend

        backend = LocalBackend.open(Path(args.model), threads=args.threads or _default_threads(),
                                    workers=args.concurrency or 1)
        return backend, [backend.close]
    import grpc

    from histoedge.serving.client import InferenceClient
    from histoedge.serving.slides.backends import StreamBackend, UnaryBackend, remote_model_info

    client = InferenceClient(args.server, args.tls_ca, args.tls_cert, args.tls_key, args.timeout)
    try:
        info = remote_model_info(client, args.model_name or "")
    except grpc.RpcError as error:
        client.close()
        raise HistoedgeError(f"{args.server}: {error.code().name}: {error.details()}") from None
    kind = StreamBackend if args.transport == "stream" else UnaryBackend
    backend = kind(client, info)
    return backend, [backend.close, client.close]


def cli_predict(args) -> int:
    """``histoedge slide predict``: exit 0 if every slide was predicted, 1 if any failed."""
    pipeline = PipelineSettings(batch_size=args.batch_size, concurrency=args.concurrency or 4,
                                timeout=args.timeout, progress=not args.no_progress)
    options = PredictOptions(mpp=args.mpp, force=args.force, min_tissue=args.min_tissue, pipeline=pipeline)
    backend, closers = _open_backend(args)
    failed, seen = [], {}
    try:
        info = backend.info
        print(f"model {info.name} v{info.version} ({backend.transport}); "
              f"{len(args.slides)} slide(s) -> {args.out}", file=sys.stderr)
        for path in map(Path, args.slides):
            name = slide_name(path)
            if name in seen:
                failed.append(path)
                print(f"histoedge slide predict: error: {path}: has the same name as {seen[name]}; "
                      "outputs would overwrite each other", file=sys.stderr)
                continue
            seen[name] = path
            try:
                summary = predict_slide(path, Path(args.out), backend, options)
            except HistoedgeError as error:
                failed.append(path)
                print(f"histoedge slide predict: error: {error}", file=sys.stderr)
                continue
            tiles = summary["tiles"]
            print(f"{path}: {tiles['scored']} tiles scored ({tiles['skipped_little_tissue']} skipped, "
                  f"little tissue), score {summary['score']:.3f}, {summary['positive_tile_fraction']:.1%} "
                  f"{summary['score_class']}, {summary['tiles_per_second']:.0f} tiles/s; "
                  f"heatmap {Path(summary['out_dir']) / 'heatmap.png'}")
    finally:
        for close in closers:
            close()
    if failed:
        print(f"histoedge slide predict: {len(failed)} of {len(args.slides)} slide(s) failed",
              file=sys.stderr)
    return 1 if failed else 0
