"""The statistics of the final evaluation: is the distilled student better than the baseline?

Two sources of chance stand between a difference of test accuracies and a verdict. A verdict of
"beats" (either way) needs both tests to agree at `SIGNIFICANCE`:

- **The seeds** (`seed_test`): Welch's t-test over the retraining seeds of each side. It covers
  the training's own randomness. Accuracies are counts over the test split (multiples of 1/n),
  so the means and variances are computed exactly, in fractions. Seeds that land on the same
  count then have exactly no spread, and no p-value is made of float noise. (scipy's t-test on
  identical values returns a p-value of about 1e-28.) With no spread on both sides there is no
  seed test to run, and the verdict rests on the test set alone.
- **The test split** (`paired_comparison`): the test examples are a sample too. For each
  example, take the fraction of distilled seeds that got it right minus the fraction of
  baseline seeds. The observed difference is the mean of these. Its p-value comes from the
  exact sign-flip (randomisation) test over the examples. With one seed a side, this is
  McNemar's exact test. Its 95% interval is the normal one, mean ± t * sd / sqrt(n).

Per width, the p-values of each test are adjusted over the widths compared, with Holm's method
(`holm`). The best-vs-best comparison keeps its own p-values. The module takes and returns
plain numbers. It uses no torch and no Ray.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Sequence

import numpy as np

SIGNIFICANCE = 0.05  # the level of every test: a verdict needs p below it (Holm-adjusted per width)
POWER = 0.8  # for the advice: how many seeds / test examples would find the difference seen
EXACT_SUPPORT = 200_000  # the sign-flip test's exact distribution up to this many points


# --------------------------------------------------------------------------- per-example results
def pack_correct(correct: Sequence[bool] | np.ndarray) -> str:
    """Return per-example correctness (True: right) as final.json keeps it: packed bits, base64."""
    bits = np.packbits(np.asarray(correct, dtype=bool))
    return base64.b64encode(bits.tobytes()).decode("ascii")


def unpack_correct(packed: str, n: int) -> np.ndarray:
    """Return the n booleans that `pack_correct` packed."""
    bits = np.frombuffer(base64.b64decode(packed.encode("ascii"), validate=True), dtype=np.uint8)
    out = np.unpackbits(bits)[:n].astype(bool)
    if len(out) != n:
        raise ValueError(f"{len(out)} per-example results where {n} were expected")
    return out


# --------------------------------------------------------------------------- over seeds
def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Return the mean and the sample standard deviation (ddof = 1).

    The deviation is None with fewer than two values. Both are None with no values."""
    if not values:
        return None, None
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def exact(acc: float, n_test: int | None) -> Fraction:
    """Return an accuracy as an exact fraction: a count over `n_test` examples when n_test is
    known."""
    if n_test:
        count = round(acc * n_test)
        if abs(count / n_test - acc) < 1e-9:
            return Fraction(count, n_test)
    return Fraction(acc)  # the float's own value: equal floats still give zero spread


@dataclass(frozen=True)
class SeedTest:
    """Welch's t-test over seeds. `p` is None when it cannot run: `note` says why."""

    p: float | None
    note: str | None  # None | "too_few_seeds" | "no_spread" | "no_spread_distilled" | ...
    t: float | None = None
    df: float | None = None


def seed_test(distilled: Sequence[Fraction], baseline: Sequence[Fraction]) -> SeedTest:
    """Run Welch's two-sided t-test of distilled against baseline accuracies (one per seed).

    The means, variances, t^2 and the Welch-Satterthwaite degrees of freedom are exact."""
    from scipy import stats

    if len(distilled) < 2 or len(baseline) < 2:
        return SeedTest(None, "too_few_seeds")
    var_d, var_b = _variance(distilled), _variance(baseline)
    if var_d == 0 and var_b == 0:
        return SeedTest(None, "no_spread")
    note = ("no_spread_distilled" if var_d == 0 else "no_spread_baseline" if var_b == 0
            else None)
    a, b = var_d / len(distilled), var_b / len(baseline)
    diff = _mean(distilled) - _mean(baseline)
    t2 = diff * diff / (a + b)
    df = (a + b) ** 2 / (a * a / (len(distilled) - 1) + b * b / (len(baseline) - 1))
    t = math.copysign(math.sqrt(float(t2)), float(diff))
    p = float(2 * stats.t.sf(abs(t), float(df)))
    return SeedTest(min(1.0, p), note, t, float(df))


