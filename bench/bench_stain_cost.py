"""CPU cost of stain normalisation next to int8 ensemble inference, per tile, measured side by side.

The server normalises each image after decoding and resizing it to the model's input size,
so the cost that matters is normalisation at that size against one tile's share of an int8
ensemble run.  The 224-px row is the cost for a model that takes 224-px tiles; its inference
time is estimated from the measured one by the pixel ratio (convolution cost grows with area),
and says so.

Usage::

    python bench/bench_stain_cost.py                                  # demo/models/breast/1
    python bench/bench_stain_cost.py --model models/breast/3 --repeats 50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import check, checks_table, machine_info, md_table, write_results  # noqa: E402


def per_call_ms(function, repeats: int) -> float:
    """Median wall time of one call, in ms (median: the machine may be shared)."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> int:
    import onnxruntime as ort

    from histoedge.export.manifest import IMAGE, MODEL_FILE, Manifest
    from histoedge.export.stain import fit_reference
    from histoedge.training.data.synth_render import TileSpec, render_tiles

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("demo/models/breast/1"))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16, help="batch size of the inference measurement")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 3
    manifest = Manifest.load(args.model)
    size = manifest.image_size[0]
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(args.model / MODEL_FILE), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)

    def tiles(count, side):
        return render_tiles([TileSpec(float(rng.uniform(0.1, 0.9)), "DC", 200, rng.normal(0, 1, 6),
                                      int(rng.integers(1 << 31))) for _ in range(count)], side)

    batch = tiles(args.batch, size)
    big = tiles(4, 224)
    infer_ms = per_call_ms(lambda: session.run(None, {IMAGE: batch}), args.repeats) / args.batch
    infer_224_ms = infer_ms * (224 / size) ** 2
    rows, checks, results = [], [], {"model": str(args.model), "precision": manifest.precision,
                                      "image_size": size, "inference_ms_per_tile": infer_ms,
                                      "inference_224_ms_per_tile_estimated": infer_224_ms, "methods": {}}
    for method in ("density", "macenko", "reinhard"):
        reference = fit_reference(method, batch)
        at_size = per_call_ms(lambda: [reference.normalise(t) for t in batch], args.repeats) / len(batch)
        at_224 = per_call_ms(lambda: [reference.normalise(t) for t in big], args.repeats) / len(big)
        results["methods"][method] = {"ms_per_tile_model_size": at_size, "ms_per_224_tile": at_224}
        rows.append([method, f"{size} px", f"{at_size:.2f}", f"{infer_ms:.2f}", f"{at_size / infer_ms:.1%}"])
        rows.append([method, "224 px", f"{at_224:.2f}", f"{infer_224_ms:.2f} (est.)", f"{at_224 / infer_224_ms:.1%}"])
        checks.append(check(f"{method}: added CPU per {size}-px tile / int8 ensemble inference",
                            at_size / infer_ms, "<", 0.10))
        checks.append(check(f"{method}: added CPU per 224-px tile / int8 inference (224 px, estimated)",
                            at_224 / infer_224_ms, "<", 0.10))
    results["checks"] = checks
    body = (f"Model: `{args.model}` ({manifest.precision}, {len(manifest.members)} members, {size} px), "
            f"onnxruntime on {args.threads} thread(s), batch {args.batch}; medians of {args.repeats} runs.\n\n"
            "Reproduce: `python bench/bench_stain_cost.py`\n\n"
            + md_table(["method", "tile", "normalisation ms/tile", "int8 inference ms/tile", "ratio"], rows)
            + "\n\n" + checks_table(checks))
    write_results("stain_cost", {"machine": machine_info(), **results}, "Stain normalisation: added CPU per tile",
                  body, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
