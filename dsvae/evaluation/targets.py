"""Targets checked against ``dsvae eval`` results: which are met, and the number reached where not.

A :class:`Target` names one figure of a results dictionary (:func:`dsvae.evaluation.protocol.evaluate`'s
output, or its RESULTS.json) by test and key, and a bound. :data:`ISSUE7` holds the state-of-the-art bar
of issue 7 (the literature's best dynamic-test figures on Sprites and the static / swap tests' ideals):

- dynamic test: action accuracy 100% (read as >= 99.995%, i.e. 100.00% to two decimals), IS >= 8.99,
  H(y|x) <= 0.01, H(y) >= 2.196;
- static test: every attribute >= 99.9%, action accuracy 11.1% +- 1 (chance: no motion in f);
- swap test: attributes (their mean) >= 99.5%, action >= 99.5%.

:func:`check_targets` scores one results dictionary; :func:`targets_table` lays several out side by side
(markdown), each cell the number reached and whether it meets the target; :func:`targets_summary` sums up
several runs of one recipe (seeds): per target, how many runs meet it and the lowest, median and highest
value. A test the model cannot do (``"not applicable"``) or a figure the results lack is reported as such,
never as met.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import median
from typing import Any, Mapping, Sequence

from dsvae.errors import DsvaeError

#: How a bound is applied: the value must be at least / at most ``bound``, or within ``bound`` = (lo, hi).
OPERATORS = (">=", "<=", "in")


@dataclass(frozen=True)
class Target:
    label: str  # what the table shows, e.g. "IS >= 8.99"
    test: str  # "dynamic", "static" or "swap"
    key: str  # a metric of that test, or "attributes.<factor>"
    op: str  # one of OPERATORS
    bound: float | tuple[float, float]
    percent: bool = False  # show the value as a percentage

    def __post_init__(self) -> None:
        if self.op not in OPERATORS:
            raise DsvaeError(f"target {self.label!r}: op must be one of {OPERATORS}, got {self.op!r}")
        if (self.op == "in") != isinstance(self.bound, tuple):
            raise DsvaeError(f"target {self.label!r}: op 'in' takes a (low, high) bound, the others one number")

    def met_by(self, value: float) -> bool:
        if self.op == ">=":
            return value >= self.bound
        if self.op == "<=":
            return value <= self.bound
        low, high = self.bound
        return low <= value <= high

    def format(self, value: float) -> str:
        """The value as a table shows it (percent to two decimals, small values to four significant digits,
        others to three decimals), with more digits where those would put it on the other side of the bound
        (a skin accuracy of 99.8999% is not shown as a missed "99.90%")."""
        for extra in range(6):
            if self.percent:
                text = f"{100 * value:.{2 + extra}f}%"
                shown = float(text[:-1]) / 100
            else:
                text = f"{value:.{4 + extra}g}" if value < 0.01 else f"{value:.{3 + extra}f}"
                shown = float(text)
            if self.met_by(shown) == self.met_by(value):
                break
        return text


ISSUE7: tuple[Target, ...] = (
    Target("dynamic: action acc 100%", "dynamic", "action_accuracy", ">=", 0.99995, percent=True),
    Target("dynamic: IS >= 8.99", "dynamic", "inception_score", ">=", 8.99),
    Target("dynamic: H(y|x) <= 0.01", "dynamic", "h_yx", "<=", 0.01),
    Target("dynamic: H(y) >= 2.196", "dynamic", "h_y", ">=", 2.196),
    *(Target(f"static: {factor} >= 99.9%", "static", f"attributes.{factor}", ">=", 0.999, percent=True)
      for factor in ("body", "bottom", "top", "hair")),
    Target("static: action acc 11.1% +- 1", "static", "action_accuracy", "in", (0.101, 0.121), percent=True),
    Target("swap: attributes >= 99.5%", "swap", "attribute_accuracy", ">=", 0.995, percent=True),
    Target("swap: action >= 99.5%", "swap", "action_accuracy", ">=", 0.995, percent=True),
)


def _figure(results: Mapping[str, Any], target: Target) -> tuple[float | None, str | None]:
    """(the mean value, None) of ``target``'s figure, or (None, why it is missing)."""
    test = results.get(target.test)
    if not isinstance(test, Mapping):
        return None, "not run"
    if test.get("status", "ok") != "ok":
        return None, str(test.get("status"))
    entry: Any = test
    for part in target.key.split("."):
        entry = entry.get(part) if isinstance(entry, Mapping) else None
    if isinstance(entry, Mapping):
        entry = entry.get("mean")
    if not isinstance(entry, (int, float)) or isinstance(entry, bool) or math.isnan(entry):
        return None, "missing"
    return float(entry), None


