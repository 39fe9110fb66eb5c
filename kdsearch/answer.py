"""The answer a user came for: the smallest student that meets the target, distilled and alone.

Each retrained setting is a `Side`: a kind of student (distilled, or alone) at one width, with
its size (parameters, multiply-accumulates), its measured latency, its test accuracies over the
seeds, and its `stats.Bound` against the target. `find_answer` walks each kind's sides from the
smallest student up and picks the first whose bound clears the target; `answer_sentence` says
it in the words that open report.md. No torch, no Ray.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from kdsearch.final_record import FinalRecord, FinalRow, LatencyRecord, Timing
from kdsearch.formatting import fmt_ratio, pct, pm
from kdsearch.stats import CONFIDENCE, Bound, mean_std, target_bound, unpack_correct
from kdsearch.tables import BASELINE, DISTILLED

SHORT_NAMES = {"temperature": "T"}  # how the answer names a searched value


# --------------------------------------------------------------------------- the target
@dataclass(frozen=True)
class Target:
    """report.target: `value` points below the teacher's test accuracy (within_teacher), or a
    test accuracy of `value` percent (accuracy)."""

    kind: str  # "within_teacher" | "accuracy"
    value: float

    @classmethod
    def of(cls, raw: dict[str, float]) -> Target:
        (kind, value), = raw.items()
        return cls(kind, float(value))

    def needed(self, teacher_acc: float | None) -> float | None:
        """The test accuracy (a fraction) a student must reach; None when the target is relative
        and the teacher's accuracy is unknown."""
        if self.kind == "accuracy":
            return self.value / 100
        return None if teacher_acc is None else teacher_acc - self.value / 100

    def words(self, teacher_acc: float | None) -> str:
        """The target as the answer says it: "within 1.0 point of the teacher (97.77%)"."""
        if self.kind == "accuracy":
            return f"with at least {self.value:g}% test accuracy"
        unit = "point" if self.value == 1 else "points"
        teacher = "" if teacher_acc is None else f" ({pct(teacher_acc)}%)"
        value = f"{self.value:.1f}" if self.value == int(self.value) else f"{self.value:g}"
        return f"within {value} {unit} of the teacher{teacher}"


# --------------------------------------------------------------------------- one student
@dataclass(frozen=True)
class Side:
    """One retrained setting: a kind of student at one width, retrained with every seed and
    tested once (a side without a setting has width None)."""

    kind: str  # DISTILLED or BASELINE
    width: int | None
    params: int | None
    tuned: bool | None  # False: an untuned baseline (the distilled setting, alpha = 1)
    trial: str | None  # the search trial the setting comes from
    search_val_acc: float | None  # that trial's last validation accuracy
    search_epochs: int | None  # the epochs that trial ran
    settings: dict[str, Any] | None  # the searched values, alpha and epochs
    accs: list[float]  # the test accuracy of each seed that has one
    errors: list[str]  # why each other seed has none ("diverged", or a failure)
    correct: list[np.ndarray] | None  # per seed, which test examples it got right
    trials: int | None = None  # the search's trials of this kind and width that ended well
    full_trials: int | None = None  # of those, the ones that ran their whole budget
    mean: float | None = None  # of `accs`
    std: float | None = None  # sample standard deviation of `accs`; None with one
    macs: int | None = None  # multiply-accumulates of one example
    bound: Bound | None = None  # against the target
    latency: Timing | None = None  # as measured where the report was written

    @property
    def stopped_early(self) -> bool:
        """The setting comes from a trial ASHA stopped before its budget."""
        own = (self.settings or {}).get("epochs")
        return bool(self.trial) and own is not None and (self.search_epochs or own) < own

    @property
    def status(self) -> str:
        """meets, likely, misses or unknown (see `stats.Bound`)."""
        return self.bound.status if self.bound is not None else "unknown"

    @classmethod
    def of(cls, kind: str, row: FinalRow | None, final: FinalRecord, target: Target | None,
           latency: LatencyRecord | None) -> Side:
        """The side of final.json's `row` (None: no setting of that kind at that width)."""
        if row is None:
            return cls(kind, None, None, None, None, None, None, None, [], [], None)
        n_test = final.data.test if final.data else None
        correct = None
        if row.test_correct is not None and n_test:
            correct = [unpack_correct(p, n_test) for p in row.test_correct if p is not None]
        accs = row.accuracies()
        side = cls(kind, row.width, row.params, row.tuned, row.trial_id, row.val_acc,
                   row.search_epochs, {**row.settings, "alpha": row.alpha, "epochs": row.epochs},
                   accs, row.seed_errors(), correct, None, None, *mean_std(accs), row.macs,
                   latency=latency.of(kind, row.width) if latency else None)
        if target is None:
            return side
        return dataclasses.replace(side, bound=bound_of(side, final, target))

    @classmethod
    def from_json(cls, kind: str, c: dict[str, Any]) -> Side:
        """One side of summary.json's flat record of a comparison (its bound and latency are
        not read back)."""
        def get(name: str) -> Any:
            return c.get(f"{kind}_{name}")

        return cls(kind, get("width"), get("params"),
                   c.get("baseline_tuned") if kind == BASELINE else get("width") is not None,
                   get("trial"), get("search_val_acc"), get("search_epochs"), get("settings"),
                   list(get("accs") or []), list(get("errors") or []), None, get("trials"),
                   get("full_trials"), get("mean"), get("std"), get("macs"))

    def front_json(self) -> dict[str, Any]:
        """What summary.json keeps of the side's size, cost and standing against the target."""
        b, t = self.bound, self.latency
        return {"macs": self.macs,
                "latency_ms": t.batch1_ms if t else None,
                "batch_latency_ms": t.batch_ms if t else None,
                "lower": b.lower if b else None, "meets": self.status,
                "seeds_to_show": b.seeds_needed if b else None,
                "test_examples_to_show": b.test_examples_needed if b else None}


