import json
import math
from pathlib import Path

import pytest

from dsvae.errors import DsvaeError
from dsvae.evaluation.targets import ISSUE7, Target, check_targets, met_count, targets_summary, targets_table

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def _m(value: float) -> dict:
    return {"mean": value, "std": 0.0, "values": [value]}


def _results(acc=1.0, is_=9.0, h_yx=0.0, h_y=math.log(9), attrs=(1.0, 1.0, 1.0, 1.0), static_action=1 / 9,
             swap_attr=1.0, swap_action=1.0) -> dict:
    factors = ("body", "bottom", "top", "hair")
    return {
        "dynamic": {"status": "ok", "action_accuracy": _m(acc), "inception_score": _m(is_), "h_yx": _m(h_yx),
                    "h_y": _m(h_y)},
        "static": {"status": "ok", "attributes": {f: _m(a) for f, a in zip(factors, attrs)},
                   "attribute_accuracy": _m(sum(attrs) / 4), "action_accuracy": _m(static_action)},
        "swap": {"status": "ok", "attribute_accuracy": _m(swap_attr), "action_accuracy": _m(swap_action)},
    }


def test_a_perfect_model_meets_every_target():
    rows = check_targets(_results())
    assert [r["met"] for r in rows] == [True] * len(ISSUE7)
    assert met_count(rows) == (len(ISSUE7), len(ISSUE7))


def test_a_model_that_ignores_its_codes_meets_only_the_chance_targets():
    # chance everywhere: the judge reads 1/9 of the actions and 1/6 of the attributes, IS 1, H(y|x) = H(y) = log 9
    rows = {r["target"]: r["met"] for r in check_targets(_results(
        acc=1 / 9, is_=1.0, h_yx=math.log(9), attrs=(1 / 6,) * 4, swap_attr=1 / 6, swap_action=1 / 9))}
    assert rows.pop("static: action acc 11.1% +- 1") is True  # motion absent from f is the one ideal it meets
    assert rows.pop("dynamic: H(y) >= 2.196") is True  # the classes are balanced, just not the right ones
    assert not any(rows.values())


@pytest.mark.parametrize("field,value,label", [
    ("is_", 8.98999, "dynamic: IS >= 8.99"),
    ("h_yx", 0.0101, "dynamic: H(y|x) <= 0.01"),
    ("acc", 0.9999, "dynamic: action acc 100%"),
    ("static_action", 0.1211, "static: action acc 11.1% +- 1"),
    ("static_action", 0.1009, "static: action acc 11.1% +- 1"),
    ("swap_attr", 0.99499, "swap: attributes >= 99.5%"),
])
def test_each_bound_is_missed_just_past_it(field, value, label):
    rows = {r["target"]: r for r in check_targets(_results(**{field: value}))}
    assert rows[label]["met"] is False
    assert rows[label]["value"] == pytest.approx(value)
    # what the table shows is on the same side of the bound: never a missed "8.990" against IS >= 8.99
    target = next(t for t in ISSUE7 if t.label == label)
    shown = rows[label]["shown"]
    assert target.met_by(float(shown.rstrip("%")) / (100 if shown.endswith("%") else 1)) is False
    assert sum(r["met"] for r in rows.values()) == len(ISSUE7) - 1


def test_every_attribute_counts_on_its_own():
    rows = {r["target"]: r["met"] for r in check_targets(_results(attrs=(0.9989, 1.0, 1.0, 1.0)))}
    assert rows["static: body >= 99.9%"] is False
    assert rows["static: bottom >= 99.9%"] is True


def test_a_value_that_rounds_onto_the_bound_is_shown_with_the_digits_that_tell():
    # 8 misread skins in 3 x 2,664 decodes: 99.8999%, which two decimals would show as "99.90%"
    rows = {r["target"]: r for r in check_targets(_results(attrs=(1 - 8 / 7992, 0.999, 1.0, 1.0)))}
    assert (rows["static: body >= 99.9%"]["shown"], rows["static: body >= 99.9%"]["met"]) == ("99.8999%", False)
    assert (rows["static: bottom >= 99.9%"]["shown"], rows["static: bottom >= 99.9%"]["met"]) == ("99.90%", True)
    assert {r["shown"] for r in check_targets(_results(is_=8.98999)) if r["target"].startswith("dynamic: IS")} == {
        "8.98999"}


