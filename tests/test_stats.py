"""The statistics of the verdict (`kdsearch.stats`) against hand-computed cases and an exact
reference in fractions; and the case that gave "p = 2e-28" for two test examples."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

import kdsearch.stats
from kdsearch.stats import (compare, exact, holm, pack_correct, paired_comparison, seed_test,
                            sign_flip_p, unpack_correct)
from kdsearch.summary import Comparison, headline


# --------------------------------------------------------------------------- the seeds
def _reference_p(d: list[int], b: list[int], n: int) -> float | None:
    """Welch's two-sided p written out in fractions of the counts; None: no spread at all."""
    def mean(xs: list[Fraction]) -> Fraction:
        return sum(xs, Fraction(0)) / len(xs)

    def var(xs: list[Fraction]) -> Fraction:
        m = mean(xs)
        return sum(((x - m) ** 2 for x in xs), Fraction(0)) / (len(xs) - 1)

    fd, fb = [Fraction(k, n) for k in d], [Fraction(k, n) for k in b]
    se_d, se_b = var(fd) / len(fd), var(fb) / len(fb)
    if se_d + se_b == 0:
        return None
    t2 = (mean(fd) - mean(fb)) ** 2 / (se_d + se_b)
    df = (se_d + se_b) ** 2 / (se_d ** 2 / (len(fd) - 1) + se_b ** 2 / (len(fb) - 1))
    return float(2 * scipy_stats.t.sf(math.sqrt(t2), float(df)))


@st.composite
def _counts(draw: st.DrawFn) -> tuple[int, list[int], list[int]]:
    n = draw(st.integers(50, 10_000))
    base = draw(st.integers(0, n))
    side = st.lists(st.integers(max(0, base - 3), min(n, base + 3)), min_size=2, max_size=10)
    return n, draw(side), draw(side)  # near one count: ties and equal seeds are common


@settings(max_examples=300, deadline=None)
@given(_counts())
def test_the_seed_test_is_welchs_in_exact_fractions_or_says_no_spread(
        case: tuple[int, list[int], list[int]]) -> None:
    n, d, b = case
    # the accuracies as final.json holds them: floats, count / n
    result = seed_test([exact(k / n, n) for k in d], [exact(k / n, n) for k in b])
    expected = _reference_p(d, b, n)
    if expected is None:
        assert result.p is None and result.note == "no_spread"
        return
    assert result.p == pytest.approx(expected, rel=1e-9, abs=1e-300)
    spread_d, spread_b = len(set(d)) > 1, len(set(b)) > 1
    assert result.note == (None if spread_d and spread_b else
                           "no_spread_distilled" if spread_b else "no_spread_baseline")
    # scipy's own Welch test agrees where it is not fed equal values
    if spread_d and spread_b:
        scipy_p = scipy_stats.ttest_ind(np.array(d) / n, np.array(b) / n,
                                        equal_var=False).pvalue
        assert result.p == pytest.approx(scipy_p, rel=1e-6, abs=1e-12)


def test_one_seed_a_side_has_no_seed_test() -> None:
    assert seed_test([Fraction(9, 10)], [Fraction(8, 10), Fraction(7, 10)]).note == \
        "too_few_seeds"


# --------------------------------------------------------------------------- the test set
def test_the_test_set_comparison_of_a_hand_computed_case() -> None:
    # 100 test examples, one seed a side: the distilled student alone gets 8 of them right
    base = np.zeros(100, dtype=bool)
    base[:80] = True
    distilled = base.copy()
    distilled[80:88] = True
    t = paired_comparison([distilled], [base])
    assert t.difference == pytest.approx(0.08) and (t.n, t.discordant) == (100, 8)
    assert t.p == pytest.approx(2 * 0.5 ** 8)  # McNemar's exact test: 8 against 0
    sd = math.sqrt((8 * 0.92 ** 2 + 92 * 0.08 ** 2) / 99)
    half = scipy_stats.t.ppf(0.975, 99) * sd / 10
    assert (t.ci_low, t.ci_high) == pytest.approx((0.08 - half, 0.08 + half))
    # two examples one way, one the other: as likely as not under chance
    other = base.copy()
    other[[0, 1]] = False
    other[85] = True
    assert paired_comparison([other], [base]).p == pytest.approx(1.0)
    # two distilled seeds against one baseline seed: per example +1, +1/2, -1/2 (in halves
    # 2, 1, -1); of the 8 sign patterns, 6 sum to at least |2| in size
    b = np.array([False, False, True, True])
    d1, d2 = np.array([True, True, False, True]), np.array([True, False, True, True])
    t = paired_comparison([d1, d2], [b])
    assert t.difference == pytest.approx((1 + 0.5 - 0.5) / 4) and t.p == pytest.approx(0.75)