def bound_of(side: Side, final: FinalRecord, target: Target) -> Bound:
    """The side's bound against the target, paired with the teacher's per-example results
    when the target is relative to the teacher."""
    teacher = final.teacher
    teacher_acc = teacher.test_acc if teacher else None
    paired = None
    if target.kind == "within_teacher" and teacher and teacher.test_correct and final.data:
        paired = unpack_correct(teacher.test_correct, final.data.test)
    return target_bound(side.accs, side.correct, needed=target.needed(teacher_acc),
                        teacher_correct=paired)


# --------------------------------------------------------------------------- the answer
@dataclass(frozen=True)
class Answer:
    """The smallest student of each kind whose bound clears the target."""

    target: Target
    teacher_acc: float | None
    needed: float | None  # the accuracy the target asks for
    distilled: Side | None  # the smallest distilled student that meets it
    baseline: Side | None  # the smallest student alone that meets it
    closest: Side | None  # when neither meets it: the side that comes closest
    likely: list[Side]  # smaller sides than the answer's that likely meet it, not shown

    @property
    def factor(self) -> float | None:
        """How many times fewer parameters the distilled answer has than the one alone."""
        d, b = self.distilled, self.baseline
        if d is None or b is None or not d.params or not b.params:
            return None
        return b.params / d.params

    def to_json(self) -> dict[str, Any]:
        def brief(side: Side | None) -> dict[str, Any] | None:
            if side is None:
                return None
            b = side.bound
            return {"kind": side.kind, "width": side.width, "params": side.params,
                    "macs": side.macs, "mean": side.mean, "std": side.std,
                    "lower": b.lower if b else None, "meets": side.status,
                    "settings": side.settings,
                    "latency_ms": side.latency.batch1_ms if side.latency else None}

        return {"target": dataclasses.asdict(self.target), "teacher_acc": self.teacher_acc,
                "needed": self.needed, "distilled": brief(self.distilled),
                "baseline": brief(self.baseline), "factor": self.factor,
                "closest": brief(self.closest), "likely": [brief(s) for s in self.likely]}


def _by_size(sides: list[Side]) -> list[Side]:
    return sorted((s for s in sides if s.width is not None and s.params is not None),
                  key=lambda s: (s.params, s.width))


def find_answer(sides: list[Side], target: Target, teacher_acc: float | None) -> Answer:
    """The smallest side of each kind that meets the target (by parameters, then width); when
    none does, the closest; and the smaller sides that likely meet it but are not shown."""
    answer: dict[str, Side | None] = {}
    likely: list[Side] = []
    for kind in (DISTILLED, BASELINE):
        mine = _by_size([s for s in sides if s.kind == kind])
        found = next((s for s in mine if s.status == "meets"), None)
        answer[kind] = found
        smaller = mine if found is None else [s for s in mine if s.params < (found.params or 0)]
        likely += [s for s in smaller if s.status == "likely"]
    closest = None
    if answer[DISTILLED] is None and answer[BASELINE] is None:
        scored = [s for s in sides if s.bound is not None and s.mean is not None]
        # the nearest to showing it: the highest bound (where there is one), else the mean
        closest = max(scored, default=None, key=lambda s: (
            s.status == "likely", s.bound.lower if s.bound and s.bound.lower is not None
            else -1.0, s.mean or 0.0))
    return Answer(target, teacher_acc, target.needed(teacher_acc), answer[DISTILLED],
                  answer[BASELINE], closest, likely)


# --------------------------------------------------------------------------- in words
def _settings(side: Side) -> str:
    names = [k for k in (side.settings or {}) if k not in ("epochs", "width")]
    if side.kind == BASELINE:
        names = [k for k in names if k not in ("temperature", "alpha")]
    parts = [f"{SHORT_NAMES.get(k, k)} {_value((side.settings or {})[k])}" for k in names]
    return ", ".join(parts)


