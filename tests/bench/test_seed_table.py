"""bench/seed_table.py: the closing line on how the out-of-fold threshold moves to the deployed members."""

from bench.seed_table import _transfer_lines


def _fact(run, fold, deployed):
    return {"run": run, "transfer": {"images": 10, "out_of_fold": dict(zip(("sensitivity", "specificity"), fold)),
                                     "deployed": dict(zip(("sensitivity", "specificity"), deployed))}}


def test_transfer_line_lists_each_run_and_the_mean_change():
    facts = [_fact("s1", (0.98, 0.70), (0.96, 0.80)), _fact("s2", (0.95, 0.60), (0.95, 0.70))]
    (line,) = _transfer_lines(facts)
    assert "s1 0.980/0.700 to 0.960/0.800, s2 0.950/0.600 to 0.950/0.700." in line
    assert line.endswith("Mean change: sensitivity -0.010, specificity +0.100.")
    # a run whose validation images hold no negative still shows, but is left out of the mean
    assert _transfer_lines([_fact("s3", (1.0, None), (1.0, None))])[0].endswith("s3 1.000/n/a to 1.000/n/a.")
    assert _transfer_lines([]) == []


def test_matched_line_shows_both_thresholds_and_which_was_used():
    fact = _fact("s1", (0.98, 0.70), (0.96, 0.80))
    fact["transfer"].update(rule="match_flag_rate", matched={"threshold": 0.301, "flagged_share": 0.7,
                                                             "deployed": {"sensitivity": 0.99, "specificity": 0.72}})
    fact["out_of_fold_threshold"] = 0.369
    lines = _transfer_lines([fact, _fact("s2", (0.95, 0.60), (0.95, 0.70))])  # s2: written before the field
    assert len(lines) == 2
    assert lines[1].endswith("s1 0.369 to 0.301 (0.990/0.720, match_flag_rate used).")
    assert "s2" not in lines[1]
