"""Numbers as report.md shows them. The report formats every number it shows with these
functions, from summary.json's unrounded values. No torch, no Ray.
"""

from __future__ import annotations

from typing import Any

from kdsearch.stats import SIGNIFICANCE, Tests


def pct(x: float | None) -> str:
    """An accuracy (a fraction) in percent, 2 decimals."""
    return "n/a" if x is None else f"{100 * x:.2f}"


def pm(mean: float | None, std: float | None) -> str:
    """Mean ± standard deviation of accuracies, in percent."""
    if mean is None:
        return "n/a"
    return f"{pct(mean)}%" if std is None else f"{pct(mean)} ± {pct(std)}%"


def points(diff: float | None) -> str:
    """A difference of accuracies in percentage points, signed."""
    return "n/a" if diff is None else f"{100 * diff:+.2f}"


def fmt_p(p: float | None) -> str:
    """A p-value: 2 decimals, or 2 significant digits below 0.01. It never rounds across the
    significance level: 0.0496 is not "0.05" beside "beats"."""
    if p is None:
        return "n/a"
    if p < 0.01:
        return f"{p:.1e}"
    text, digits = f"{p:.2f}", 3
    # more digits until the text and p are on the same side of the level (0.04996, not 0.05)
    while digits <= 12 and (float(text) == SIGNIFICANCE and p != SIGNIFICANCE
                            or (float(text) < SIGNIFICANCE) != (p < SIGNIFICANCE)):
        text, digits = f"{p:.{digits}g}", digits + 1
    return text


def fmt_gap(g: float | None) -> str:
    """A fraction in whole percent."""
    return "n/a" if g is None else f"{100 * g:.0f}%"


def fmt_ratio(r: float | None) -> str:
    """A ratio: whole above 10 (171×), one decimal below (2.3×)."""
    if r is None:
        return "n/a"
    return f"{r:,.0f}×" if r >= 10 else f"{r:.1f}×"


def fmt_seconds(s: float | None) -> str:
    """A duration in seconds, minutes or hours."""
    if s is None:
        return "n/a"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def fmt_value(v: Any) -> str:
    """A searched value: floats to 4 significant digits."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def fmt_ci(t: Tests) -> str:
    """The test-set comparison's 95% interval of the difference, in points."""
    if t.test_ci_low is None:
        return "n/a"
    return f"{points(t.test_ci_low)} to {points(t.test_ci_high)}"


def seed_phrase(t: Tests, *, holm: bool = False) -> str:
    """The seed test in words: its p-value, or why there is none."""
    n = min(t.distilled_n, t.baseline_n)
    seeds = f"{n} seed{'' if n == 1 else 's'}"
    if t.seed_note == "too_few_seeds":
        return f"{seeds}: no seed test"
    if t.seed_note == "no_spread":
        return f"the {seeds} of each side agree exactly: no seed test"
    p = fmt_p(t.p_value) + (f", Holm {fmt_p(t.p_value_holm)}" if holm else "")
    agree = {"no_spread_distilled": "; the distilled seeds agree exactly",
             "no_spread_baseline": "; the baseline seeds agree exactly"}.get(t.seed_note or "", "")
    return f"seeds: Welch p = {p}, {seeds}{agree}"


def examples_phrase(t: Tests, *, holm: bool = False) -> str:
    """The test-set comparison in words."""
    if t.test_p_value is None:
        return ("no per-example test results for the test-set comparison"
                if t.test_note == "no_per_example_results" else "no test-set comparison")
    p = fmt_p(t.test_p_value) + (f", Holm {fmt_p(t.test_p_value_holm)}" if holm else "")
    return (f"test set: 95% CI {fmt_ci(t)} points, p = {p} over {t.test_n or 0:,} examples, "
            f"{t.test_discordant or 0:,} scored differently")