def _value(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _accuracy(side: Side) -> str:
    """"96.94 ± 0.84% (at least 96.30% at 95%)"."""
    text = pm(side.mean, side.std)
    if side.bound is not None and side.bound.lower is not None:
        text += f" (at least {pct(side.bound.lower)}% at {CONFIDENCE:.0%})"
    return text


def _student(side: Side, model: str) -> str:
    alone = "" if side.kind == DISTILLED else " alone"
    return (f"{'distilled ' if side.kind == DISTILLED else ''}width {side.width}{alone} "
            f"({model}), {side.params:,} parameters, {_accuracy(side)}, {_settings(side)}")


def to_show(side: Side) -> str:
    """What would show that a "likely" side meets the target."""
    b = side.bound
    ways = []
    if not side.correct:  # a final.json written before per-example results were kept
        ways.append("retraining it for per-example results (kdsearch report, without "
                    "--no-retrain)")
    if b is not None and b.seeds == 1:
        ways.append("more seeds (report.seeds: 3 or more; one seed gives no seed bound)")
    elif b is not None and b.seeds_needed:
        ways.append(f"about {b.seeds_needed} seeds a side (report.seeds)")
    if b is not None and b.test_examples_needed:
        ways.append(f"about {b.test_examples_needed:,} test examples")
    return " or ".join(ways) if ways else "more seeds or test examples"


def _missing(side: Side, needed: float) -> str:
    """How far a side is from the target, in words."""
    if side.status == "likely":
        return f"likely meets it, not shown: {to_show(side)} would show it"
    return f"{100 * (needed - (side.mean or 0.0)):.2f} points short"


def answer_sentence(a: Answer, model: str) -> str:
    """The answer in the words that open report.md."""
    words = a.target.words(a.teacher_acc)
    if a.needed is None:
        return ("No answer: the teacher's test accuracy is unknown (its logits came from a "
                "file), so only an absolute target applies; set report.target: {accuracy: A} "
                "(a test accuracy in percent).")
    d, b = a.distilled, a.baseline
    if d is None and b is None:
        return _no_answer(a, words, model)
    # the smaller of the two leads (the distilled one on a tie): the student to ship
    f = a.factor or 1.0
    first = b if d is None or (b is not None and f < 1.0) else d
    s = f"Smallest student {words}: {_student(first, model)}."
    if d is not None and b is not None:
        if b.width == d.width or f == 1.0:
            s += (f" Alone, the same width meets it: distillation buys nothing here.")
        elif f > 1:
            s += (f" Alone, the smallest that meets it is width {b.width} ({b.params:,} "
                  f"parameters): distillation makes the student {fmt_ratio(f)} smaller.")
        else:
            s += (f" Distilled, the smallest that meets it is width {d.width} ({d.params:,} "
                  f"parameters, {_accuracy(d)}): distillation buys nothing here.")
    elif d is not None:
        s += " Alone, no retrained width meets it: the student needs distillation to meet it."
    else:
        s += " No distilled width meets it: distillation buys nothing here."
    for x in a.likely:
        who = f"Distilled width {x.width}" if x.kind == DISTILLED else f"Width {x.width} alone"
        s += f" {who} likely meets it too, not shown: {to_show(x)} would show it."
    if b is not None and b.tuned is False:
        s += " The student alone was not tuned: it trained at the distilled setting."
    return s


def _no_answer(a: Answer, words: str, model: str) -> str:
    s = f"No student is shown {words} (at least {pct(a.needed)}%)"
    c = a.closest
    if c is None:
        return s + ": no retraining has a test accuracy."
    assert a.needed is not None
    kind = "distilled" if c.kind == DISTILLED else "alone"
    s += (f"; the closest is width {c.width} {kind} ({c.params:,} parameters), "
          f"{_accuracy(c)}: {_missing(c, a.needed)}.")
    if c.status != "likely":
        s += (" What would help: wider students (search.space.width), more epochs "
              "(training.epochs), or a lower target (report.target).")
    return s


def rule_sentences(a: Answer, seeds: int, test_examples: int) -> str:
    """The rule behind the answer, in two sentences."""
    if a.needed is None:
        return ""
    paired = " paired with the teacher's own results" if a.target.kind == "within_teacher" \
        else ""
    return (f"A student meets the target when the {CONFIDENCE:.0%} lower bound of its test "
            f"accuracy is above {pct(a.needed)}%: the bound is the smaller of two, one over its "
            f"{seeds} seeds and one over the {test_examples:,} test examples{paired}. A width "
            f"whose mean accuracy is above {pct(a.needed)}% but whose bound is not is \"likely, "
            f"not shown\"; the table says what would show it.")
