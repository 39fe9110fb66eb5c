"""kdsearch.formatting: numbers as report.md shows them, and the two tests said in words."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kdsearch import stats  # (Tests by its module: pytest would collect the class)
from kdsearch.formatting import (examples_phrase, fmt_ci, fmt_gap, fmt_p, fmt_ratio, fmt_seconds,
                                 fmt_value, pct, pm, points, seed_phrase)
from kdsearch.stats import SIGNIFICANCE, compare


def _tests(**values: object) -> stats.Tests:
    """A distilled-against-baseline comparison of 3 seeds a side, with both tests' values."""
    t = stats.Tests(
        distilled_mean=0.91, distilled_std=0.004, distilled_n=3, baseline_mean=0.90,
        baseline_std=0.005, baseline_n=3, difference=0.01, p_value=0.0321, seed_note=None,
        test_difference=0.008, test_ci_low=0.004, test_ci_high=0.012, test_p_value=0.003,
        test_n=10000, test_discordant=1234, test_sd=0.2, test_note=None, gap_recovered=0.5,
        teacher_acc=0.97)
    return dataclasses.replace(t, **values)


def test_accuracies_show_in_percent_with_two_decimals() -> None:
    assert pct(0.91234) == "91.23"
    assert pct(1.0) == "100.00" and pct(0.0) == "0.00"
    assert pct(None) == "n/a"
    assert pm(0.9, 0.0123) == "90.00 ± 1.23%"
    assert pm(0.9, None) == "90.00%"  # one seed: no spread
    assert pm(None, 0.01) == "n/a"


def test_differences_show_in_signed_points() -> None:
    assert points(0.0158) == "+1.58"
    assert points(-0.0055) == "-0.55"
    assert points(0.0) == "+0.00"
    assert points(None) == "n/a"
    assert fmt_ci(_tests()) == "+0.40 to +1.20"
    assert fmt_ci(_tests(test_ci_low=None, test_ci_high=None)) == "n/a"


@pytest.mark.parametrize("p, shown", [
    (0.3, "0.30"), (0.012, "0.01"), (0.004, "4.0e-03"), (1.0, "1.00"), (None, "n/a"),
    # near the significance level: more digits, never the level itself
    (0.0496, "0.0496"), (0.0504, "0.0504"), (0.047, "0.047"), (0.053, "0.053"),
    (SIGNIFICANCE, "0.05"),
])
def test_p_values_show_two_decimals_or_two_significant_digits(p: float | None, shown: str
                                                               ) -> None:
    assert fmt_p(p) == shown


@pytest.mark.parametrize("p", [0.0496, 0.0499, 0.0501, 0.0504, 0.047, 0.053, 0.045, 0.055])
def test_a_p_value_never_rounds_across_the_significance_level(p: float) -> None:
    assert (float(fmt_p(p)) < SIGNIFICANCE) == (p < SIGNIFICANCE)


def test_a_p_value_just_below_the_level_is_not_shown_as_the_level() -> None:
    """0.04996 was shown as "0.05" (at 3 significant digits too) beside "beats"."""
    below = [p for p in np.linspace(0.0499, 0.0501, 2001) if p < SIGNIFICANCE]
    shown = {p: fmt_p(p) for p in below}
    assert [p for p, text in shown.items() if float(text) >= SIGNIFICANCE] == []
    assert fmt_p(0.04996) == "0.04996" and fmt_p(0.05) == "0.05"


def test_ratios_are_whole_from_ten_and_one_decimal_below() -> None:
    assert fmt_ratio(171.4) == "171×"
    assert fmt_ratio(12345.6) == "12,346×"
    assert fmt_ratio(10.0) == "10×"
    assert fmt_ratio(2.34) == "2.3×"
    assert fmt_ratio(None) == "n/a"


def test_durations_show_in_seconds_minutes_or_hours() -> None:
    assert fmt_seconds(5) == "5.0 s"
    assert fmt_seconds(119.9) == "119.9 s"
    assert fmt_seconds(120) == "2.0 min"
    assert fmt_seconds(5400) == "90.0 min"
    assert fmt_seconds(7200) == "2.00 h"
    assert fmt_seconds(None) == "n/a"


def test_gaps_and_searched_values() -> None:
    assert fmt_gap(0.456) == "46%" and fmt_gap(None) == "n/a"
    assert fmt_value(3.14159) == "3.142"
    assert fmt_value(0.000123456) == "0.0001235"
    assert fmt_value(16) == "16" and fmt_value("adam") == "adam" and fmt_value(None) == ""


def test_the_seed_test_in_words() -> None:
    assert seed_phrase(_tests()) == "seeds: Welch p = 0.03, 3 seeds"
    assert seed_phrase(_tests(p_value_holm=0.0642), holm=True) == \
        "seeds: Welch p = 0.03, Holm 0.06, 3 seeds"
    # the fewer seeds of the two sides are counted
    assert seed_phrase(_tests(baseline_n=1, seed_note="too_few_seeds")) == \
        "1 seed: no seed test"
    assert seed_phrase(_tests(p_value=None, seed_note="no_spread")) == \
        "the 3 seeds of each side agree exactly: no seed test"
    assert seed_phrase(_tests(seed_note="no_spread_distilled")).endswith(
        "3 seeds; the distilled seeds agree exactly")
    assert seed_phrase(_tests(seed_note="no_spread_baseline")).endswith(
        "3 seeds; the baseline seeds agree exactly")


def test_the_test_set_comparison_in_words() -> None:
    assert examples_phrase(_tests()) == (
        "test set: 95% CI +0.40 to +1.20 points, p = 3.0e-03 over 10,000 examples, "
        "1,234 scored differently")
    assert examples_phrase(_tests(test_p_value_holm=0.009), holm=True).startswith(
        "test set: 95% CI +0.40 to +1.20 points, p = 3.0e-03, Holm 9.0e-03 over 10,000")
    assert examples_phrase(_tests(test_p_value=None, test_note="no_per_example_results")) == \
        "no per-example test results for the test-set comparison"
    assert examples_phrase(_tests(test_p_value=None)) == "no test-set comparison"


def test_the_phrases_of_a_real_comparison_without_per_example_results() -> None:
    t = compare([0.90, 0.91, 0.905], [0.88, 0.885, 0.87], 0.97, n_test=1000)
    assert t.p_value is not None
    assert seed_phrase(t) == f"seeds: Welch p = {fmt_p(t.p_value)}, 3 seeds"
    assert examples_phrase(t) == "no per-example test results for the test-set comparison"
