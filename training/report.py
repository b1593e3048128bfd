"""``histoedge report RUN``: RUN/report.md and RUN/report.html from the files a run wrote.

Nothing is retrained or re-predicted: the report reads ``metrics.json``, ``predictions.npz``
(validation and test probabilities of every member and the ensemble), ``splits.csv``,
``unreadable.csv``, ``duplicates.csv`` and each member's ``history.csv``, redraws the plots
and writes the same content twice: Markdown (images linked) and self-contained HTML (images
embedded as base64 data URIs, inline CSS, no scripts).

Example:
    >>> write_report("runs/r1")          # or: histoedge report runs/r1
"""

from __future__ import annotations

import base64
import csv
import html
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from histoedge.training.errors import ReportError
from histoedge.training.metrics import TABLE_METRICS

METRIC_TITLES = {"accuracy": "Accuracy", "precision": "Precision", "recall": "Recall (sensitivity)",
                 "specificity": "Specificity", "f1": "F1", "roc_auc": "ROC-AUC", "pr_auc": "PR-AUC",
                 "ece": "ECE"}



def load_predictions(run_dir) -> dict:
    """``{"classes", "members", "val_labels", "test_labels", "val": {name: P}, "test": {name: P}}``."""
    path = Path(run_dir) / "predictions.npz"
    if not path.is_file():
        raise ReportError(f"{path} not found: is {run_dir} a finished run directory?")
    with np.load(path, allow_pickle=False) as data:
        result = {"classes": [str(c) for c in data["classes"]], "members": [str(m) for m in data["members"]],
                  "val_labels": data["val_labels"], "test_labels": data["test_labels"], "val": {}, "test": {}}
        for key in data.files:
            split, _, name = key.partition("__")
            if split in ("val", "test") and name:
                result[split][name] = data[key]
    return result


def save_predictions(run_dir, *, classes, members, val_labels, test_labels, val: dict, test: dict) -> Path:
    """Write ``RUN/predictions.npz`` (keys ``val__<name>``, ``test__<name>``, labels, names)."""
    arrays = {"classes": np.asarray(classes, dtype=str), "members": np.asarray(members, dtype=str),
              "val_labels": np.asarray(val_labels), "test_labels": np.asarray(test_labels)}
    arrays.update({f"val__{name}": np.asarray(p, np.float32) for name, p in val.items()})
    arrays.update({f"test__{name}": np.asarray(p, np.float32) for name, p in test.items()})
    path = Path(run_dir) / "predictions.npz"
    np.savez_compressed(path, **arrays)
    return path


def _read_csv(path) -> list[dict]:
    if not Path(path).is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def dataset_summary(run_dir, classes) -> dict:
    """Images per class and split, patients per split and skipped files, from the run's CSV files."""
    run_dir = Path(run_dir)
    rows = _read_csv(run_dir / "splits.csv")
    counts: dict = defaultdict(Counter)
    patients: dict = defaultdict(set)
    for row in rows:
        label = row.get("label", "")
        if label.isdigit() and int(label) < len(classes):
            label = classes[int(label)]
        counts[row.get("split", "")][label] += 1
        if row.get("patient"):
            patients[row.get("split", "")].add(row["patient"])
    splits = [s for s in ("train", "val", "test") if s in counts]
    return {"classes": list(classes), "n_images": len(rows),
            "per_split": {s: {"n": sum(counts[s].values()), "per_class": {c: counts[s][c] for c in classes},
                              "patients": len(patients[s])} for s in splits},
            "per_class": {c: sum(counts[s][c] for s in splits) for c in classes},
            "unreadable": len(_read_csv(run_dir / "unreadable.csv")),
            "duplicates": len(_read_csv(run_dir / "duplicates.csv"))}


