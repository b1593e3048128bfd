"""report.md / report.html from a run directory, without retraining."""

import argparse
import re

import pytest

from histoedge import HistoedgeError
from histoedge.training.report import cli_report, write_report


def test_report_has_table_and_embedded_images(tmp_path, fake_run):
    run = fake_run(tmp_path / "run", members=("ldam", "focal"))
    md_path, html_path = write_report(run)
    md, page = md_path.read_text(), html_path.read_text()
    for text in (md, page):
        for heading in ("Accuracy", "Precision", "Recall (sensitivity)", "Specificity", "F1", "ROC-AUC",
                        "PR-AUC", "ECE"):
            assert heading in text
        assert "ldam" in text and "focal" in text and "ensemble" in text
        assert "1 unreadable" in text and "patients" in text
    # 5 test patients whose images carry both labels: a patient counts once per label
    assert "Patient-level test metrics" in md and "Recognition rate" in md and "| ensemble | 10 |" in md
    # Intervals are printed as "value (low-high)".
    assert re.search(r"\d\.\d{3} \(\d\.\d{3}-\d\.\d{3}\)", md)
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == md.count("![") >= 2 + 3 + 2  # roc, reliability, 3 confusion, 2 curves
    assert "src=\"http" not in page and "<link" not in page and "<script" not in page
    assert (run / "plots" / "roc.png").is_file()
    assert (run / "members" / "ldam" / "plots" / "training_curves.png").is_file()


def test_multiclass_report_lists_per_class(tmp_path, fake_run):
    run = fake_run(tmp_path / "run", classes=("a", "b", "c"))
    md_path, _ = write_report(run)
    md = md_path.read_text()
    assert "Ensemble per class" in md and "arg-max" in md


def test_cli_report_and_missing_run(tmp_path, capsys, fake_run):
    run = fake_run(tmp_path / "run")
    assert cli_report(argparse.Namespace(run=str(run))) == 0
    assert "report.html" in capsys.readouterr().out
    with pytest.raises(HistoedgeError):
        write_report(tmp_path / "nothing")