def _mean(values: Sequence[Fraction]) -> Fraction:
    return sum(values, Fraction(0)) / len(values)


def _variance(values: Sequence[Fraction]) -> Fraction:
    m = _mean(values)
    return sum(((v - m) ** 2 for v in values), Fraction(0)) / (len(values) - 1)


# --------------------------------------------------------------------------- over test examples
@dataclass(frozen=True)
class PairedComparison:
    """The paired comparison over test examples of the seed-averaged correctness."""

    difference: float  # distilled - baseline, the mean of the per-example differences
    ci_low: float
    ci_high: float
    p: float
    n: int  # test examples
    discordant: int  # examples the two sides do not get equally right
    sd: float  # of the per-example differences


def paired_comparison(distilled: Sequence[np.ndarray], baseline: Sequence[np.ndarray]
                  ) -> PairedComparison:
    """Compare the two sides over the test examples.

    `distilled` and `baseline` hold, per seed, which test examples that side got right."""
    from scipy import stats

    k_d, k_b = len(distilled), len(baseline)
    assert k_d and k_b and len({len(c) for c in [*distilled, *baseline]}) == 1
    # per example, in units of 1 / (k_d * k_b): integers, so the test below is exact
    scaled = (np.sum(distilled, axis=0).astype(np.int64) * k_b
              - np.sum(baseline, axis=0).astype(np.int64) * k_d)
    n, unit = len(scaled), k_d * k_b
    x = scaled / unit
    diff = float(scaled.sum()) / (n * unit)
    sd = float(np.std(x, ddof=1)) if n > 1 else 0.0
    half = float(stats.t.ppf(1 - SIGNIFICANCE / 2, n - 1)) * sd / math.sqrt(n) if n > 1 else 0.0
    return PairedComparison(diff, diff - half, diff + half, sign_flip_p(scaled), n,
                       int(np.count_nonzero(scaled)), sd)


def sign_flip_p(values: np.ndarray) -> float:
    """Return the two-sided p-value of the sign-flip test on the integers `values`.

    The p-value is how often sum(s_i * v_i), with each s_i = +-1 at random, is at least as far
    from 0 as sum(v_i). It is exact up to `EXACT_SUPPORT` points. The exact distribution is a
    convolution of each distinct |v|'s binomial. Beyond that size (thousands of differing
    examples), the normal approximation of the same distribution is used."""
    from scipy import signal, stats

    v = np.abs(np.asarray(values, dtype=np.int64))
    v = v[v != 0]
    observed = abs(int(np.sum(values)))
    if len(v) == 0:
        return 1.0
    sizes, counts = np.unique(v, return_counts=True)
    if 2 * int(np.dot(sizes, counts)) + 1 > EXACT_SUPPORT:
        # continuity-corrected: S moves in steps of twice the values' common divisor
        z = (observed - int(np.gcd.reduce(v))) / math.sqrt(float(np.dot(v, v)))
        return min(1.0, float(2 * stats.norm.sf(z)))
    pmf = np.ones(1)
    for size, count in zip(sizes.tolist(), counts.tolist()):
        # size * (2j - count), j ~ Binomial(count, 1/2): points 2 * size apart
        part = np.zeros(2 * size * count + 1)
        part[::2 * size] = stats.binom.pmf(np.arange(count + 1), count, 0.5)
        pmf = signal.fftconvolve(pmf, part) if len(part) > 64 else np.convolve(pmf, part)
    half = (len(pmf) - 1) // 2
    support = np.abs(np.arange(-half, half + 1))
    return min(1.0, float(np.clip(pmf, 0, None)[support >= observed].sum()))


# --------------------------------------------------------------------------- many widths
def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Return Holm's step-down adjustment of a family of p-values.

    A None (not tested) is left out of the family and stays None."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        out[i] = running
    return out


