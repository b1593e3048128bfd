"""Benchmark int8 settings and fp16 against fp32 on the seed-size ensemble graph.

Builds the export graph of 4 seed CNNs (3.4M parameters each, 224x224) - untrained by
default, since speed does not depend on the weights - or of a real run (``--run``),
quantises it with each candidate int8 setting, and times every variant side by side:
interleaved repetitions at batch 1, 16 and 64 with ``intra_op_num_threads=2``.
With ``--run`` it also compares test ROC-AUC; otherwise it reports agreement with fp32.

``--backbones`` instead times single models side by side: the seed CNN and each Keras
Applications backbone (untrained, 224x224), fp32 and int8 (the export default, plus QOperator
for the depthwise/squeeze-excitation backbones), and writes ``quantization_backbones.{json,md}``.

Example::

    python bench/bench_quantization.py                    # untrained weights, 10-15 min on 2 busy cores
    python bench/bench_quantization.py --run runs/r1      # a trained ensemble
    python bench/bench_quantization.py --backbones resnet50,efficientnetb0,mobilenetv3small,densenet121
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

from histoedge.export.manifest import IMAGE, PROBABILITIES

CANDIDATES = {
    "QDQ U8S8 per-channel": dict(quant_format="QDQ", activation_type="QUInt8", weight_type="QInt8",
                                 per_channel=True),
    "QDQ S8S8 per-channel": dict(quant_format="QDQ", activation_type="QInt8", weight_type="QInt8",
                                 per_channel=True),
    "QOperator U8S8 per-channel": dict(quant_format="QOperator", activation_type="QUInt8",
                                       weight_type="QInt8", per_channel=True),
    "QDQ U8S8 per-channel Percentile": dict(quant_format="QDQ", activation_type="QUInt8",
                                            weight_type="QInt8", per_channel=True,
                                            calibrate_method="Percentile"),
    "QDQ U8S8 per-channel float MatMul": dict(quant_format="QDQ", activation_type="QUInt8",
                                              weight_type="QInt8", per_channel=True,
                                              float_op_types=("MatMul", "Gemm")),
    "QDQ U8S8 per-tensor": dict(quant_format="QDQ", activation_type="QUInt8", weight_type="QInt8",
                                per_channel=False),
}


def seed_cnn(size: int, seed: int):
    """The seed's "custom CNN model 1" with a 2-way softmax head, as a functional model."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inputs = keras.Input((size, size, 3))
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(32, 3, activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    for filters, dropout in ((64, 0), (128, 0.4), (256, 0.2), (256, 0)):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        if dropout:
            x = layers.Dropout(dropout)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation="relu")(x)
    x = layers.Dense(128, activation="relu")(x)
    outputs = layers.Dense(2, activation="softmax", name=PROBABILITIES)(x)
    return keras.Model(inputs, outputs)


