"""Student architectures for CPU: int8 throughput against the int8 4-member ensemble at 224 px.

Builds each candidate student (``build_cnn`` with the members' other settings; untrained, since
speed does not depend on the weights) and the seed-size 4-member ensemble graph, quantises all
with the export's int8 default, and times them interleaved at batch 1 and 16 (one thread).
Prints images/s and each student's throughput as a multiple of the ensemble's.

Example::

    python bench/bench_student.py --image-size 224
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

CANDIDATES = {
    "seed arch (Flatten-Dense)": dict(filters=[32, 64, 128, 256, 256], dense_units=[256, 128], global_pool=False),
    "seed filters, global pool": dict(filters=[32, 64, 128, 256, 256], dense_units=[64], global_pool=True),
    "half filters, global pool": dict(filters=[16, 32, 64, 128, 128], dense_units=[64], global_pool=True),
    "32-64-128-128, global pool": dict(filters=[32, 64, 128, 128], dense_units=[128], global_pool=True),
    "16-32-64-256, global pool": dict(filters=[16, 32, 64, 256], dense_units=[128], global_pool=True),
    "16-32-64-128, global pool": dict(filters=[16, 32, 64, 128], dense_units=[64], global_pool=True),
    "16-32-64-64, global pool": dict(filters=[16, 32, 64, 64], dense_units=[64], global_pool=True),
    "8-16-32-64, global pool": dict(filters=[8, 16, 32, 64], dense_units=[32], global_pool=True),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "student.json"))
    args = parser.parse_args(argv)

    from bench_int8_profile import time_side_by_side
    from bench_quantization import build

    from histoedge.export.convert import KerasMember, convert_member
    from histoedge.export.graph import EnsembleSpec, build_ensemble_model
    from histoedge.export.quantize import INT8_DEFAULT, quantize_int8
    from histoedge.training.config import load_config
    from histoedge.training.models.cnn import build_cnn, channel_statistics

    size = args.image_size
    fp32, _, _, calibration, _, _ = build(argparse.Namespace(run=None, members=4, image_size=size, calibration=32))
    models = {"ensemble (4 members)": quantize_int8(fp32, calibration, INT8_DEFAULT).SerializeToString()}
    spec = EnsembleSpec(method="single", members=("student",), classes=("benign", "malignant"), image_size=size,
                        positive_class=1, threshold=0.5)
    params = {}
    for name, fields in CANDIDATES.items():
        config = load_config(None, [f"model.{k}={json.dumps(v)}" for k, v in fields.items()] +
                             [f"model.block_dropout={json.dumps([0.0] * len(fields['filters']))}"])
        keras_model = build_cnn(config.model, 2, size, channel_statistics(calibration))
        params[name] = int(keras_model.count_params())
        graph = build_ensemble_model([convert_member(KerasMember(keras_model), 17)], spec)
        models[name] = quantize_int8(graph, calibration, INT8_DEFAULT).SerializeToString()
        print(f"built {name}: {params[name]:,} parameters", flush=True)
    ms = time_side_by_side(models, size, (1, 16), args.threads, args.rounds)
    base = ms["ensemble (4 members)"]
    rows = {name: {"parameters": params.get(name),
                   **{f"batch_{b}": {"ms": round(t, 2), "images_per_s": round(b * 1000 / t, 1),
                                     "x_ensemble": round(base[b] / t, 2)} for b, t in m.items()}}
            for name, m in ms.items()}
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "image_size": size, "threads": args.threads,
              "precision": "int8 (export default)", "rows": rows,
              "note": "one thread, interleaved rounds, machine shared (loaded): compare ratios, not absolute times"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'model':<30}{'params':>12}{'b1 img/s':>10}{'x ens':>7}{'b16 img/s':>11}{'x ens':>7}")
    for name, row in rows.items():
        print(f"{name:<30}{row['parameters'] or 0:>12,}{row['batch_1']['images_per_s']:>10}"
              f"{row['batch_1']['x_ensemble']:>7}{row['batch_16']['images_per_s']:>11}"
              f"{row['batch_16']['x_ensemble']:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