# --------------------------------------------------------------------------- a comparison
@dataclass(frozen=True)
class Tests:
    """Distilled against baseline test accuracies.

    `compare` fills in the means, the seed test and the test-set comparison. `adjust` adds their
    Holm-adjusted p-values within a family."""

    distilled_mean: float | None
    distilled_std: float | None  # sample standard deviation (ddof = 1); None with one seed
    distilled_n: int  # seeds with an accuracy
    baseline_mean: float | None
    baseline_std: float | None
    baseline_n: int
    difference: float | None  # distilled mean - baseline mean
    p_value: float | None  # `seed_test`; None: see seed_note
    seed_note: str | None
    test_difference: float | None  # `paired_comparison`; None: see test_note
    test_ci_low: float | None
    test_ci_high: float | None
    test_p_value: float | None
    test_n: int | None  # test examples
    test_discordant: int | None
    test_sd: float | None
    test_note: str | None  # "no_per_example_results" (an older final.json)
    # the fraction of the teacher-baseline gap the distillation closes: difference / (teacher -
    # baseline mean); None when the teacher does not beat the baseline
    gap_recovered: float | None
    teacher_acc: float | None
    p_value_holm: float | None = None  # set by `adjust`
    test_p_value_holm: float | None = None


def compare(distilled_accs: Sequence[float], baseline_accs: Sequence[float],
            teacher_acc: float | None, *, n_test: int | None = None,
            distilled_correct: Sequence[np.ndarray] | None = None,
            baseline_correct: Sequence[np.ndarray] | None = None) -> Tests:
    """Distilled vs baseline test accuracies (fractions, one per seed) against the teacher's.

    The seed test runs on the accuracies as exact counts of `n_test` examples. The test-set
    comparison runs when both sides' per-example results are given. `decide` gives the verdict,
    once the p-values of a family of comparisons are adjusted.
    """
    d = [float(a) for a in distilled_accs]
    b = [float(a) for a in baseline_accs]
    d_mean, d_std = mean_std(d)
    b_mean, b_std = mean_std(b)
    difference = d_mean - b_mean if d_mean is not None and b_mean is not None else None
    out = Tests(d_mean, d_std, len(d), b_mean, b_std, len(b), difference, None, None,
                None, None, None, None, n_test, None, None, None, None, teacher_acc)
    if difference is None:
        return out
    seeds = seed_test([exact(a, n_test) for a in d], [exact(a, n_test) for a in b])
    out = replace(out, p_value=seeds.p, seed_note=seeds.note)
    if distilled_correct and baseline_correct:
        t = paired_comparison(distilled_correct, baseline_correct)
        out = replace(out, test_difference=t.difference, test_ci_low=t.ci_low,
                      test_ci_high=t.ci_high, test_p_value=t.p, test_n=t.n,
                      test_discordant=t.discordant, test_sd=t.sd)
    else:
        out = replace(out, test_note="no_per_example_results")
    if teacher_acc is not None and b_mean is not None and teacher_acc > b_mean:
        out = replace(out, gap_recovered=difference / (teacher_acc - b_mean))
    return out


def adjust(family: list[Tests]) -> list[Tests]:
    """Return the family's comparisons (the widths of a report) with Holm-adjusted p-values.

    Both the seed and the test-set p-values are adjusted over the family."""
    seeds = holm([t.p_value for t in family])
    test = holm([t.test_p_value for t in family])
    return [replace(t, p_value_holm=a, test_p_value_holm=b)
            for t, a, b in zip(family, seeds, test)]


@dataclass(frozen=True)
class Decision:
    """A comparison's verdict and, where it cannot be reached, what would reach it."""

    verdict: str  # beats | not_significant | does_not_beat | no_comparison
    significant: bool  # both tests agree at SIGNIFICANCE (either direction)
    advice: list[str]
    seeds_needed: int | None  # per side, for POWER at SIGNIFICANCE, from the spread seen
    test_examples_needed: int | None  # the same, from the per-example spread seen


