"""Where the int8 ensemble's time goes, and int8/fp32 speed ratios side by side.

Builds the export graph of the 4-member seed ensemble (untrained seed CNNs at 224 px, as in
``bench_quantization.py``; speed does not depend on the weights), quantises it with
:data:`histoedge.export.quantize.INT8_DEFAULT`, then:

- lists, from onnxruntime's optimised graph, the compute nodes that stay in float and the
  QuantizeLinear/DequantizeLinear nodes left unfused;
- profiles fp32 and int8 per operator type and per node (onnxruntime's profiler);
- times fp32 and int8 interleaved at batch 1 and 16 and prints int8/fp32 ratios.

Example::

    python bench/bench_int8_profile.py --image-size 224 --threads 1
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

QDQ = ("QuantizeLinear", "DequantizeLinear")
FLOAT_COMPUTE = ("Conv", "FusedConv", "MatMul", "FusedMatMul", "Gemm", "FusedGemm", "MaxPool", "Relu", "Add", "Mul")


def optimised_graph(model_bytes: bytes, threads: int):
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.optimized_model_filepath = str(Path(folder) / "opt.onnx")
        ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath).graph


def graph_findings(model_bytes: bytes, threads: int) -> dict:
    """Op counts of the optimised graph, float compute nodes and unfused Q/DQ nodes by name."""
    graph = optimised_graph(model_bytes, threads)
    return {"op_counts": dict(collections.Counter(n.op_type for n in graph.node).most_common()),
            "float_compute": [f"{n.op_type} {n.name}" for n in graph.node if n.op_type in FLOAT_COMPUTE],
            "unfused_qdq": [f"{n.op_type} {n.name}" for n in graph.node if n.op_type in QDQ]}


def node_profile(model_bytes: bytes, image: np.ndarray, threads: int, runs: int) -> dict:
    """Kernel time per op type and the ten slowest nodes (ms per run)."""
    import onnxruntime as ort

    from histoedge.export.manifest import IMAGE

    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "ort")
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, {IMAGE: image})
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op, by_node = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            by_op[op] += event.get("dur", 0)
            by_node[f"{op} {event['name'].removesuffix('_kernel_time')}"] += event.get("dur", 0)
    total = sum(by_op.values()) or 1
    return {"total_ms": total / 1000 / runs,
            "by_op": {op: {"ms": round(us / 1000 / runs, 3), "share": round(us / total, 3)}
                      for op, us in by_op.most_common()},
            "slowest_nodes": {name: round(us / 1000 / runs, 3) for name, us in by_node.most_common(10)}}


def time_side_by_side(models: dict[str, bytes], size: int, batches, threads: int, rounds: int) -> dict:
    """Median ms per batch, the variants interleaved in every round."""
    from histoedge.export.manifest import IMAGE
    from histoedge.export.verify import make_session

    import onnx
    sessions = {name: make_session(onnx.load_from_string(b), threads) for name, b in models.items()}
    rng = np.random.default_rng(1)
    inputs = {b: rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8) for b in batches}
    times = {name: {b: [] for b in batches} for name in sessions}
    for session in sessions.values():
        for b in batches:
            session.run(None, {IMAGE: inputs[b]})
    for _ in range(rounds):
        for b in batches:
            for name, session in sessions.items():
                for _ in range(max(1, 8 // b)):
                    start = time.perf_counter()
                    session.run(None, {IMAGE: inputs[b]})
                    times[name][b].append((time.perf_counter() - start) * 1000)
    return {name: {b: float(np.median(t[b])) for b in batches} for name, t in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile-runs", type=int, default=5)
    parser.add_argument("--variants", default="", help="extra Int8Settings as NAME=json;... to compare")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "int8_profile.json"))
    args = parser.parse_args(argv)

    from bench_quantization import build  # noqa: PLC0415

    from histoedge.export.quantize import INT8_DEFAULT, Int8Settings, quantize_int8

    build_args = argparse.Namespace(run=None, members=args.members, image_size=args.image_size,
                                    calibration=args.calibration)
    fp32, spec, _, calibration, _, _ = build(build_args)
    models = {"fp32": fp32.SerializeToString(),
              "int8": quantize_int8(fp32, calibration, INT8_DEFAULT).SerializeToString()}
    for item in filter(None, args.variants.split(";")):
        name, _, config = item.partition("=")
        models[name] = quantize_int8(fp32, calibration, Int8Settings(**json.loads(config))).SerializeToString()
    image = np.random.default_rng(0).integers(0, 256, (1, args.image_size, args.image_size, 3), dtype=np.uint8)
    report = {"image_size": args.image_size, "members": args.members, "threads": args.threads,
              "graphs": {name: graph_findings(b, args.threads) for name, b in models.items() if name != "fp32"},
              "profiles": {name: node_profile(b, image, args.threads, args.profile_runs) for name, b in models.items()},
              "ms": time_side_by_side(models, args.image_size, (1, 16), args.threads, args.rounds)}
    fp32_ms = report["ms"]["fp32"]
    report["speedup_vs_fp32"] = {name: {b: round(fp32_ms[b] / ms[b], 2) for b in ms}
                                 for name, ms in report["ms"].items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for name, profile in report["profiles"].items():
        print(f"\n{name}: {profile['total_ms']:.1f} ms kernel time per batch-1 run")
        for op, row in list(profile["by_op"].items())[:8]:
            print(f"  {op:<22}{row['ms']:>9.2f} ms {row['share']:>6.1%}")
    for name, graph in report["graphs"].items():
        print(f"\n{name} optimised graph: {graph['op_counts']}")
        print(f"  float compute nodes: {len(graph['float_compute'])} {graph['float_compute'][:6]}")
        print(f"  unfused Q/DQ nodes: {len(graph['unfused_qdq'])} {graph['unfused_qdq'][:6]}")
    print("\nspeed vs fp32 (same run, interleaved):", json.dumps(report["speedup_vs_fp32"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