def draw_plots(run_dir, metrics: dict, predictions: dict) -> dict:
    """Redraw every plot of the run; returns ``{"roc", "reliability", "confusion": {...}, "history": {...}}``."""
    from histoedge.training import plots

    run_dir = Path(run_dir)
    names = predictions["members"] + (["ensemble"] if "ensemble" in predictions["test"] else [])
    curves = {n: (predictions["test_labels"], predictions["test"][n]) for n in names if n in predictions["test"]}
    drawn = {"roc": plots.plot_roc(curves, run_dir / "plots" / "roc.png"),
             "reliability": plots.plot_reliability(curves, run_dir / "plots" / "reliability.png"),
             "confusion": {}, "history": {}}
    for name in names:
        model = metrics["models"].get(name)
        if model is None:
            continue
        where = run_dir / "plots" if name == "ensemble" else run_dir / "members" / name / "plots"
        threshold = model.get("threshold")
        title = f"{name} (test, threshold {threshold:.3f})" if threshold is not None else f"{name} (test, arg-max)"
        filename = "confusion_ensemble.png" if name == "ensemble" else "confusion.png"
        drawn["confusion"][name] = plots.plot_confusion(model["test"]["confusion_matrix"], predictions["classes"],
                                                        where / filename, title)
        history = run_dir / "members" / name / "history.csv"
        if name != "ensemble" and history.is_file():
            drawn["history"][name] = plots.plot_history(plots.read_history(history), where / "training_curves.png",
                                                        f"{name}: training curves")
    if "ensemble" in drawn["confusion"]:
        # The overview copies under RUN/plots make the folder complete on its own.
        for name, path in list(drawn["confusion"].items()):
            if name != "ensemble":
                (run_dir / "plots" / f"confusion_{name}.png").write_bytes(Path(path).read_bytes())
    return drawn


def _fmt(value, ci=None) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.3f}"
    if ci:
        text += f" ({ci[0]:.3f}-{ci[1]:.3f})"
    return text


def _metrics_table(models: dict, key: str) -> tuple[list, list]:
    header = ["Model", "Threshold"] + [METRIC_TITLES[m] for m in TABLE_METRICS]
    rows = []
    for name, model in models.items():
        result = model.get(key)
        if not result:
            continue
        threshold = result.get("threshold")
        rows.append([name, "arg-max" if threshold is None else f"{threshold:.3f}"]
                    + [_fmt(result.get(m), result.get("ci", {}).get(m)) for m in TABLE_METRICS])
    return header, rows


