"""The statistics of the final evaluation: mean and spread over seeds, the distilled-vs-baseline
comparison and its verdict. Plain numbers in, plain numbers out; no torch, no Ray."""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

SIGNIFICANCE = 0.05  # the p-value below which the headline says distillation beats the baseline


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof = 1; None with fewer than two values)."""
    if not values:
        return None, None
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def compare(distilled_accs: Sequence[float], baseline_accs: Sequence[float],
            teacher_acc: float | None) -> dict[str, Any]:
    """Distilled vs baseline test accuracies (fractions, one per seed) against the teacher's.

    mean and sample std (ddof = 1) of each; difference = distilled mean - baseline mean;
    p_value: Welch's two-sided t-test (unequal variances), None with fewer than two seeds on a
    side or no variance on either; gap_recovered = difference / (teacher - baseline mean), the
    fraction of the teacher-baseline gap the distillation closes, None when the teacher does not
    beat the baseline.
    """
    d = [float(a) for a in distilled_accs]
    b = [float(a) for a in baseline_accs]
    d_mean, d_std = mean_std(d)
    b_mean, b_std = mean_std(b)
    difference = d_mean - b_mean if d_mean is not None and b_mean is not None else None
    p = None
    if d_std is not None and b_std is not None and (d_std > 0 or b_std > 0):
        from scipy import stats

        with warnings.catch_warnings():
            # near-identical seeds make scipy warn of precision loss; p is still usable
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(stats.ttest_ind(d, b, equal_var=False).pvalue)
        p = p if math.isfinite(p) else None
    gap = None
    if difference is not None and teacher_acc is not None and teacher_acc > b_mean:
        gap = difference / (teacher_acc - b_mean)
    return {"distilled_mean": d_mean, "distilled_std": d_std, "distilled_n": len(d),
            "baseline_mean": b_mean, "baseline_std": b_std, "baseline_n": len(b),
            "difference": difference, "p_value": p, "gap_recovered": gap,
            "teacher_acc": teacher_acc}


def verdict(c: dict[str, Any]) -> str:
    """'beats', 'not_significant' (ahead, but p >= 0.05 or unknown), 'does_not_beat', or
    'no_comparison' (every retraining of one side diverged: there is nothing to compare)."""
    if c["distilled_mean"] is None or c["baseline_mean"] is None:
        return "no_comparison"
    if c["difference"] <= 0:
        return "does_not_beat"
    if c["p_value"] is not None and c["p_value"] < SIGNIFICANCE:
        return "beats"
    return "not_significant"
