"""Backbones against the custom CNN on a trained run: ROC-AUC (image and patient level), training
time, the int8 accuracy gate at the run's size, and int8 latency at 224 px.

Train the members first (one ``histoedge train`` run; its config defines one recipe per backbone)::

    histoedge train --data DATA --out RUN --config bench/configs/backbones_scratch.yaml --ensemble --quiet
    python bench/bench_quantization.py --backbones resnet50,efficientnetb0,mobilenetv3small,densenet121
    python bench/bench_backbones.py --run RUN

Each member with a ``DONE`` marker (a partly trained run works too) is exported alone, fp32 and
int8 (export defaults, calibrated on 200 training images), and scored on the test split: ROC-AUC
per image and per patient (a patient scored by the mean probability of its images), the int8 drop
judged by the export's gate (``max_auc_drop`` 0.01: an export refuses a larger drop), the training
seconds the run recorded, and the int8 latency at 224 px from ``results/quantization_backbones.json``.
Writes ``results/backbones.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _auc(labels, scores) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if len(set(labels)) == 2 else None


def patient_auc(patients: list[str], labels: np.ndarray, positive_probs: np.ndarray) -> tuple[float | None, int]:
    """ROC-AUC over patients, each scored by the mean P(positive) of its test images."""
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i, patient in enumerate(patients):
        by_patient[patient].append(i)
    scores = [float(np.mean(positive_probs[idx])) for idx in by_patient.values()]
    truth = [int(labels[idx[0]]) for idx in by_patient.values()]
    return _auc(truth, scores), len(truth)


def evaluate_member(run: Path, member: str, max_auc_drop: float, calibration: int) -> dict:
    """One member exported alone, fp32 and int8 (as ``histoedge export`` does): test ROC-AUC per
    image and per patient for both, and the export's int8 gate verdict."""
    import csv

    from histoedge.export import data
    from histoedge.export.convert import KerasMember, convert_member, load_keras_model
    from histoedge.export.graph import EnsembleSpec, build_ensemble_model
    from histoedge.export.quantize import INT8_DEFAULT, quantize_int8
    from histoedge.export.verify import make_session, predict

    config = __import__("yaml").safe_load((run / "config.yaml").read_text())
    classes = tuple(sorted({r["label"] for r in csv.DictReader(open(run / "splits.csv", newline=""))}))
    size = int(config["data"]["image_size"])
    spec = EnsembleSpec(method="single", members=(member,), classes=classes, image_size=size,
                        positive_class=1, threshold=0.5)
    splits = run / "splits.csv"
    with open(splits, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == "test"]
    test_images, test_labels = data.split_images(splits, "test", size, classes)
    if len(test_images) != len(rows):
        raise SystemExit(f"{run}: {len(rows) - len(test_images)} test images could not be read")
    patients = [r["patient"] or r["path"] for r in rows]
    calib = data.split_images(splits, "train", size, classes, limit=calibration)[0]
    fp32 = build_ensemble_model([convert_member(KerasMember(load_keras_model(
        run / "members" / member / "model.keras")), 17)], spec)
    result = {}
    for name, model in (("fp32", fp32), ("int8", quantize_int8(fp32, calib, INT8_DEFAULT))):
        probs, _ = predict(make_session(model), test_images)
        result[f"{name}_roc_auc_image"] = _auc(test_labels.tolist(), probs[:, 1])
        result[f"{name}_roc_auc_patient"], result["test_patients"] = patient_auc(patients, test_labels, probs[:, 1])
    result["test_images"] = len(rows)
    result["int8_drop"] = result["fp32_roc_auc_image"] - result["int8_roc_auc_image"]
    result["gate"] = ("passes" if result["int8_drop"] <= max_auc_drop
                      else f"refused (drop {result['int8_drop']:.4f})")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run directory trained with the backbone config")
    parser.add_argument("--latency", default=str(RESULTS / "quantization_backbones.json"))
    parser.add_argument("--max-auc-drop", type=float, default=0.01)
    parser.add_argument("--calibration", type=int, default=200)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    run = Path(args.run)
    config = __import__("yaml").safe_load((run / "config.yaml").read_text())
    latency = json.loads(Path(args.latency).read_text()) if Path(args.latency).is_file() else None
    rows = []
    for member in config["ensemble"]["members"]:
        done = run / "members" / member / "DONE"
        if not done.is_file():
            print(f"{member}: not trained (no DONE marker), left out", flush=True)
            continue
        recipe = config["recipes"].get(member, {})
        backbone = recipe.get("model", {}).get("backbone", config["model"].get("backbone", "custom"))
        key = f"{'seed_cnn' if backbone == 'custom' else backbone} int8"
        b1 = (latency or {}).get("timing", {}).get(key, {}).get("batch_1", {})
        rows.append({"member": member, "backbone": backbone,
                     "train_seconds": json.loads(done.read_text() or "{}").get("train_seconds"),
                     **evaluate_member(run, member, args.max_auc_drop, args.calibration),
                     "int8_224px_batch1_ms": b1.get("median_ms"), "int8_224px_vs_seed_cnn": b1.get("ms_vs_seed_cnn_int8")})
        print(json.dumps(rows[-1]), flush=True)
    report = {"run": str(run), "image_size": config["data"]["image_size"],
              "epochs": config["training"]["epochs"], "weights": "random initialisation", "rows": rows,
              "latency_source": args.latency if latency else None}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "backbones.json").write_text(json.dumps(report, indent=2) + "\n")
    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    lines = [f"# Backbones vs the custom CNN ({report['image_size']} px, {report['epochs']} epochs, "
             "random initialisation)", "",
             "Pretrained weights could not be tried: the machine has no internet and no weights file.", "",
             "| member | backbone | ROC-AUC image | ROC-AUC patient (n) | train s | int8 ROC-AUC image (gate) "
             "| int8 ms 224 px b1 | x seed CNN int8 |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['member']} | {r['backbone']} | {fmt(r['fp32_roc_auc_image'], '.4f')} | "
                     f"{fmt(r['fp32_roc_auc_patient'], '.4f')} ({r['test_patients']}) | {fmt(r['train_seconds'], '.0f')} | "
                     f"{fmt(r['int8_roc_auc_image'], '.4f')} ({r['gate']}) | {fmt(r['int8_224px_batch1_ms'], '.2f')} | "
                     f"{fmt(r['int8_224px_vs_seed_cnn'], '.2f')} |")
    (out / "backbones.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
