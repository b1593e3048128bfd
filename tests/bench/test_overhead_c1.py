"""bench/overhead_c1.py and the reasons given for missed targets: the c=1 overhead is split into
parts from the server's own histograms, each a median of per-round differences, and every
missed target with a reason shows it in the results and the README."""

from __future__ import annotations

import json

import pytest

from bench import overhead_c1, summarize
from bench.common import check, missed_reasons


def _scrape(request_s: float, inference_s: float, count: int) -> str:
    return "\n".join([
        "# HELP histoedge_request_seconds total time",
        f'histoedge_request_seconds_sum{{model="a",version="1",protocol="grpc"}} {request_s * 0.75}',
        f'histoedge_request_seconds_sum{{model="b",version="1",protocol="grpc"}} {request_s * 0.25}',
        f'histoedge_request_seconds_count{{model="a",version="1",protocol="grpc"}} {count - 1}',
        f'histoedge_request_seconds_count{{model="b",version="1",protocol="grpc"}} 1',
        f'histoedge_request_seconds_bucket{{model="a",version="1",protocol="grpc",le="0.1"}} {count}',
        f"histoedge_inference_seconds_sum {inference_s}",
        f"histoedge_inference_seconds_count {count}",
    ])


def test_histogram_means_are_taken_between_scrapes_over_every_label_set():
    before, after = _scrape(1.0, 0.5, 10), _scrape(3.0, 2.0, 30)
    assert overhead_c1.histogram_mean_ms(before, after, "histoedge_request_seconds") == pytest.approx(100.0)
    assert overhead_c1.histogram_mean_ms(before, after, "histoedge_inference_seconds") == pytest.approx(75.0)
    assert overhead_c1.histogram_mean_ms(before, before, "histoedge_request_seconds") is None
    assert overhead_c1.histogram_mean_ms(before, after, "histoedge_queue_seconds") is None


def _round(drift: float, model: float = 0.5, path: float = 0.3, transport: float = 0.9) -> dict:
    """One round on a machine running ``drift`` ms slower than usual; the server's parts are fixed."""
    raw = 20.0 + drift
    inference = raw + model
    request = inference + path
    return {"raw_p50_ms": raw, "raw_mean_ms": raw, "raw_cpu_ms": raw,
            "server_p50_ms": request + transport, "server_mean_ms": request + transport,
            "server_cpu_ms": raw + 1.2, "server_inference_mean_ms": inference, "server_request_mean_ms": request,
            "server_queue_mean_ms": 0.05, "no_monitoring_p50_ms": request + transport - 0.2,
            "no_monitoring_cpu_ms": raw + 1.0}


def test_each_part_is_the_median_of_per_round_differences_so_drift_cancels():
    rounds = [_round(0.0), _round(5.0), _round(-2.0, model=3.0)]  # the last round: one noisy model run
    result = overhead_c1.summarise(rounds)
    parts = result["breakdown"]
    assert parts["model_ms"] == pytest.approx(0.5)
    assert parts["request_path_ms"] == pytest.approx(0.3)
    assert parts["transport_ms"] == pytest.approx(0.9)
    assert parts["monitoring_p50_ms"] == pytest.approx(0.2)
    assert parts["monitoring_cpu_ms"] == pytest.approx(0.2)
    assert result["p50_ms"] == pytest.approx(1.7)
    assert result["cpu_ms"] == pytest.approx(1.2)


def test_the_reason_names_the_largest_part_or_says_the_transport_alone_is_too_slow():
    result = {**overhead_c1.summarise([_round(0.0)]), "pairs": [{}],
              "floors": {"empty_call_ms": 0.4, "refused_request_ms": 0.6}}
    why = overhead_c1.why_c1(result)
    assert "0.90 ms is the transport" in why and "needs 0.70 ms less" in why and "the transport (0.90 ms)" in why
    result["floors"]["refused_request_ms"] = 1.4
    assert "out of reach" in overhead_c1.why_c1(result)
    assert "| transport: client latency minus time in the data plane | 0.90 |" in overhead_c1.breakdown_table(result)


def test_a_reason_is_kept_only_for_a_missed_target_and_shared_rows_share_a_bullet():
    met = check("fast enough", 0.5, "<=", 1.0, " ms", why="never shown")
    missed = [check("p50 overhead", 2.0, "<=", 1.0, " ms", why="the transport"),
              check("CPU overhead", 1.5, "<=", 1.0, " ms", why="the transport"),
              check("ratio", 0.5, ">=", 0.9, why="the model")]
    assert "why" not in met
    text = missed_reasons([met, *missed])
    assert "- *p50 overhead*, *CPU overhead*: the transport" in text
    assert "- *ratio*: the model" in text and "never shown" not in text
    assert missed_reasons([met]) == ""


def test_the_readme_block_lists_the_reasons_under_the_targets(tmp_path, monkeypatch):
    checks = [check("p50 overhead", 2.0, "<=", 1.0, " ms", why="the transport is slow"),
              check("ratio", 0.99, ">=", 0.95)]
    (tmp_path / "serving.json").write_text(json.dumps({"checks": checks}))
    monkeypatch.setattr(summarize, "RESULTS_DIR", tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{summarize.README_START}\nold\n{summarize.README_END}\nrest\n")
    summarize.update_readme(readme)
    text = readme.read_text()
    assert "| serving | p50 overhead | 2 ms | <= 1 ms | **MISSED** |" in text
    assert "- *p50 overhead*: the transport is slow" in text
    assert text.index("**MISSED**") < text.index("the transport is slow") < text.index(summarize.README_END)
