"""bench/common.py: how the evaluation scripts print and write their tables."""

import argparse
import json

import pytest

from bench.common import add_output_options, emit


def test_the_table_is_printed_and_written_only_where_asked(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_output_options(parser)
    args = parser.parse_args(["--out", str(tmp_path / "new" / "t.md"), "--json", str(tmp_path / "f.json")])
    emit(args, "| a |\n", {"auc": 0.9})
    assert capsys.readouterr().out.startswith("| a |")
    assert (tmp_path / "new" / "t.md").read_text() == "| a |\n"  # its folder is created
    assert json.loads((tmp_path / "f.json").read_text()) == {"auc": 0.9}

    quiet = parser.parse_args([])
    emit(quiet, "| b |\n", {"auc": 0.8})
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["f.json", "new", "t.md"]


def test_a_script_without_figures_has_no_json_option(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_output_options(parser, json_help=None)
    with pytest.raises(SystemExit):
        parser.parse_args(["--json", str(tmp_path / "f.json")])
    args = parser.parse_args(["--out", str(tmp_path / "t.md")])
    emit(args, "text\n", {"ignored": True})  # figures without --json are printed nowhere else
    assert capsys.readouterr().out == "text\n\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.md"]