def build(args):
    """(fp32 model, spec, member ONNX list, calibration images, test images, test labels)."""
    from histoedge.export import data
    from histoedge.export.convert import KerasMember, convert_member, load_keras_model
    from histoedge.export.graph import EnsembleSpec, build_ensemble_model

    rng = np.random.default_rng(0)
    if args.run:
        run = Path(args.run)
        spec = EnsembleSpec.load(run / "ensemble.json")
        members = [KerasMember(load_keras_model(run / "members" / m / "model.keras")) for m in spec.members]
        splits, size = run / "splits.csv", spec.image_size
        calibration = data.split_images(splits, "train", size, spec.classes, limit=args.calibration)[0]
        test_images, test_labels = data.split_images(splits, "test", size, spec.classes)
    else:
        size = args.image_size
        members = [KerasMember(seed_cnn(size, seed)) for seed in range(args.members)]
        spec = EnsembleSpec(method="soft_vote", members=tuple(f"m{i}" for i in range(args.members)),
                            classes=("benign", "malignant"), image_size=size, positive_class=1,
                            threshold=0.5)
        # Smooth random "tissue-like" images: blurred noise, so activations are not pure noise.
        import cv2
        noise = rng.integers(0, 256, (args.calibration + 64, size, size, 3), dtype=np.uint8)
        images = np.stack([cv2.GaussianBlur(im, (9, 9), 3) for im in noise])
        calibration, test_images, test_labels = images[:args.calibration], images[args.calibration:], None
    converted = [convert_member(m, 17) for m in members]
    return build_ensemble_model(converted, spec), spec, converted, calibration, test_images, test_labels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="trained run directory (default: untrained seed CNNs)")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--calibration", type=int, default=64, help="calibration images")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--only", help="comma-separated candidate names to try")
    parser.add_argument("--backbones", help="comma-separated backbones to time against the seed CNN "
                                            "(single models; writes quantization_backbones.*)")
    args = parser.parse_args(argv)
    if args.backbones:
        from bench_backbone_speed import run_backbones  # noqa: PLC0415 - sibling script

        return run_backbones(args, seed_cnn, machine)

    from histoedge.export.data import classification_metrics
    from histoedge.export.graph import build_ensemble_model
    from histoedge.export.quantize import Int8Settings, convert_fp16, quantize_int8
    from histoedge.export.verify import make_session, predict

    fp32, spec, converted, calibration, test_images, test_labels = build(args)
    variants = {"fp32": fp32}
    settings = {}
    for label, config in CANDIDATES.items():
        if args.only and label not in args.only.split(","):
            continue
        started = time.perf_counter()
        settings[label] = Int8Settings(**config)
        variants[f"int8 {label}"] = quantize_int8(fp32, calibration, settings[label])
        print(f"quantised {label} in {time.perf_counter() - started:.0f} s", flush=True)
    variants["fp16"] = build_ensemble_model([convert_fp16(m) for m in converted], spec)
    sessions = {name: make_session(model, args.threads) for name, model in variants.items()}

    reference, _ = predict(sessions["fp32"], test_images)
    quality = {}
    for name, session in sessions.items():
        probabilities, _ = predict(session, test_images)
        entry = {"max_abs_diff_vs_fp32": float(np.abs(probabilities - reference).max()),
                 "argmax_agreement": float((probabilities.argmax(1) == reference.argmax(1)).mean())}
        if test_labels is not None:
            entry.update(classification_metrics(probabilities, test_labels, spec.threshold,
                                                spec.positive_class))
        quality[name] = entry

    batches = [int(b) for b in args.batches.split(",")]
    rng = np.random.default_rng(1)
    inputs = {b: rng.integers(0, 256, (b, spec.image_size, spec.image_size, 3), dtype=np.uint8)
              for b in batches}
    times = {name: {b: [] for b in batches} for name in sessions}
    for session in sessions.values():  # warm-up
        for b in batches:
            session.run(None, {IMAGE: inputs[b]})
    for round_index in range(args.rounds):
        for b in batches:
            calls = max(1, 16 // b)
            for name, session in sessions.items():
                for _ in range(calls):
                    start = time.perf_counter()
                    session.run(None, {IMAGE: inputs[b]})
                    times[name][b].append((time.perf_counter() - start) * 1000)
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)

    results = {}
    for name in sessions:
        results[name] = {}
        for b in batches:
            ms = float(np.median(times[name][b]))
            fp32_ms = float(np.median(times["fp32"][b]))
            results[name][f"batch_{b}"] = {"median_ms": round(ms, 3),
                                           "images_per_s": round(b * 1000 / ms, 1),
                                           "speedup_vs_fp32": round(fp32_ms / ms, 2)}
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "threads": args.threads, "image_size": spec.image_size,
              "members": spec.n_members, "source": args.run or "untrained seed CNNs, blurred-noise images",
              "calibration_images": int(len(calibration)), "rounds": args.rounds,
              "int8_settings": {k: v.get_config() for k, v in settings.items()},
              "timing": results, "quality": quality}
    write(report, Path(args.out))
    return 0


def machine() -> dict[str, str]:
    info = {"platform": platform.platform(), "python": platform.python_version()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core"):
                info[key.strip()] = value.strip()
        flags = next((l for l in lscpu.splitlines() if l.startswith("Flags")), "")
        info["int8 flags"] = " ".join(f for f in ("avx512_vnni", "amx_int8", "avx_vnni") if f in flags)
    except OSError:
        pass
    import onnxruntime
    info["onnxruntime"] = onnxruntime.__version__
    return info


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "quantization.json").write_text(json.dumps(report, indent=2) + "\n")
    batches = list(next(iter(report["timing"].values())))
    lines = [f"# int8 / fp16 vs fp32 on the export graph ({report['date']})", "",
             f"Ensemble: {report['members']} members, {report['image_size']}x{report['image_size']}, "
             f"source: {report['source']}; onnxruntime CPU, intra_op_num_threads={report['threads']}, "
             f"{report['rounds']} interleaved rounds, median per call; "
             f"{report['calibration_images']} calibration images.", "",
             "Machine: " + "; ".join(f"{k}: {v}" for k, v in report["machine"].items()), "",
             "| variant | " + " | ".join(f"{b} ms | {b} img/s | {b} x fp32" for b in batches) + " |",
             "|---|" + "---|---|---|" * len(batches)]
    for name, row in report["timing"].items():
        cells = " | ".join(f"{row[b]['median_ms']:.2f} | {row[b]['images_per_s']:.0f} | "
                           f"{row[b]['speedup_vs_fp32']:.2f}" for b in batches)
        lines.append(f"| {name} | {cells} |")
    lines += ["", "| variant | max abs diff vs fp32 | arg-max agreement | ROC-AUC |", "|---|---|---|---|"]
    for name, q in report["quality"].items():
        auc = q.get("roc_auc")
        lines.append(f"| {name} | {q['max_abs_diff_vs_fp32']:.4f} | {q['argmax_agreement']:.3f} | "
                     f"{'n/a' if auc is None else f'{auc:.4f}'} |")
    int8 = {name: row for name, row in report["timing"].items() if name.startswith("int8")}
    if int8 and "batch_1" in batches and "batch_16" in batches:
        def score(name):
            return int8[name]["batch_1"]["speedup_vs_fp32"] * int8[name]["batch_16"]["speedup_vs_fp32"]
        best = max(int8, key=score)
        lines += ["", f"Fastest int8 setting (batch 1 x batch 16 speed-ups): **{best}**, "
                      f"{int8[best]['batch_1']['speedup_vs_fp32']:.2f}x fp32 at batch 1 and "
                      f"{int8[best]['batch_16']['speedup_vs_fp32']:.2f}x at batch 16."]
    (out / "quantization.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