def build_blocks(run_dir, metrics: dict, summary: dict, drawn: dict) -> list[tuple]:
    """The report as neutral blocks: ("h", level, text), ("p", text), ("table", header, rows), ("img", path, alt)."""
    run_dir = Path(run_dir)
    classes = summary["classes"]
    blocks: list[tuple] = [("h", 1, f"histoedge run report: {run_dir.name}")]
    binary = len(classes) == 2
    decision = (_threshold_text(metrics, classes) if binary
                else "Multi-class: the predicted class is the arg-max of the probabilities.")
    fit = metrics.get("ensemble_fit", "validation")
    fitted = (f" The meta-learner is fitted on out-of-fold predictions ({fit.split('_')[2]} patient-grouped folds "
              "over train+validation); the validation-fitted one is reported as ensemble_validation_fit."
              if fit.startswith("cross_fitted") else "")
    preset = metrics.get("augmentation_preset")
    blocks.append(("p", f"Method: {metrics.get('method')}; members: {', '.join(metrics.get('members', []))}; "
                        f"classes: {', '.join(classes)}; image size {metrics.get('image_size')} px"
                        + (f"; augmentation preset {preset}" if preset else "") + f". {decision}{fitted}"))
    blocks.append(("h", 2, "Dataset"))
    split_names = list(summary["per_split"])
    header = ["Class"] + split_names + ["total"]
    rows = [[c] + [str(summary["per_split"][s]["per_class"][c]) for s in split_names] + [str(summary["per_class"][c])]
            for c in classes]
    rows.append(["images"] + [str(summary["per_split"][s]["n"]) for s in split_names] + [str(summary["n_images"])])
    if any(summary["per_split"][s]["patients"] for s in split_names):
        rows.append(["patients"] + [str(summary["per_split"][s]["patients"]) for s in split_names]
                    + [str(sum(summary["per_split"][s]["patients"] for s in split_names))])
    blocks.append(("table", header, rows))
    blocks.append(("p", f"Files skipped: {summary['unreadable']} unreadable (unreadable.csv), "
                        f"{summary['duplicates']} duplicates (duplicates.csv). "
                        + ("Splits are grouped by patient: no patient is in two splits."
                           if any(summary["per_split"][s]["patients"] for s in split_names)
                           else "Images carry no patient id, so splits are at image level.")))
    blocks.append(("h", 2, "Test metrics"))
    rounds = next(iter(metrics["models"].values()))["test"].get("bootstrap_rounds", 0)
    where = ("at each model's validation-chosen threshold" if binary
             else "arg-max decisions, metrics macro-averaged over classes (AUCs one-vs-rest)")
    unit = next(iter(metrics["models"].values()))["test"].get("bootstrap_unit", "images")
    blocks.append(("p", f"Test split, {where}; in brackets the 95% percentile bootstrap interval ({rounds} "
                        f"resamples of test {unit}{', all images of a drawn patient together' if unit == 'patients' else ''}"
                        "). ECE: 15 equal-width bins of arg-max confidence (resampling "
                        "inflates ECE, so its interval can sit above the point estimate)."))
    blocks.append(("table", *_metrics_table(metrics["models"], "test")))
    if binary:
        blocks.append(("h", 3, "At threshold 0.5"))
        blocks.append(("table", *_metrics_table(metrics["models"], "test_at_0.5")))
    else:
        final = "ensemble" if "ensemble" in metrics["models"] else next(reversed(metrics["models"]))
        per_class = metrics["models"][final]["test"].get("per_class", {})
        blocks.append(("h", 3, f"{final.capitalize()} per class"))
        blocks.append(("table", ["Class", "Precision", "Recall", "Specificity", "F1", "ROC-AUC", "Support"],
                       [[c, _fmt(v["precision"]), _fmt(v["recall"]), _fmt(v["specificity"]), _fmt(v["f1"]),
                         _fmt(v["roc_auc"]), str(v["support"])] for c, v in per_class.items()]))
    blocks += _patient_blocks(metrics)
    blocks += _operating_point_blocks(metrics)
    blocks += _comparison_blocks(metrics)
    blocks.append(("h", 2, "ROC curves and calibration"))
    blocks.append(("img", drawn["roc"], "ROC curves on the test split"))
    blocks.append(("img", drawn["reliability"], "Reliability diagram on the test split"))
    blocks.append(("h", 2, "Confusion matrices (test)"))
    for name, path in drawn["confusion"].items():
        blocks.append(("img", path, f"Confusion matrix: {name}"))
    blocks.append(("h", 2, "Training curves"))
    for name, path in drawn["history"].items():
        blocks.append(("img", path, f"Training curves: {name}"))
    return blocks


def _threshold_text(metrics: dict, classes) -> str:
    rule = metrics.get("threshold_rule") or {}
    target, threshold = metrics.get("target_sensitivity"), _fmt(metrics.get("threshold"))
    on_oof = str(rule.get("chosen_on", "")).startswith("out_of_fold")
    where = ("on the cross-fitted ensemble's out-of-fold predictions over train+validation" if on_oof
             else "on the validation split")
    kind = "out-of-fold" if on_oof else "validation"
    figures = (f"lower bound {_fmt(rule.get('val_sensitivity_lower_bound'))}, {kind} sensitivity "
               f"{_fmt(rule.get('val_sensitivity'))}")
    level = f"{100 * rule.get('confidence', 0):.0f}%"
    if rule.get("rule") == "patient_lower_bound":
        how = (f"whose patient-bootstrap {level} lower bound of {kind} sensitivity reaches {target} "
               f"({rule.get('val_patients')} positive patients; {figures})")
    elif rule.get("rule") == "split_lower_bound":
        how = (f"at which {level} of cohorts of {rule.get('split_patients')} positive patients (drawn from "
               f"{rule.get('val_patients')}) reach sensitivity {target} (that share's {figures})")
    else:
        how = f"with {kind} sensitivity >= {target}"
    transfer = rule.get("transfer")
    carried = bool(transfer) and transfer.get("rule") == "match_flag_rate"
    chosen = (f"out-of-fold threshold {_fmt(rule.get('out_of_fold_threshold'))}, carried over to the deployed "
              f"ensemble as {threshold} (below)" if carried else f"ensemble threshold {threshold}")
    text = f"Decision threshold on P({classes[1]}) chosen {where} as the highest threshold {how}: {chosen}."
    if rule.get("cohort_below_target") is not None:
        # The spread of a small acceptance cohort around the mean: what a site testing the
        # threshold on its own few positive patients should expect.
        where_read = "the out-of-fold" if carried else "that"
        text += (f" At {where_read} threshold, {100 * rule['cohort_below_target']:.0f}% of cohorts of "
                 f"{rule['cohort_patients']} positive patients drawn from those {rule.get('val_patients')} "
                 f"fall below sensitivity {target}.")
    if transfer:
        fold, deployed = transfer["out_of_fold"], transfer["deployed"]
        text += (f" On the {transfer['images']} validation images, which both scored, the fold models reach "
                 f"sensitivity {_fmt(fold['sensitivity'])} and specificity {_fmt(fold['specificity'])} at the "
                 f"out-of-fold threshold, the deployed members {_fmt(deployed['sensitivity'])} and "
                 f"{_fmt(deployed['specificity'])} (they stopped early on these images, so theirs lean optimistic).")
        text += _matched_text(transfer.get("matched"), carried)
    return text