def check_targets(results: Mapping[str, Any], targets: Sequence[Target] = ISSUE7) -> list[dict[str, Any]]:
    """One row per target: ``{"target", "value" (mean over repeats, or None), "met" (bool or None),
    "shown" (the value as the table shows it, or why it is missing)}``."""
    rows = []
    for t in targets:
        value, why = _figure(results, t)
        met = None if value is None else t.met_by(value)
        rows.append({"target": t.label, "value": value, "met": met, "shown": why if value is None else t.format(value)})
    return rows


def met_count(rows: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """(targets met, targets checked) of :func:`check_targets` rows."""
    return sum(1 for r in rows if r["met"]), len(rows)


def targets_table(named_results: Sequence[tuple[str, Mapping[str, Any]]], targets: Sequence[Target] = ISSUE7) -> str:
    """Markdown: a row per target, a column per named results dictionary; each cell the number reached,
    marked "met" or "NOT met" (or why there is no number); a last row counts the targets met."""
    if not named_results:
        raise DsvaeError("targets_table needs at least one results dictionary")
    checked = [check_targets(results, targets) for _, results in named_results]
    names = [_escape(name) for name, _ in named_results]
    lines = ["| target | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for i, t in enumerate(targets):
        cells = []
        for rows in checked:
            r = rows[i]
            cells.append(r["shown"] if r["met"] is None else f"{r['shown']} {'met' if r['met'] else '**NOT met**'}")
        lines.append(f"| {_escape(t.label)} | " + " | ".join(cells) + " |")
    lines.append("| targets met | " + " | ".join("{} of {}".format(*met_count(rows)) for rows in checked) + " |")
    return "\n".join(lines)


def targets_summary(named_results: Sequence[tuple[str, Mapping[str, Any]]],
                    targets: Sequence[Target] = ISSUE7) -> str:
    """Markdown: a row per target over several runs of one recipe (e.g. seeds): how many runs meet it, and the
    lowest, median and highest value reached (as :func:`targets_table` shows a value). A run without the
    figure counts as not meeting the target and adds no value; a last row counts the runs meeting all."""
    if not named_results:
        raise DsvaeError("targets_summary needs at least one results dictionary")
    checked = [check_targets(results, targets) for _, results in named_results]
    n = len(checked)
    lines = [f"| target | runs meeting it (of {n}) | lowest | median | highest |", "|---|---:|---:|---:|---:|"]
    for i, t in enumerate(targets):
        values = sorted(rows[i]["value"] for rows in checked if rows[i]["value"] is not None)
        met = sum(1 for rows in checked if rows[i]["met"])
        shown = [t.format(v) for v in _spread(values)] if values else ["-"] * 3
        missing = n - len(values)
        note = f" ({missing} without the figure)" if missing else ""
        lines.append(f"| {_escape(t.label)} | {met}{note} | " + " | ".join(shown) + " |")
    counts = sorted(met_count(rows)[0] for rows in checked)
    lines.append(f"| all {len(targets)} targets | {sum(1 for c in counts if c == len(targets))} | "
                 + " | ".join(f"{c:g} met" for c in _spread(counts)) + " |")
    return "\n".join(lines)


def _spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(lowest, median, highest) of sorted, non-empty ``values``."""
    return values[0], median(values), values[-1]


def _escape(text: str) -> str:
    """``text`` safe in a markdown table cell (its pipes escaped)."""
    return text.replace("|", "\\|")
