"""The answer (`kdsearch.answer`): a student meets the target when its 95% lower bound clears it,
checked against bounds written out here by the textbook formula on hand-made per-example data;
the smallest student of each kind; the answer in words."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from kdsearch.answer import Answer, Side, Target, answer_sentence, find_answer, to_show
from kdsearch.stats import target_bound

N = 400  # test examples
T95 = scipy_stats.t.ppf(0.95, N - 1)


def _examples(right: int, n: int = N, *, shift: int = 0) -> np.ndarray:
    """n examples, `right` of them right: all but a run of wrong ones starting at `shift`."""
    out = np.ones(n, dtype=bool)
    out[shift:shift + n - right] = False
    return out


def _reference(teacher: np.ndarray | None, seeds: list[np.ndarray], needed: float
               ) -> tuple[float, float, float]:
    """The two one-sided 95% lower bounds and their minimum, written out: over seeds, mean -
    t(k-1) * s / sqrt(k); over examples, mean - t(n-1) * sd(d) / sqrt(n), with d the teacher's
    result minus the seed-averaged student's per example (or the student's alone)."""
    accs = np.array([s.mean() for s in seeds])
    k = len(accs)
    seed_lower = accs.mean() - scipy_stats.t.ppf(0.95, k - 1) * accs.std(ddof=1) / math.sqrt(k)
    student = np.mean(np.array(seeds, dtype=float), axis=0)
    d = (teacher.astype(float) - student) if teacher is not None else student
    # at least the exact binomial bound for zero events (Clopper-Pearson with 0 of N)
    margin = scipy_stats.beta.ppf(0.95, 1, N)
    example_lower = student.mean() - max(T95 * d.std(ddof=1) / math.sqrt(N), margin)
    return seed_lower, example_lower, min(seed_lower, example_lower)


TEACHER = _examples(390)  # 97.5%
MARGIN = 0.01  # within 1.0 point: 96.5% needed


@pytest.mark.parametrize("case, right, status", [
    # 99% on every seed (the same examples wrong as the teacher's, and a few more): clears it
    ("meets", [396, 397, 396], "meets"),
    # 96.75% on average: above 96.5%, but 400 examples and a seed spread cannot show it
    ("looks like it", [389, 386, 386], "likely"),
    # 95.5%: below the target
    ("misses", [382, 382, 383], "misses"),
])
def test_the_rule_against_bounds_written_out_by_hand(case: str, right: list[int],
                                                     status: str) -> None:
    seeds = [_examples(r, shift=i) for i, r in enumerate(right)]
    needed = TEACHER.mean() - MARGIN
    bound = target_bound([s.mean() for s in seeds], seeds, needed=needed,
                         teacher_correct=TEACHER)
    seed_lower, example_lower, lower = _reference(TEACHER, seeds, needed)
    assert bound.seed_lower == pytest.approx(seed_lower, abs=1e-12)
    assert bound.example_lower == pytest.approx(example_lower, abs=1e-12)
    assert bound.lower == pytest.approx(lower, abs=1e-12)
    assert bound.status == status, (case, bound)
    assert (lower > needed) == (status == "meets")
    if status == "likely":  # the mean clears it, the bound does not: what would show it
        assert np.mean([s.mean() for s in seeds]) > needed >= lower
        assert bound.test_examples_needed is not None and bound.test_examples_needed > N


def test_an_absolute_target_bounds_the_students_accuracy_alone() -> None:
    seeds = [_examples(r, shift=i) for i, r in enumerate([392, 393, 392])]
    bound = target_bound([s.mean() for s in seeds], seeds, needed=0.95)
    seed_lower, example_lower, lower = _reference(None, seeds, 0.95)
    assert bound.lower == pytest.approx(lower, abs=1e-12) and bound.status == "meets"
    assert bound.example_lower == pytest.approx(example_lower, abs=1e-12)
    # pairing with the teacher is what makes a relative bound narrow: unpaired it is wider
    paired = target_bound([s.mean() for s in seeds], seeds, needed=0.95,
                          teacher_correct=_examples(393))
    assert paired.example_lower > bound.example_lower


def test_a_student_that_scores_every_example_as_the_teacher_is_not_shown_certain() -> None:
    """No example seen to differ from the teacher: the t bound over examples would sit on the
    mean. The exact binomial bound for 0 of 400 events (about 3/400) keeps it below."""
    same = [TEACHER.copy() for _ in range(3)]
    bound = target_bound([s.mean() for s in same], same, needed=0.97, teacher_correct=TEACHER)
    margin = scipy_stats.beta.ppf(0.95, 1, N)  # 1 - 0.05 ** (1 / N)
    assert bound.example_lower == pytest.approx(0.975 - margin, abs=1e-12)
    assert bound.example_lower < bound.mean and bound.status == "likely"
    # what would show it: enough examples for the margin to fit in the 0.5-point gap
    m = bound.test_examples_needed
    assert scipy_stats.beta.ppf(0.95, 1, m) < 0.005 <= scipy_stats.beta.ppf(0.95, 1, m - 1)
    assert target_bound([0.975] * 3, same, needed=0.96,
                        teacher_correct=TEACHER).status == "meets"  # 1.5 points: it fits


def test_one_seed_or_no_per_example_results_is_never_shown() -> None:
    one = target_bound([0.99], [_examples(396)], needed=0.9)
    assert one.status == "likely" and one.lower is None and one.seed_lower is None
    no_examples = target_bound([0.99, 0.99, 0.991], None, needed=0.9)
    assert no_examples.status == "likely" and no_examples.example_lower is None
    assert target_bound([], None, needed=0.9).status == "unknown"
    assert target_bound([0.9, 0.91], None, needed=None).status == "unknown"


# --------------------------------------------------------------------------- the answer
def _side(kind: str, width: int, right: list[int], *, target: Target) -> Side:
    seeds = [_examples(r, shift=i) for i, r in enumerate(right)]
    accs = [s.mean() for s in seeds]
    bound = target_bound(accs, seeds, needed=target.needed(TEACHER.mean()),
                         teacher_correct=TEACHER if target.kind == "within_teacher" else None)
    # as final.json's rows give them: the searched values, then alpha and epochs
    settings = ({"temperature": 4.0, "alpha": 0.5} if kind == "distilled" else {})
    settings.update({"lr": 0.01, "alpha": 0.5 if kind == "distilled" else 1.0, "epochs": 10})
    return Side(kind, width, width * 100, True, "t", 0.9, 10, settings, accs, [], seeds,
                mean=float(np.mean(accs)), std=float(np.std(accs, ddof=1)), bound=bound)


def _answer(sides: list[Side], target: Target) -> tuple[Answer, str]:
    answer = find_answer(sides, target, TEACHER.mean())
    return answer, answer_sentence(answer, "mlp_student")


WITHIN = Target("within_teacher", 1.0)


def test_a_side_without_per_example_results_is_told_to_retrain() -> None:
    """Rows of a final.json written before per-example results were kept have no example
    bound: more seeds cannot show them, retraining can."""
    accs = [0.99, 0.99, 0.991]
    older = Side("distilled", 16, 1600, True, "t", 0.9, 10, {}, accs, [], None,
                 mean=float(np.mean(accs)), bound=target_bound(accs, None, needed=0.9))
    assert older.status == "likely"
    assert to_show(older).startswith("retraining it for per-example results")
    assert "retraining" not in to_show(_side("distilled", 16, [389, 386, 386], target=WITHIN))


def test_the_answer_is_the_smallest_student_of_each_kind_that_meets_the_target() -> None:
    sides = [_side("distilled", 8, [380, 381, 380], target=WITHIN),
             _side("distilled", 16, [389, 386, 386], target=WITHIN),  # likely, not shown
             _side("distilled", 32, [396, 397, 396], target=WITHIN),
             _side("baseline", 32, [385, 385, 386], target=WITHIN),
             _side("baseline", 64, [397, 397, 398], target=WITHIN),
             _side("distilled", 64, [398, 398, 398], target=WITHIN)]
    answer, text = _answer(sides, WITHIN)
    assert (answer.distilled.width, answer.baseline.width) == (32, 64)
    assert answer.factor == pytest.approx(2.0)
    assert [(s.kind, s.width) for s in answer.likely] == [("distilled", 16)]
    assert text.startswith("Smallest student within 1.0 point of the teacher (97.50%): "
                           "distilled width 32 (mlp_student), 3,200 parameters, 99.08 ± 0.14% "
                           "(at least ")
    assert "T 4, alpha 0.5, lr 0.01." in text
    assert ("Alone, the smallest that meets it is width 64 (6,400 parameters): distillation "
            "makes the student 2.0× smaller.") in text
    assert "Distilled width 16 likely meets it too, not shown: " in text


def test_the_answer_says_when_distillation_buys_nothing_or_nothing_meets_the_target() -> None:
    same = [_side("distilled", 32, [396, 397, 396], target=WITHIN),
            _side("baseline", 32, [397, 397, 396], target=WITHIN)]
    assert "Alone, the same width meets it: distillation buys nothing here." in \
        _answer(same, WITHIN)[1]
    smaller_alone = [_side("distilled", 64, [398, 398, 398], target=WITHIN),
                     _side("baseline", 16, [397, 397, 396], target=WITHIN)]
    text = _answer(smaller_alone, WITHIN)[1]  # the smaller student leads: the one to ship
    assert text.startswith("Smallest student within 1.0 point of the teacher (97.50%): width 16 "
                           "alone (mlp_student), 1,600 parameters"), text
    assert "Distilled, the smallest that meets it is width 64 (6,400 parameters, " in text
    assert text.count("distillation buys nothing here") == 1
    none = [_side("distilled", 8, [370, 371, 370], target=WITHIN),
            _side("baseline", 8, [360, 361, 360], target=WITHIN)]
    answer, text = _answer(none, WITHIN)
    assert answer.distilled is None and answer.baseline is None
    assert answer.closest is not None and answer.closest.kind == "distilled"
    assert text.startswith("No student is shown within 1.0 point of the teacher (97.50%) "
                           "(at least 96.50%); the closest is width 8 distilled")
    assert "points short" in text and "What would help: wider students" in text


def test_an_absolute_target_and_a_teacher_known_by_its_logits() -> None:
    target = Target.of({"accuracy": 96.0})
    assert target.needed(None) == 0.96 and target.words(None) == "with at least 96% test accuracy"
    sides = [_side("distilled", 8, [397, 397, 398], target=target)]
    assert _answer(sides, target)[0].distilled is not None
    # a relative target needs the teacher's test accuracy: one line says what to do instead
    answer = find_answer(sides, WITHIN, None)
    assert answer.needed is None
    assert answer_sentence(answer, "mlp_student").startswith(
        "No answer: the teacher's test accuracy is unknown")