def test_the_sign_flip_test_for_thousands_of_differing_examples_is_its_normal_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    values = np.array([1] * 2100 + [-1] * 1900)
    exact_p = sign_flip_p(values)  # 4,000 discordant examples: 8,001 points, exact
    assert exact_p == pytest.approx(2 * scipy_stats.binom.sf(2099, 4000, 0.5), rel=1e-6)
    monkeypatch.setattr(kdsearch.stats, "EXACT_SUPPORT", 1000)
    assert sign_flip_p(values) == pytest.approx(exact_p, rel=0.02)


def test_per_example_results_pack_and_unpack() -> None:
    right = np.random.default_rng(0).random(359) < 0.9
    assert np.array_equal(unpack_correct(pack_correct(right), 359), right)
    with pytest.raises(ValueError):
        unpack_correct(pack_correct(right[:100]), 359)


# --------------------------------------------------------------------------- many widths
def test_holms_adjustment_of_a_hand_computed_family() -> None:
    # sorted 0.01, 0.03, 0.04: x3 = 0.03, x2 = 0.06, x1 = 0.04 -> kept at the running 0.06
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([None, None]) == [None, None]


# --------------------------------------------------------------------------- "p = 2e-28"
def _identical_seeds(distilled_right: int, baseline_right: int, n: int = 359) -> Comparison:
    """Three seeds a side, each seed of a side right on the same examples: distilled on
    `distilled_right` of `n`, baseline on `baseline_right` (all but the first few)."""
    d, b = np.ones(n, dtype=bool), np.ones(n, dtype=bool)
    d[:n - distilled_right] = False
    b[:n - baseline_right] = False
    tests = compare([distilled_right / n] * 3, [baseline_right / n] * 3, 351 / n, n_test=n,
                    distilled_correct=[d] * 3, baseline_correct=[b] * 3)
    return Comparison.from_json({"distilled_width": 64, "baseline_width": 64,
                                 "distilled_params": 8970, "baseline_params": 8970,
                                 "baseline_tuned": True, "compression": 171.0,
                                 **dataclasses.asdict(tests)})


def _headline(c: Comparison) -> str:
    return headline(c, [c], student_model="mlp_student", teacher_acc=351 / 359, baseline_note="")


@pytest.mark.parametrize("distilled,baseline", [(351, 353), (353, 351)])
def test_identical_seeds_two_examples_apart_are_no_verdict(distilled: int, baseline: int
                                                           ) -> None:
    """The reported case: 351 and 353 of 359 test examples, the same for all three seeds of
    each side. scipy's Welch test on those floats gave p = 2.0e-28 and the headline read
    "Distillation beats the baseline"."""
    c = _identical_seeds(distilled, baseline)
    t, verdict = c.tests, c.decision
    assert t.seed_note == "no_spread" and t.p_value is None
    assert verdict.verdict in ("not_significant", "does_not_beat") and not verdict.significant
    assert t.test_p_value == pytest.approx(0.5)  # 2 examples against 0: McNemar's 0.5
    assert t.test_ci_low < 0 < t.test_ci_high
    text = _headline(c)
    assert not text.startswith(("Distillation beats", "The baseline beats")), text
    assert "the 3 seeds of each side agree exactly: no seed test" in text
    assert "test set: 95% CI " in text
    assert "p = 0.50 over 359 examples, 2 scored differently" in text
    assert not [p for p in (t.p_value, t.test_p_value) if p is not None and p < 0.05]
    assert any("(now 359) would resolve it" in a for a in verdict.advice)


def test_identical_seeds_far_apart_rest_the_verdict_on_the_test_set() -> None:
    c = _identical_seeds(359 - 10, 359 - 40)  # 30 examples apart, every seed alike
    assert c.tests.seed_note == "no_spread" and c.decision.significant
    assert c.decision.verdict == "beats" and (c.tests.test_p_value or 1) < 1e-6


def test_seeds_for_power_follows_the_textbook_two_sample_size() -> None:
    from kdsearch.stats import seeds_for_power

    # sd = difference on both sides: 2 (z_0.975 + z_0.8)^2 = 15.7 seeds by the normal
    # approximation; the t-test needs a little more
    n = seeds_for_power(0.01, 0.01 ** 2, 0.01 ** 2, 0.05)
    assert 16 <= n <= 19
    assert seeds_for_power(0.01, 0.01 ** 2, 0.01 ** 2, 0.05 / 4) > n  # a Holm family of 4
    assert seeds_for_power(0.02, 0.01 ** 2, 0.01 ** 2, 0.05) < n  # twice the difference