def _matched_text(matched: dict | None, carried: bool) -> str:
    """The deployed ensemble's threshold that flags as many validation images (ensemble.threshold_transfer)."""
    if not matched:
        return ""
    figures = (f"flags {100 * matched['flagged_share']:.1f}% of them, as the out-of-fold threshold does, at "
               f"{_fmt(matched['threshold'])}, with sensitivity {_fmt(matched['deployed']['sensitivity'])} and "
               f"specificity {_fmt(matched['deployed']['specificity'])}")
    if carried:
        return (f" The deployed ensemble {figures}; that threshold is used "
                "(ensemble.threshold_transfer=match_flag_rate).")
    return f" The deployed ensemble {figures} (ensemble.threshold_transfer=match_flag_rate would use it)."


def _patient_blocks(metrics: dict) -> list[tuple]:
    models = {n: m for n, m in metrics["models"].items() if m.get("patient")}
    if not models:
        return []
    first = next(iter(models.values()))["patient"]
    if all(m["patient"]["n_patients"] == m["test"]["n"] for m in models.values()):
        return [("h", 2, "Patient-level test metrics"),
                ("p", "The test images carry no patient ids (or one image each), so patient-level results equal "
                      "the image-level ones above.")]
    names = ("roc_auc", "recall", "specificity", "accuracy", "recognition_rate")
    header = ["Model", "Patients", "ROC-AUC", "Sensitivity", "Specificity", "Accuracy", "Recognition rate"]
    rows = [[n, str(m["patient"]["n_patients"])] + [_fmt(m["patient"].get(k), m["patient"].get("ci", {}).get(k))
                                                   for k in names] for n, m in models.items()]
    return [("h", 2, "Patient-level test metrics"),
            ("p", f"Each test patient's image probabilities aggregated by their {first['aggregation']}, then scored "
                  "at the model's threshold; recognition rate (Spanhol et al. 2016): mean over patients of the "
                  "fraction of their images classified correctly. In brackets the 95% interval from "
                  f"{first.get('bootstrap_rounds', 0)} resamples of patients."),
            ("table", header, rows)]


def _operating_point_blocks(metrics: dict) -> list[tuple]:
    point = metrics.get("operating_point")
    if not point:
        return []
    verdict = "met" if point["target_met"] else "missed"
    return [("h", 2, "Operating point (ensemble, test split)"),
            ("table", ["", "Target", "Threshold", "Sensitivity", "Specificity"],
             [["images", _fmt(point["target"]), _fmt(point["threshold"]),
               _fmt(point["test_sensitivity"], point.get("test_sensitivity_ci")),
               _fmt(point["test_specificity"], point.get("test_specificity_ci"))],
              ["patients", _fmt(point["target"]), _fmt(point["threshold"]),
               _fmt(point["patient_sensitivity"], point.get("patient_sensitivity_ci")),
               _fmt(point["patient_specificity"], point.get("patient_specificity_ci"))]]),
            ("p", f"Test sensitivity target {point['target']}: {verdict} on images (intervals resample patients).")]


