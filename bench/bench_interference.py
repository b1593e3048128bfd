"""What alternating other work with the model on one core costs (issue 19, c=1 overhead).

The serving benchmarks compare a server with raw onnxruntime running the model back to back.
A server does other work between two runs on the same core: the transport, the request path and the
monitoring checks. This measures what that work costs beyond its own CPU. Raw onnxruntime runs
batch 1 alone, each kind of work runs alone, and then the two alternate. The penalty is the
alternating time minus the two alone, and it is split by timing each side of every pair: the model
run after the work, and the work after the model run. Everything is CPU time in one process,
pinned to one core, interleaved over rounds, medians.

Run::

    python -m bench.bench_interference            # 64 and 224 px int8 ensembles
    python -m bench.bench_interference --quick
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import numpy as np

from bench.artifacts import ensure_repo, ensure_run, onnx_path, synthetic_images
from bench.common import machine_info, md_table, pin_self, write_results

ROUNDS = 7


def _cpu_ms(function: Callable[[], Any], calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        function()
    return (time.process_time() - start) * 1000.0 / calls


def measure(size: int, rounds: int, runs: int) -> dict[str, Any]:
    import onnxruntime as ort

    from histoedge.export.manifest import IMAGE
    from histoedge.serving.monitoring.features import image_features

    name = f"ensemble{size}" if size == 64 else f"seed{size}"
    model = onnx_path(ensure_repo(ensure_run(size), name, "int8"), name)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    image = synthetic_images(1, size, seed=3)
    memory = np.empty(4 << 20, np.uint8)
    works: dict[str, Callable[[], Any]] = {
        "nothing (control)": lambda: None,
        "a short Python loop": lambda: sum(range(3000)),
        "monitoring features of the image": lambda: image_features(image),
        "writing 4 MB of memory": lambda: memory.fill(1),
    }

    def model_run():
        session.run(None, {IMAGE: image})

    rows = {}
    for label, work in works.items():
        samples: dict[str, list[float]] = {"model": [], "work": [], "model_after_work": [], "work_after_model": []}
        for _ in range(rounds):
            samples["model"].append(_cpu_ms(model_run, runs))
            samples["work"].append(_cpu_ms(work, runs * 10))
            model_part, work_part = _alternating_ms(model_run, work, runs)
            samples["model_after_work"].append(model_part)
            samples["work_after_model"].append(work_part)
        m = {key: float(np.median(values)) for key, values in samples.items()}
        rows[label] = {**m, "model_penalty_ms": m["model_after_work"] - m["model"],
                       "work_penalty_ms": m["work_after_model"] - m["work"]}
        rows[label]["penalty_ms"] = rows[label]["model_penalty_ms"] + rows[label]["work_penalty_ms"]
        print(f"{size} px  {label:34s} model {m['model']:7.3f} ({rows[label]['model_penalty_ms']:+.3f} after the "
              f"work)  work {m['work']:6.3f} ({rows[label]['work_penalty_ms']:+.3f} after the model)", flush=True)
    return rows


def _alternating_ms(model_run: Callable[[], Any], work: Callable[[], Any], calls: int) -> tuple[float, float]:
    """CPU ms of each side of ``calls`` alternations: (model run after the work, work after the model run)."""
    model_s = work_s = 0.0
    for _ in range(calls):
        start = time.process_time()
        model_run()
        middle = time.process_time()
        work()
        work_s += time.process_time() - middle
        model_s += middle - start
    return model_s * 1000.0 / calls, work_s * 1000.0 / calls


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    machine = machine_info()
    pin_self("0")
    rounds, sizes = (2, {64: 20}) if args.quick else (ROUNDS, {64: 200, 224: 40})
    results = {"machine": machine, "rounds": rounds,
               "sizes": {str(size): measure(size, rounds, runs) for size, runs in sizes.items()}}
    body = ["Raw onnxruntime, batch 1, one thread, core 0. Each row alternates one model run with one piece of "
            "work and times each side of every pair (CPU time, medians of "
            f"{rounds} interleaved rounds): how much slower the model runs right after the work, and how much "
            "slower the work runs right after the model, than each does when repeated alone. The model is "
            "not slowed by the work; the work is slowed by the model, most likely because the model run "
            "evicted the work's data and code from the core's caches. In a server the work costs the "
            "alternating figure, not the one measured alone.\n"]
    for size, rows in results["sizes"].items():
        body.append(f"**{size} px int8 ensemble**\n")
        body.append(md_table(["work between two runs", "model alone ms", "model after the work ms",
                              "work alone ms", "work after the model ms", "extra per pair ms"],
                             [[label, r["model"], r["model_after_work"], r["work"], r["work_after_model"],
                               r["penalty_ms"]] for label, r in rows.items()]))
        body.append("")
    write_results("interference", results, "Work alternating with the model on one core: which side slows down",
                  "\n".join(body), quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
