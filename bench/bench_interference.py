"""How much other work on the same core slows the next model run (issue 19, c=1 overhead).

The serving benchmarks compare a server with raw onnxruntime running the model back to back.
A server does other work between two runs on the same core: the transport, the request path and the
monitoring checks. This measures what that work costs beyond its own CPU. Raw onnxruntime runs
batch 1 alone, each kind of work runs alone, and then the two alternate. The penalty is the
alternating time minus the two alone. Everything is CPU time in one process, pinned to one core,
interleaved over rounds, medians.

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
        def both(work=work):
            model_run()
            work()
        samples: dict[str, list[float]] = {"model": [], "work": [], "both": []}
        for _ in range(rounds):
            samples["model"].append(_cpu_ms(model_run, runs))
            samples["work"].append(_cpu_ms(work, runs * 10))
            samples["both"].append(_cpu_ms(both, runs))
        medians = {key: float(np.median(values)) for key, values in samples.items()}
        rows[label] = {**medians, "penalty_ms": medians["both"] - medians["model"] - medians["work"]}
        print(f"{size} px  {label:34s} model {medians['model']:7.3f}  work {medians['work']:6.3f}  "
              f"penalty {rows[label]['penalty_ms']:+.3f} ms", flush=True)
    return rows


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
            "work. The penalty is the extra CPU time per pair beyond the model alone and the work alone "
            f"(medians of {rounds} interleaved rounds). A positive penalty means the work leaves the next run "
            "slower. The mechanism was not pinned down. Writing 4 MB of memory costs far less than the monitoring "
            "features do, and glibc's allocation settings (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, "
            "MALLOC_TOP_PAD_) left it unchanged.\n"]
    for size, rows in results["sizes"].items():
        body.append(f"**{size} px int8 ensemble**\n")
        body.append(md_table(["work between two runs", "model alone ms", "work alone ms", "penalty ms"],
                             [[label, r["model"], r["work"], r["penalty_ms"]] for label, r in rows.items()]))
        body.append("")
    write_results("interference", results, "Other work on the core slows the next model run",
                  "\n".join(body), quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