def _comparison_blocks(metrics: dict) -> list[tuple]:
    comparisons = metrics.get("comparisons")
    if not comparisons:
        return []
    selected, best = metrics["selected_member"], metrics["best_test_member"]
    rows = []
    for c in comparisons:
        verdict = "better" if c["a_better"] else "worse" if c["b_better"] else "no significant difference"
        interval = f"{c['ci'][0]:.3f} to {c['ci'][1]:.3f}" if c["ci"] else "n/a"
        rows.append([c["model"], c["versus"], _fmt(c["difference"]), interval, verdict,
                     _fmt(c.get("p")), _fmt(c.get("p_holm"))])
    return [("h", 2, "The ensemble against its members"),
            ("p", f"Fair baseline: {selected['name']}, the member with the highest validation ROC-AUC (what one "
                  f"would have picked without an ensemble; test ROC-AUC {_fmt(selected['test_roc_auc'])}). Best member "
                  f"on test: {best['name']} ({_fmt(best['test_roc_auc'])}). Below: test ROC-AUC difference, with a "
                  "paired 95% interval from resampling test patients (both models scored on the same patients). "
                  "The verdict reads each interval alone; with several members, one of them can look better by "
                  "chance, so the last column adjusts the bootstrap p-value over the members (Holm): below 0.05 "
                  "is a difference that holds for the family."),
            ("table", ["Model", "Versus", "ROC-AUC difference", "95% interval", "Verdict", "p", "p, Holm over members"],
             rows)]


def render_markdown(blocks, run_dir) -> str:
    lines = []
    for block in blocks:
        if block[0] == "h":
            lines += ["#" * block[1] + " " + block[2], ""]
        elif block[0] == "p":
            lines += [block[1], ""]
        elif block[0] == "table":
            header, rows = block[1], block[2]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
        elif block[0] == "img":
            lines += [f"![{block[2]}]({Path(block[1]).relative_to(run_dir).as_posix()})", ""]
    return "\n".join(lines)


CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
       "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
       "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
       "th{background:#f0f0f0}img{max-width:100%;display:block;margin:0.5em 0}")


def render_html(blocks) -> str:
    out = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">",
           f"<title>{html.escape(blocks[0][2])}</title><style>{CSS}</style></head><body>"]
    for block in blocks:
        if block[0] == "h":
            out.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
        elif block[0] == "p":
            out.append(f"<p>{html.escape(block[1])}</p>")
        elif block[0] == "table":
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in block[1]) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in block[2]]
            out.append("</table>")
        elif block[0] == "img":
            data = base64.b64encode(Path(block[1]).read_bytes()).decode("ascii")
            out.append(f"<img alt=\"{html.escape(block[2])}\" src=\"data:image/png;base64,{data}\">")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(run_dir) -> tuple[Path, Path]:
    """Regenerate plots, ``report.md`` and ``report.html`` in ``run_dir``; returns their paths."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise ReportError(f"{metrics_path} not found: is {run_dir} a finished run directory?")
    metrics = json.loads(metrics_path.read_text())
    predictions = load_predictions(run_dir)
    if metrics.get("method") == "single":
        # The "ensemble" of a single-model run is that model: show it once.
        metrics = {**metrics, "models": {k: v for k, v in metrics["models"].items() if k != "ensemble"}}
        predictions["test"].pop("ensemble", None)
    summary = dataset_summary(run_dir, predictions["classes"])
    drawn = draw_plots(run_dir, metrics, predictions)
    blocks = build_blocks(run_dir, metrics, summary, drawn)
    from histoedge.training.saliency import saliency_blocks
    blocks += saliency_blocks(run_dir)  # Grad-CAM maps; none when the members are not at hand
    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    md_path.write_text(render_markdown(blocks, run_dir))
    html_path.write_text(render_html(blocks))
    return md_path, html_path


def cli_report(args) -> int:
    """``histoedge report RUN``."""
    md_path, html_path = write_report(args.run)
    print(f"wrote {md_path} and {html_path}")
    return 0
