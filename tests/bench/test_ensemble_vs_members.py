"""bench/ensemble_vs_members.py: counting the runs on which each model trails some member."""

from bench.ensemble_vs_members import trailing_table


def _row(run, model, versus, ci_high, p_holm, selected=False):
    return {"run": run, "model": model, "versus": versus, "ci": [ci_high - 0.01, ci_high], "p_holm": p_holm,
            "selected": selected}


def test_a_model_counts_once_per_run_it_trails_and_holm_counts_separately():
    rows = [_row("s1", "ensemble", "a", +0.002, 1.0), _row("s1", "ensemble", "b", -0.001, 0.09),
            _row("s2", "ensemble", "a", -0.004, 0.02), _row("s2", "ensemble", "b", -0.002, 0.04),
            _row("s1", "a", "b", +0.003, 1.0, selected=True), _row("s2", "a", "b", -0.001, 0.03),
            _row("s1", "b", "a", -0.003, 0.5), _row("s2", "b", "a", +0.001, 1.0, selected=True)]
    lines = trailing_table(rows)
    assert lines[2] == "| ensemble | 2 of 2 (s1, s2) | 1 of 2 (s2) |"  # s2 trails two members: one run
    assert lines[3] == "| a | 1 of 2 (s2) | 1 of 2 (s2) |"
    assert lines[4] == "| b | 1 of 2 (s1) | 0 of 2 |"
    # the validation-selected member is a on s1 and b on s2: neither trails on its own run
    assert lines[5] == "| validation-selected member | 0 of 2 | 0 of 2 |"