def decide(t: Tests, *, family: int | None = None) -> Decision:
    """Return the verdict of `t` from its tests.

    With `family` (the number of comparisons adjusted together, the widths), the verdict uses
    the Holm-adjusted p-values. Without it, the verdict uses `t`'s own p-values. The verdicts:

    - 'beats': distillation is ahead, and both tests are below SIGNIFICANCE. When each side's
      seeds agree exactly, there is no seed test, and the test-set comparison decides alone.
    - 'does_not_beat': distillation is not ahead.
    - 'not_significant': distillation is ahead, but not significantly.
    - 'no_comparison': a side has no accuracy (every retraining diverged).
    """
    if t.distilled_mean is None or t.baseline_mean is None or t.difference is None:
        return Decision("no_comparison", False, [], None, None)
    p_seed = t.p_value_holm if family is not None else t.p_value
    p_test = t.test_p_value_holm if family is not None else t.test_p_value
    seeds_ok = (p_seed is not None and p_seed < SIGNIFICANCE) or t.seed_note == "no_spread"
    test_ok = p_test is not None and p_test < SIGNIFICANCE
    significant = seeds_ok and test_ok and t.difference != 0
    verdict = ("does_not_beat" if t.difference <= 0 else
               "beats" if significant else "not_significant")
    level = SIGNIFICANCE / (family or 1)  # Holm's strictest step: the level to plan for
    return Decision(verdict, significant, *_advice(t, seeds_ok, test_ok, level))


def seeds_for_power(diff: float, var_d: float, var_b: float, level: float) -> int:
    """Return the seeds a side with which Welch's test finds `diff` at `level` with POWER.

    It assumes equal seeds a side and the spreads seen. It uses the noncentral t with the
    Welch-Satterthwaite df."""
    from scipy import stats

    for n in range(2, 100_001):
        se2 = (var_d + var_b) / n
        df = se2 * se2 / ((var_d / n) ** 2 / (n - 1) + (var_b / n) ** 2 / (n - 1))
        crit = stats.t.ppf(1 - level / 2, df)
        nc = diff / math.sqrt(se2)
        if stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc) >= POWER:
            return n
    return 100_001


def _advice(t: Tests, seeds_ok: bool, test_ok: bool, level: float
            ) -> tuple[list[str], int | None, int | None]:
    """Return advice for a comparison that is not settled, and the seeds and examples needed.

    From the spreads seen, these are the seeds a side, or the test examples, that it would take
    to find the difference seen at `level` with POWER."""
    from scipy import stats

    assert t.difference is not None
    diff = abs(t.difference)
    advice: list[str] = []
    seeds = examples = None
    if seeds_ok and test_ok:
        return advice, seeds, examples
    if diff == 0:
        return ["the two sides tie exactly: there is no difference to resolve"], None, None
    planned = f" at p < {level:.3g}" if level < SIGNIFICANCE else ""
    if t.seed_note == "too_few_seeds":
        advice.append("one seed a side gives no seed test: raise report.seeds (3 or more)")
    elif not seeds_ok:
        now = min(t.distilled_n, t.baseline_n)
        seeds = max(now + 1, seeds_for_power(diff, (t.distilled_std or 0.0) ** 2,
                                             (t.baseline_std or 0.0) ** 2, level))
        advice.append(f"the seed test misses: about {seeds} seeds a side (report.seeds, now "
                      f"{now}) would find a difference this size{planned}")
    if t.test_note == "no_per_example_results":
        advice.append("this final.json has no per-example test results: retrain "
                      "(`kdsearch report`, without --no-retrain) for the test-set comparison")
    elif not test_ok and t.test_sd and t.test_n is not None:
        z = float(stats.norm.ppf(1 - level / 2) + stats.norm.ppf(POWER))
        examples = max(t.test_n + 1, math.ceil((z * t.test_sd / diff) ** 2))
        advice.append(f"the test split is too small for a difference this size: about "
                      f"{examples:,} test examples (now {t.test_n:,}) would resolve "
                      f"it{planned}")
    return advice, seeds, examples


# --------------------------------------------------------------------------- a target
CONFIDENCE = 0.95  # the one-sided level of a student's lower bound against a target