def test_a_test_the_model_cannot_do_is_never_counted_as_met():
    results = _results()
    results["static"] = {"status": "not applicable", "reason": "no sequence prior"}
    del results["swap"]
    rows = {r["target"]: r for r in check_targets(results)}
    assert rows["static: body >= 99.9%"]["met"] is None
    assert rows["static: body >= 99.9%"]["shown"] == "not applicable"
    assert rows["swap: action >= 99.5%"]["shown"] == "not run"
    assert met_count(list(rows.values())) == (4, len(ISSUE7))


def test_table_shows_the_number_reached_where_a_target_is_missed():
    table = targets_table([("good", _results()), ("short", _results(is_=8.976))])
    line = next(ln for ln in table.splitlines() if ln.startswith("| dynamic: IS"))
    assert line == "| dynamic: IS >= 8.99 | 9.000 met | 8.976 **NOT met** |"
    assert "H(y\\|x)" in table  # the pipe inside a label is escaped
    n = len(ISSUE7)
    assert table.splitlines()[-1] == f"| targets met | {n} of {n} | {n - 1} of {n} |"


def test_stored_eval_results_read_as_measured():
    # BENCHMARKS section 7: the 105 + 10 minute run misses IS alone (8.973); the batch-16 50 + 10 seed-0 run,
    # 99.96% static on average, also misses the skin (body 99.887%: 99.9% to one decimal, not >= 99.9%)
    best = {r["target"]: r for r in check_targets(json.loads((RESULTS / "cdsvae_best105_polish10_field.json").read_text()))}
    assert [t for t, r in best.items() if not r["met"]] == ["dynamic: IS >= 8.99"]
    assert best["dynamic: IS >= 8.99"]["shown"] == "8.973"
    hour = check_targets(json.loads((RESULTS / "cdsvae_best50_b16_noflip_sg_polish10_lr1e3_field.json").read_text()))
    assert [(r["target"], r["shown"]) for r in hour if not r["met"]] == [
        ("dynamic: IS >= 8.99", "8.976"), ("static: body >= 99.9%", "99.89%")]


def test_summary_counts_the_runs_meeting_each_target_and_spans_their_values():
    runs = [("a", _results(is_=8.97, attrs=(0.9995, 1.0, 1.0, 1.0))), ("b", _results(is_=8.995)),
            ("c", _results(is_=8.98, attrs=(0.995, 1.0, 1.0, 1.0)))]
    rows = {ln.split(" | ")[0][2:]: ln for ln in targets_summary(runs).splitlines()}
    assert rows["target"].startswith("| target | runs meeting it (of 3) |")
    assert rows["dynamic: IS >= 8.99"] == "| dynamic: IS >= 8.99 | 1 | 8.970 | 8.980 | 8.995 |"
    assert rows["static: body >= 99.9%"] == "| static: body >= 99.9% | 2 | 99.50% | 99.95% | 100.00% |"
    n = len(ISSUE7)
    # b meets everything; a misses IS (n - 1 met), c misses IS and the skin (n - 2): lowest, median, highest
    assert rows[f"all {n} targets"] == f"| all {n} targets | 1 | {n - 2} met | {n - 1} met | {n} met |"


def test_summary_of_one_run_is_that_run_and_a_missing_figure_is_never_met():
    perfect = targets_summary([("only", _results())])
    assert f"| all {len(ISSUE7)} targets | 1 |" in perfect
    broken = _results()
    del broken["swap"]
    summary = targets_summary([("ok", _results()), ("no swap", broken)])
    assert "| swap: action >= 99.5% | 1 (1 without the figure) | 100.00% | 100.00% | 100.00% |" in summary
    assert f"| all {len(ISSUE7)} targets | 1 |" in summary


def test_bad_targets_and_empty_tables_are_refused():
    with pytest.raises(DsvaeError, match="op must be"):
        Target("x", "dynamic", "h_y", ">", 1.0)
    with pytest.raises(DsvaeError, match="low, high"):
        Target("x", "dynamic", "h_y", "in", 1.0)
    with pytest.raises(DsvaeError, match="at least one"):
        targets_table([])
    with pytest.raises(DsvaeError, match="at least one"):
        targets_summary([])
