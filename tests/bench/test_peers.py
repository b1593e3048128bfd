"""bench/bench_peers.py: ratios are taken within a round and the medians over rounds; CPU time
counts a server's child processes; the README table is generated from the results file."""

from __future__ import annotations

import json
import multiprocessing
import os
import time

from bench import bench_peers, summarize
from bench.common import cpu_seconds


def _raw(best: float, b1_p50: float) -> list[dict]:
    return [{"batch_size": 1, "images_per_s": best / 2, "p50_ms": b1_p50, "cpu_ms_per_image": 2.0},
            {"batch_size": 16, "images_per_s": best, "p50_ms": 20.0, "cpu_ms_per_image": 1.5}]


def _runs(throughput: float, p50: float) -> dict:
    return {1: {"throughput": throughput / 8, "p50_ms": p50, "p99_ms": p50 * 2, "errors": 0,
                "server_cpu_ms_per_request": 2.0},
            16: {"throughput": throughput, "p50_ms": p50 * 10, "p99_ms": p50 * 20, "errors": 0,
                 "server_cpu_ms_per_request": 1.8}}


def _round(raw_best: float, raw_b1_p50: float, ours: float, peer: float, peer_raw_best: float | None = None) -> dict:
    """One round: raw onnxruntime next to each server (the peer's raw run may see other load)."""
    return {"load_average": 1.0,
            "raw": {"histoedge": _raw(raw_best, raw_b1_p50), "kserve": _raw(peer_raw_best or raw_best, raw_b1_p50)},
            "systems": {"histoedge": _runs(ours, raw_b1_p50 + 0.5), "kserve": _runs(peer, raw_b1_p50 + 1.5)}}


def _systems():
    return [bench_peers.System("histoedge", "histoedge", None, ""), bench_peers.System("kserve", "KServe", None, "")]


def test_fractions_are_paired_with_the_raw_run_next_to_them_then_the_median():
    # The machine slows down by half in round 2, and while the peer ran in round 3: each server
    # and the raw run next to it alike.
    rounds = [_round(600, 2.0, 540, 300), _round(300, 4.0, 270, 150), _round(600, 2.0, 540, 150, 300)]
    summary = bench_peers.summarise(_systems(), rounds)
    assert summary["histoedge"]["fraction_of_raw_c16"] == 0.9       # 540/600 and 270/300, not 270/600
    assert summary["kserve"]["fraction_of_raw_c16"] == 0.5          # 150/300 in round 3, not 150/600
    assert summary["histoedge"]["overhead_c1_p50_ms"] == 0.5
    assert summary["raw"]["best_batch"] == 16 and summary["raw"]["best_images_per_s"] == 450  # 600 x3, 300 x3
    checks = {c["name"]: c["ok"] for c in bench_peers.derive(summary)}
    assert checks["64 px: histoedge / raw onnxruntime best batch at c=16 (CPU time)"] is False   # 1.5 / 1.8
    # Raw batch-1 latency doubled in round 2: the latency difference is flagged, the CPU one is not.
    assert checks["64 px: histoedge p50 at c=1 minus raw batch-1 p50 (unreliable: raw batch-1 p50 varied "
                  "2.0x between runs)"] is True
    assert checks["64 px: histoedge CPU per request at c=1 minus raw batch-1 CPU per image"] is True
    assert checks["64 px: histoedge / fastest peer at c=16 (throughput)"] is True


def test_a_slow_histoedge_is_reported_missed():
    summary = bench_peers.summarise(_systems(), [_round(600, 2.0, 300, 400)])
    checks = {c["name"]: c["ok"] for c in bench_peers.derive(summary)}
    assert checks["64 px: histoedge / fastest peer at c=16 (throughput)"] is False


def _burn_then_wait(seconds: float, burnt, release) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    burnt.set()
    release.wait(30)


def test_tree_cpu_counts_child_processes():
    context = multiprocessing.get_context("fork")
    burnt, release = context.Event(), context.Event()
    child = context.Process(target=_burn_then_wait, args=(0.3, burnt, release))
    own_before = cpu_seconds(os.getpid())
    child.start()
    try:
        assert burnt.wait(30)
        tree, own = bench_peers.tree_cpu_seconds(os.getpid()), cpu_seconds(os.getpid())
        assert tree - own >= 0.25          # the child's 0.3 s, which the process alone does not show
        assert own - own_before < 0.25
    finally:
        release.set()
        child.join(timeout=10)


def test_readme_table_is_generated_from_the_results(tmp_path, monkeypatch):
    rounds = [_round(600, 2.0, 540, 300)]
    data = {"summary": bench_peers.summarise(_systems(), rounds), "rounds": rounds, "image_size": 64,
            "config": {"rounds": 1}, "machine": {"date_utc": "2026-01-01 00:00 UTC", "cpu": "test CPU"}}
    (tmp_path / "peers.json").write_text(json.dumps(data))
    monkeypatch.setattr(summarize, "RESULTS_DIR", tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{summarize.PEERS_START}\nold\n{summarize.PEERS_END}\nrest\n")
    summarize.update_readme(readme)
    text = readme.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith("rest\n")
    assert "| **histoedge** | 0.83 (0.90) |" in text and "| KServe | 0.83 (0.50) |" in text
    summarize.update_readme(readme)
    assert readme.read_text() == text      # idempotent