@dataclass(frozen=True)
class Bound:
    """Whether a student reaches the test accuracy a target asks for, with 95% confidence.

    `lower` is the smaller of two one-sided 95% lower bounds of the student's accuracy. One is
    over its seeds: Student's t on the seeds' accuracies. The other is over the test examples:
    the t bound of the mean of the per-example results, averaged over seeds. For a target
    relative to the teacher, this bound takes its spread from the per-example differences from
    the teacher's own results. Both bounds must clear the target, just as both tests must agree
    for a verdict.

    The bound over the examples lies at least `zero_event_margin(n)` below the mean (about
    3/n). With no example seen to differ (from the teacher, or from the all-correct case), the
    t bound alone would claim certainty; the exact binomial bound for zero events does not.
    """

    needed: float | None  # the accuracy the target asks for; None: unknown (no teacher)
    mean: float | None  # of the seeds' test accuracies
    lower: float | None  # None: a bound is missing (one seed, or no per-example results)
    seed_lower: float | None
    example_lower: float | None
    status: str  # meets | likely (the mean clears it, the bound does not) | misses | unknown
    seeds_needed: int | None  # per side, for the seed bound to clear it, from the spread seen
    test_examples_needed: int | None  # the same for the test examples
    seeds: int = 0  # the seeds with an accuracy

    @property
    def half_width(self) -> float | None:
        """How far below the mean the bound lies."""
        return None if self.mean is None or self.lower is None else self.mean - self.lower


def _t(df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(CONFIDENCE, df))


def _mean_sd(x: np.ndarray) -> tuple[float, float]:
    return float(np.mean(x)), float(np.std(x, ddof=1)) if len(x) > 1 else 0.0


def zero_event_margin(n: int) -> float:
    """Return the exact one-sided 95% upper bound of a rate when 0 of n events were seen,
    1 - 0.05^(1/n) (about 3/n): the least share of test examples a bound leaves unknown."""
    return 1.0 - (1.0 - CONFIDENCE) ** (1.0 / n)


def target_bound(accs: Sequence[float], correct: Sequence[np.ndarray] | None, *,
                 needed: float | None, teacher_correct: np.ndarray | None = None) -> Bound:
    """Return the `Bound` of a student against the accuracy `needed`.

    `accs` are the student's test accuracies, one per seed. `correct` holds its per-example
    results, per seed. `teacher_correct` holds the teacher's per-example results, for a target
    relative to the teacher. The bound over the examples is then paired with them."""
    needed = None if needed is None else float(needed)
    if not accs:
        return Bound(needed, None, None, None, None, "unknown", None, None)
    k = len(accs)
    mean, sd_seeds = _mean_sd(np.asarray(accs, dtype=float))
    seed_lower = mean - _t(k - 1) * sd_seeds / math.sqrt(k) if k > 1 else None
    example_lower = sd_examples = None
    n = 0
    if correct:
        per_example = np.mean(np.asarray(correct, dtype=float), axis=0)
        n = len(per_example)
        values = (teacher_correct.astype(float) - per_example if teacher_correct is not None
                  else per_example)
        sd_examples = _mean_sd(values)[1]
        half = _t(n - 1) * sd_examples / math.sqrt(n) if n > 1 else 0.0
        example_lower = float(np.mean(per_example)) - max(half, zero_event_margin(n))
    lower = (None if seed_lower is None or example_lower is None
             else min(seed_lower, example_lower))
    if needed is None or lower is not None and lower > needed or mean <= needed:
        status = "unknown" if needed is None else "misses" if mean <= needed else "meets"
        return Bound(needed, mean, lower, seed_lower, example_lower, status, None, None, k)
    gap = mean - needed
    seeds = None
    if k > 1 and (seed_lower is None or seed_lower <= needed) and sd_seeds > 0:
        seeds = next((m for m in range(k + 1, 100_001)
                      if _t(m - 1) * sd_seeds / math.sqrt(m) < gap), 100_001)
    examples = None
    if example_lower is not None and example_lower <= needed:
        z = float(_normal_ppf(CONFIDENCE))
        from_spread = math.ceil((z * sd_examples / gap) ** 2) if sd_examples else 0
        # and enough examples for the zero-event margin to fit inside the gap
        from_margin = math.ceil(math.log(1.0 - CONFIDENCE) / math.log(1.0 - gap)) if gap < 1 \
            else 1
        examples = max(n + 1, from_spread, from_margin)
    return Bound(needed, mean, lower, seed_lower, example_lower, "likely", seeds, examples, k)


def _normal_ppf(q: float) -> float:
    from scipy import stats

    return float(stats.norm.ppf(q))
