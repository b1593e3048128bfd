"""The soak and fault script (bench/soak.py) for a short budget: load, hot swaps, broken versions,
cancellations, then SIGTERM under load.  ``python -m bench.soak`` runs the long budget by hand."""

from __future__ import annotations

from bench import soak


def test_soak_and_sigterm_under_load():
    figures = soak.main(["--seconds", "10", "--clients", "4", "--sigterm-repeats", "2"])
    run = figures["soak"]
    assert run["errors"] == 0, run
    assert run["requests_ok"] > 100 and run["exit_code"] == 0
    assert run["faults"]["versions added"] >= 3 and run["faults"]["versions deleted"] >= 1
    assert sum(v for k, v in run["faults"].items() if k.startswith("broken")) >= 3
    assert run["tally"].get("cancel CANCELLED", 0) > 0 and run["tally"].get("cancel DEADLINE_EXCEEDED", 0) > 0
    assert run["fds_after_first_minute_end"][1] <= run["fds_after_first_minute_end"][0] + 4
    stop = figures["sigterm"]
    assert stop["cancelled"] == 0 and stop["other_codes"] == {}, stop
    assert stop["exit_codes"] == [0, 0]
    assert any(k.startswith("OK") for k in stop["codes"])
