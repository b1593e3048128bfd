"""Speed of each Keras Applications backbone at 224 px, fp32 and int8, next to the seed CNN.

Called by ``bench/bench_quantization.py --backbones NAMES``. Every model is one single-member
export graph (uint8 image in, probabilities out, as ``histoedge export`` writes it), untrained
(speed does not depend on the weights), quantised with the export's default int8 settings; the
depthwise and squeeze-excitation backbones (EfficientNetB0, MobileNetV3Small) also get
QOperator U8S8, since per-layer int8 support is where those blocks differ. All variants are
timed in interleaved rounds in one process, so the ratios compare like with like on a loaded
machine. Quality is the agreement with fp32 on blurred-noise images; accuracy on real (synthetic)
tissue comes from ``bench/bench_backbones.py`` on a trained run.
"""

from __future__ import annotations

import datetime
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from histoedge.export.manifest import IMAGE, PROBABILITIES

DEPTHWISE_SE = ("efficientnetb0", "mobilenetv3small")
QOPERATOR = dict(quant_format="QOperator", activation_type="QUInt8", weight_type="QInt8", per_channel=True)


def _single_graph(keras_model, name: str, size: int):
    from histoedge.export.convert import KerasMember, convert_member
    from histoedge.export.graph import EnsembleSpec, build_ensemble_model

    spec = EnsembleSpec(method="single", members=(name,), classes=("benign", "malignant"), image_size=size,
                        positive_class=1, threshold=0.5)
    return build_ensemble_model([convert_member(KerasMember(keras_model), 17)], spec)


def _images(count: int, size: int, seed: int) -> np.ndarray:
    import cv2

    noise = np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    return np.stack([cv2.GaussianBlur(im, (9, 9), 3) for im in noise])


def run_backbones(args, seed_cnn, machine) -> int:
    """Build, quantise and time the seed CNN and each backbone; write quantization_backbones.*."""
    import keras

    from histoedge.export.quantize import INT8_DEFAULT, Int8Settings, quantize_int8
    from histoedge.export.verify import make_session
    from histoedge.training.config import CNNConfig
    from histoedge.training.models.backbones import build_model

    size = args.image_size
    calibration, test = _images(args.calibration, size, 0), _images(32, size, 1)
    models: dict[str, dict] = {}
    names = ["seed_cnn", *[n.strip() for n in args.backbones.split(",") if n.strip()]]
    for name in names:
        started = time.perf_counter()
        keras.utils.set_random_seed(0)
        if name == "seed_cnn":
            model = seed_cnn(size, 0)
        else:
            model = build_model(CNNConfig(backbone=name, dense_units=[]), 2, size)
        params = int(model.count_params())
        fp32 = _single_graph(model, name, size)
        keras.backend.clear_session()
        variants = {"fp32": fp32, "int8": quantize_int8(fp32, calibration, INT8_DEFAULT)}
        if name in DEPTHWISE_SE:
            variants["int8 QOperator"] = quantize_int8(fp32, calibration, Int8Settings(**QOPERATOR))
        ops = {label: dict(Counter(n.op_type for n in m.graph.node)) for label, m in variants.items()}
        models[name] = {"params": params, "variants": variants, "ops": ops}
        print(f"{name}: {params / 1e6:.1f}M parameters, converted and quantised in "
              f"{time.perf_counter() - started:.0f} s", flush=True)

    sessions = {(n, v): make_session(m, args.threads) for n, e in models.items() for v, m in e["variants"].items()}
    batches = [int(b) for b in args.batches.split(",")]
    rng = np.random.default_rng(2)
    inputs = {b: rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8) for b in batches}
    quality = {}
    for (name, variant), session in sessions.items():
        probs = session.run([PROBABILITIES], {IMAGE: test})[0]
        reference = sessions[(name, "fp32")].run([PROBABILITIES], {IMAGE: test})[0]
        quality[f"{name} {variant}"] = {"max_abs_diff_vs_fp32": float(np.abs(probs - reference).max()),
                                        "argmax_agreement": float((probs.argmax(1) == reference.argmax(1)).mean())}
        for b in batches:  # warm-up
            session.run(None, {IMAGE: inputs[b]})
    times = {key: {b: [] for b in batches} for key in sessions}
    for round_index in range(args.rounds):
        for b in batches:
            for key, session in sessions.items():
                for _ in range(max(1, 4 // b)):
                    start = time.perf_counter()
                    session.run(None, {IMAGE: inputs[b]})
                    times[key][b].append((time.perf_counter() - start) * 1000)
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)

    seed_int8 = {b: float(np.median(times[("seed_cnn", "int8")][b])) for b in batches}
    timing = {}
    for (name, variant), per_batch in times.items():
        row = {}
        for b in batches:
            ms = float(np.median(per_batch[b]))
            fp32_ms = float(np.median(times[(name, "fp32")][b]))
            row[f"batch_{b}"] = {"median_ms": round(ms, 2), "images_per_s": round(b * 1000 / ms, 1),
                                 "speedup_vs_own_fp32": round(fp32_ms / ms, 2),
                                 "ms_vs_seed_cnn_int8": round(ms / seed_int8[b], 2)}
        timing[f"{name} {variant}"] = row
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "threads": args.threads, "image_size": size, "rounds": args.rounds,
              "calibration_images": int(len(calibration)),
              "int8_settings": {"int8": INT8_DEFAULT.get_config(), "int8 QOperator": QOPERATOR},
              "params": {n: e["params"] for n, e in models.items()},
              "ops": {f"{n} {v}": o for n, e in models.items() for v, o in e["ops"].items()},
              "timing": timing, "quality": quality}
    _write(report, Path(args.out))
    return 0


def _write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "quantization_backbones.json").write_text(json.dumps(report, indent=2) + "\n")
    batches = list(next(iter(report["timing"].values())))
    lines = [f"# Backbones vs the seed CNN, fp32 and int8 ({report['date']})", "",
             f"Single-model export graphs, untrained, {report['image_size']}x{report['image_size']}; onnxruntime "
             f"CPU, intra_op_num_threads={report['threads']}, {report['rounds']} interleaved rounds, median per "
             f"call; {report['calibration_images']} calibration images (blurred noise).", "",
             "Machine: " + "; ".join(f"{k}: {v}" for k, v in report["machine"].items()), "",
             "| model | params | " + " | ".join(f"{b} ms | {b} x own fp32 | {b} / seed CNN int8" for b in batches)
             + " | max abs diff vs fp32 |", "|---|---|" + "---|---|---|" * len(batches) + "---|"]
    for key, row in report["timing"].items():
        name = key.split(" ")[0]
        cells = " | ".join(f"{row[b]['median_ms']:.2f} | {row[b]['speedup_vs_own_fp32']:.2f} | "
                           f"{row[b]['ms_vs_seed_cnn_int8']:.2f}" for b in batches)
        lines.append(f"| {key} | {report['params'][name] / 1e6:.1f}M | {cells} | "
                     f"{report['quality'][key]['max_abs_diff_vs_fp32']:.4f} |")
    lines += ["", "Operators left in float around int8 (count of DequantizeLinear / QuantizeLinear / Transpose):", ""]
    for key, ops in report["ops"].items():
        lines.append(f"- {key}: {ops.get('DequantizeLinear', 0)} / {ops.get('QuantizeLinear', 0)} / "
                     f"{ops.get('Transpose', 0)}")
    (out / "quantization_backbones.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
