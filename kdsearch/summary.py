"""summary.json and summary.csv: every number of the report, from final.json, latency.json and
the search's own records (trials.csv, progress.csv, run.json).

`summarize` returns a `Summary`: the answer (`answer.find_answer`), a `Comparison` of the
distilled and the baseline student per width and for the best of each, what the search cost
(`SearchCost`), and the sentences that open the report. report.md shows only these numbers,
formatted by `formatting`. No training, no torch.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdsearch.answer import Answer, Side, Target, answer_sentence, find_answer
from kdsearch.config import ExperimentConfig, max_epochs
from kdsearch.fields import is_object_name
from kdsearch.final_record import FinalRecord, FinalRow, LatencyRecord, read_latency
from kdsearch.formatting import examples_phrase, fmt_p, fmt_ratio, pct, pm, points, seed_phrase
from kdsearch.results import (read_config, read_importances, read_run_if_any, row_width,
                              search_state, searched_kinds, trial_budget)
from kdsearch.stats import Decision, Tests, adjust, compare, decide
from kdsearch.tables import (BASELINE, DISTILLED, KINDS, PHASE, PROGRESS_FILE, TRIALS_FILE,
                             TrialRow, in_flight, read_table, read_trials)
from kdsearch.version import __version__

SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_FORMAT = 2  # 2: the seed test from exact counts, the test-set comparison, Holm


# --------------------------------------------------------------------------- the records
@dataclass(frozen=True)
class Comparison:
    """A row of the report: the distilled setting of a width against the baseline (or the best
    of each kind against each other)."""

    distilled: Side
    baseline: Side
    compression: float | None  # teacher parameters / distilled student parameters
    tests: Tests
    decision: Decision
    family: int | None = None  # the widths compared with it (Holm); None: the best's own

    @property
    def width(self) -> int | None:
        return self.distilled.width or self.baseline.width

    @property
    def params(self) -> int | None:
        return self.distilled.params or self.baseline.params

    def side(self, kind: str) -> Side:
        return self.distilled if kind == DISTILLED else self.baseline

    @classmethod
    def from_json(cls, c: dict[str, Any], *, family: int | None = None) -> Comparison:
        """A comparison from summary.json's flat record; its verdict decided anew (with
        `family`: from the Holm-adjusted p-values) when the record has none."""
        tests = Tests(**{f.name: c.get(f.name) for f in dataclasses.fields(Tests)})
        tests = dataclasses.replace(tests, distilled_n=tests.distilled_n or 0,
                                    baseline_n=tests.baseline_n or 0)
        decision = (Decision(**{f.name: c[f.name] for f in dataclasses.fields(Decision)})
                    if "verdict" in c else decide(tests, family=family))
        return cls(Side.from_json(DISTILLED, c), Side.from_json(BASELINE, c),
                   c.get("compression"), tests, decision, family)

    def to_json(self) -> dict[str, Any]:
        """summary.json's flat record of the comparison."""
        d, b = self.distilled, self.baseline
        out: dict[str, Any] = {"distilled_width": d.width, "baseline_width": b.width,
                               "distilled_params": d.params, "baseline_params": b.params,
                               "compression": self.compression, "baseline_tuned": b.tuned}
        tests = dataclasses.asdict(self.tests)
        holm = {k: tests.pop(k) for k in ("p_value_holm", "test_p_value_holm")}
        out.update(tests)
        for name in ("accs", "errors", "trial", "search_val_acc", "search_epochs", "settings"):
            out[f"distilled_{name}"] = getattr(d, name)
            out[f"baseline_{name}"] = getattr(b, name)
        if self.family is not None:
            out.update(holm)
        out.update(dataclasses.asdict(self.decision))
        if self.family is not None:
            for side in (d, b):
                out[f"{side.kind}_trials"] = side.trials
                out[f"{side.kind}_full_trials"] = side.full_trials
        for side in (d, b):  # the front: its size, cost and standing against the target
            out.update({f"{side.kind}_{k}": v for k, v in side.front_json().items()})
        return out


@dataclass(frozen=True)
class Spent:
    """What the search of one kind (or both, in total) spent."""

    status: str  # run.json's search status, "off" for a kind not searched; "" for the total
    planned: int
    trials: int
    full_budget: int
    stopped_early: int
    failed: int
    diverged: int
    incomplete: int
    trial_epochs: int
    training_seconds: float
    wall_seconds: float  # both kinds run side by side: one wall time

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if not self.status:
            del out["status"]
        return out


@dataclass(frozen=True)
class SearchCost:
    kinds: dict[str, Spent]  # by kind
    total: Spent
    hardware: dict[str, Any]
    max_concurrent_trials: int | None
    # from the search's first start to its end, the time between a kill and a resume
    # included; None until it has finished (or for a search of an older kdsearch)
    elapsed_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"phases": {PHASE[k]: v.to_json() for k, v in self.kinds.items()},
                "total": self.total.to_json(), "hardware": self.hardware,
                "max_concurrent_trials": self.max_concurrent_trials,
                "elapsed_seconds": self.elapsed_seconds}


@dataclass(frozen=True)
class TrialNote:
    """A trial the report names: one left in flight, or one that failed or diverged."""

    kind: str
    trial_id: str
    status: str
    error: str = ""


@dataclass
class Summary:
    """Every number of report.md (summary.json)."""

    name: str
    created: float
    dataset: str
    teacher_model: str
    student_model: str
    headline: str
    complete: bool
    incomplete_kinds: list[str]  # the kinds whose search did not finish
    incomplete_trials: list[TrialNote]
    failed_trials: list[TrialNote]  # status ERROR, or diverged (status "diverged")
    epoch_budget: int
    per_width: bool
    seeds: list[int]
    final: FinalRecord
    best: Comparison
    widths: list[Comparison]
    search: SearchCost
    importances: dict[str, Any] | None
    losses: list[LossComparison]  # each searched loss against KD (none: one loss)
    answer: Answer
    answer_text: str  # the answer in words: the first line of report.md
    # a teacher not trained by kdsearch (a checkpoint, an object): how likely a validation
    # accuracy this far above its test accuracy is by chance (one-sided Fisher's exact test);
    # a small p suggests it was trained on the rows held out for validation
    teacher_val_above_test_p: float | None
    latency: LatencyRecord | None  # where and how the students were timed
    plots: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        f, t = self.final, self.final.teacher
        return {
            "format": SUMMARY_FORMAT, "kdsearch_version": __version__, "name": self.name,
            "created": self.created, "dataset": self.dataset,
            "teacher_model": self.teacher_model, "student_model": self.student_model,
            "answer_text": self.answer_text, "answer": self.answer.to_json(),
            "headline": self.headline, "complete": self.complete,
            "incomplete_phases": [PHASE[k] for k in self.incomplete_kinds],
            "incomplete_trials": [{"phase": PHASE[n.kind], "trial_id": n.trial_id,
                                   "status": n.status} for n in self.incomplete_trials],
            "failed_trials": [{"phase": PHASE[n.kind], "trial_id": n.trial_id,
                               "kind": n.status, "error": n.error}
                              for n in self.failed_trials],
            "epoch_budget": self.epoch_budget, "per_width": self.per_width,
            "seeds": self.seeds,
            "data": dataclasses.asdict(f.data) if f.data else None,
            "final_device": f.device, "final_seconds": f.seconds,
            "final_retrained": f.retrained, "final_reused": f.reused,
            "final_reused_training_seconds": f.reused_training_seconds,
            "teacher": {"test_acc": t.test_acc if t else None,
                        "val_acc": t.val_acc if t else None,
                        "params": t.params if t else None,
                        "val_above_test_p": self.teacher_val_above_test_p},
            "baseline_tuned": f.baseline_tuned, "baseline_note": f.baseline_note,
            "best": self.best.to_json(), "widths": [w.to_json() for w in self.widths],
            "losses": [c.to_json() for c in self.losses],
            "search": self.search.to_json(), "importances": self.importances,
            "latency": None if self.latency is None else {
                k: v for k, v in self.latency.to_json().items() if k != "timings"},
            "plots": self.plots}


# --------------------------------------------------------------------------- comparisons
@dataclass(frozen=True)
class Context:
    """What every comparison of a report is made against."""

    final: FinalRecord
    target: Target
    latency: LatencyRecord | None


def comparison(d_row: FinalRow | None, b_row: FinalRow | None, ctx: Context
               ) -> tuple[Side, Side, Tests, float | None]:
    """A distilled setting against a baseline setting: both sides, their tests
    (`stats.compare`) and the distilled student's compression against the teacher."""
    final = ctx.final
    n_test = final.data.test if final.data else None
    teacher = final.teacher
    t_acc, t_params = (teacher.test_acc, teacher.params) if teacher else (None, None)
    d = Side.of(DISTILLED, d_row, final, ctx.target, ctx.latency)
    b = Side.of(BASELINE, b_row, final, ctx.target, ctx.latency)
    tests = compare(d.accs, b.accs, t_acc, n_test=n_test, distilled_correct=d.correct,
                    baseline_correct=b.correct)
    compression = t_params / d.params if d.params and t_params else None
    return d, b, tests, compression


def _search_behind(side: Side, width: int | None, rows: list[TrialRow],
                   cfg: ExperimentConfig) -> Side:
    """`side` with how many of the search's trials of its kind ran at `width`."""
    ran = [r for r in rows if r.kind == side.kind and r.completed
           and not r.diverged and row_width(r, cfg) == width]
    return dataclasses.replace(side, trials=len(ran),
                               full_trials=sum(not r.stopped_early for r in ran))


def compare_widths(ctx: Context, rows: list[TrialRow], cfg: ExperimentConfig
                   ) -> list[Comparison]:
    """A comparison per width, its p-values Holm-adjusted over the widths."""
    by_width: dict[int, dict[str, FinalRow]] = {}
    for r in ctx.final.rows:
        if not r.extra:  # (a loss's row retrained for `compare_losses` only)
            by_width.setdefault(r.width, {})[r.kind] = r
    found = [comparison(k.get(DISTILLED), k.get(BASELINE), ctx)
             for _, k in sorted(by_width.items())]
    family = adjust([tests for _, _, tests, _ in found])  # the widths are one family
    out = []
    for (d, b, _, compression), tests in zip(found, family):
        width = d.width or b.width
        out.append(Comparison(_search_behind(d, width, rows, cfg),
                              _search_behind(b, width, rows, cfg), compression, tests,
                              decide(tests, family=len(found)), family=len(found)))
    return out


@dataclass(frozen=True)
class LossComparison:
    """One loss's best setting at a width against the best setting of Hinton's KD there, both
    retrained with every seed and tested once (their tests as a comparison's)."""

    width: int
    loss: str
    side: Side  # the loss's retrained setting
    kd: Side  # KD's
    tests: Tests  # the loss's side as "distilled", KD's as "baseline"
    decision: Decision  # beats: the loss ahead of KD on both tests (Holm over the family)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"width": self.width, "loss": self.loss, "against": "kd",
                               "loss_mean": self.side.mean, "loss_std": self.side.std,
                               "kd_mean": self.kd.mean, "kd_std": self.kd.std,
                               "loss_settings": self.side.settings,
                               "kd_settings": self.kd.settings}
        out.update(dataclasses.asdict(self.tests))
        out.update(dataclasses.asdict(self.decision))
        return out


def compare_losses(ctx: Context) -> list[LossComparison]:
    """When several losses were searched: each other loss against KD at each width, the
    p-values Holm-adjusted over all of these comparisons."""
    rows: dict[tuple[int, str], FinalRow] = {}
    for r in ctx.final.rows:
        if r.kind == DISTILLED and r.loss is not None:
            rows[(r.width, r.loss)] = r
    if len({loss for _, loss in rows}) < 2:
        return []
    pairs = [(w, loss) for (w, loss) in sorted(rows) if loss != "kd" and (w, "kd") in rows]
    sides = [(Side.of(DISTILLED, rows[(w, loss)], ctx.final, ctx.target, ctx.latency),
              Side.of(DISTILLED, rows[(w, "kd")], ctx.final, ctx.target, ctx.latency))
             for w, loss in pairs]
    n_test = ctx.final.data.test if ctx.final.data else None
    t_acc = ctx.final.teacher.test_acc if ctx.final.teacher else None
    family = adjust([compare(a.accs, b.accs, t_acc, n_test=n_test, distilled_correct=a.correct,
                             baseline_correct=b.correct) for a, b in sides])
    return [LossComparison(w, loss, a, b, t, decide(t, family=len(pairs)))
            for (w, loss), (a, b), t in zip(pairs, sides, family)]


def compare_best(ctx: Context) -> Comparison:
    """The best distilled setting against the best baseline, with its own tests."""
    final = ctx.final
    d, b, tests, compression = comparison(final.best_row(DISTILLED), final.best_row(BASELINE),
                                          ctx)
    return Comparison(d, b, compression, tests, decide(tests))


# --------------------------------------------------------------------------- the search
def search_cost(cfg: ExperimentConfig, rows: list[TrialRow], progress: list[dict[str, str]],
                run: dict[str, Any]) -> SearchCost:
    """What the search spent, per kind and in total (from trials.csv, progress.csv, run.json)."""
    state = search_state(run)  # both kinds run side by side: one status, one wall time
    wall = float(state.get("wall_seconds") or 0.0)
    kinds: dict[str, Spent] = {}
    for kind in KINDS:
        on = kind in searched_kinds(cfg)
        mine = [r for r in rows if r.kind == kind]
        done = [r for r in mine if r.completed]
        diverged = [r for r in done if r.diverged]
        early = [r for r in done if r.stopped_early and not r.diverged]
        epochs = [r for r in progress if r.get("phase") == PHASE[kind]]
        kinds[kind] = Spent(
            status=state.get("status", "not started") if on else "off",
            planned=trial_budget(cfg, kind) if on else 0, trials=len(mine),
            full_budget=len(done) - len(diverged) - len(early), stopped_early=len(early),
            failed=sum(r.failed for r in mine), diverged=len(diverged),
            incomplete=len(in_flight(mine)),
            trial_epochs=len(epochs) if progress else sum(r.epochs for r in mine),
            training_seconds=sum(r.training_seconds or 0.0 for r in mine), wall_seconds=wall)
    on = [s for s in kinds.values() if s.status != "off"]
    total = Spent("", *(sum(getattr(s, f.name) for s in on)
                        for f in dataclasses.fields(Spent)[1:-1]), wall)
    return SearchCost(kinds, total, run.get("hardware") or {}, run.get("max_concurrent_trials"),
                      state.get("elapsed_seconds"))


def _trial_notes(rows: list[TrialRow]) -> tuple[list[TrialNote], list[TrialNote]]:
    """The trials left in flight, and those that failed or diverged."""
    flying = [TrialNote(r.kind, r.trial_id, r.status) for r in in_flight(rows)]
    failed = [TrialNote(r.kind, r.trial_id, "diverged" if r.diverged else "error",
                        r.error[:200]) for r in rows if r.failed or r.diverged]
    return flying, failed


# --------------------------------------------------------------------------- the headline
def headline(best: Comparison, widths: list[Comparison], *, student_model: str,
             teacher_acc: float | None, baseline_note: str) -> str:
    """The sentence that opens report.md: the best distilled student against the best baseline
    (its own tests), then the widths where either side wins (Holm-adjusted over the widths)."""
    d, b, t, verdict = best.distilled, best.baseline, best.tests, best.decision.verdict
    student = f"width-{d.width} {student_model} ({d.params:,} parameters)"
    base = "the tuned baseline" if b.tuned else "an untuned baseline"
    if b.width is not None and b.width != d.width:
        base += f" (width {b.width}, {b.params or 0:,} parameters)"
    lead = {"beats": "Distillation beats the baseline",
            "not_significant": "Distillation does not beat the baseline significantly",
            "does_not_beat": ("The baseline beats distillation" if best.decision.significant
                              else "Distillation does not beat the baseline"),
            "no_comparison": "No comparison: every retraining of the "
                             + ("distilled" if d.mean is None else "baseline")
                             + " setting diverged"}[verdict]
    s = f"{lead}: distilled {student} {pm(d.mean, d.std)} test accuracy vs {pm(b.mean, b.std)} " \
        f"for {base}"
    if verdict != "no_comparison":
        s += f" ({points(t.difference)} points; {seed_phrase(t)}; {examples_phrase(t)})"
    if teacher_acc is None:  # its logits came from a file: no model to test
        s += "; the teacher's logits came from a file (no teacher accuracy)."
    else:
        s += (f"; teacher {pct(teacher_acc)}%; {fmt_ratio(best.compression)} fewer "
              f"parameters than the teacher.")
    s += _other_widths(best, widths)
    if not b.tuned and baseline_note:
        s += f" Note: {baseline_note}."
    return s


def _other_widths(best: Comparison, widths: list[Comparison]) -> str:
    """Where distillation helps, and where the baseline is significantly ahead: the widths'
    own comparisons (the best student is often the widest, where a teacher helps least)."""
    others = [w for w in widths if (w.distilled.width, w.baseline.width)
              != (best.distilled.width, best.baseline.width)]
    s = ""
    for words, group in (("Distillation beats the baseline at ",
                          [w for w in others if w.decision.verdict == "beats"]),
                         ("The baseline beats distillation at ",
                          [w for w in others if w.decision.verdict == "does_not_beat"
                           and w.decision.significant])):
        if group:
            s += " " + words + ", ".join(
                f"width {w.distilled.width} ({points(w.tests.difference)} points, "
                f"Holm-adjusted p = {fmt_p(w.tests.p_value_holm)} over seeds and "
                f"{fmt_p(w.tests.test_p_value_holm)} over the test set"
                + ("" if w.baseline.tuned else ", against an untuned baseline") + ")"
                for w in group) + f" ({len(widths)} widths compared)."
    return s


# --------------------------------------------------------------------------- the summary
def val_above_test_p(val_acc: float, n_val: int, test_acc: float, n_test: int) -> float:
    """One-sided Fisher's exact test that a validation accuracy is above a test accuracy by
    more than chance: the p-value of counts this far apart or more."""
    from scipy import stats

    val_right, test_right = round(val_acc * n_val), round(test_acc * n_test)
    table = [[val_right, n_val - val_right], [test_right, n_test - test_right]]
    return float(stats.fisher_exact(table, alternative="greater").pvalue)


def _teacher_check(cfg: ExperimentConfig, final: FinalRecord) -> float | None:
    t, data = final.teacher, final.data
    loaded = cfg.teacher.checkpoint is not None or is_object_name(cfg.teacher.model)
    if not loaded or t is None or t.val_acc is None or t.test_acc is None or data is None:
        return None  # a teacher kdsearch trained never saw the validation split
    return val_above_test_p(t.val_acc, data.val, t.test_acc, data.test)


def summarize(results_dir: Path, final: FinalRecord) -> Summary:
    """Every number of the report, from final.json, latency.json and the search's records."""
    cfg = read_config(results_dir)
    rows = read_trials(results_dir / TRIALS_FILE)
    progress = read_table(results_dir / PROGRESS_FILE)
    run = read_run_if_any(results_dir)  # without it the cost table says "not started"
    ctx = Context(final, Target.of(cfg.report.target), read_latency(results_dir))
    widths = compare_widths(ctx, rows, cfg)
    best = compare_best(ctx)
    teacher_acc = final.teacher.test_acc if final.teacher else None
    answer = find_answer([side for c in widths for side in (c.distilled, c.baseline)],
                         ctx.target, teacher_acc)
    flying, failed = _trial_notes(rows)
    finished = search_state(run).get("status", "not started") == "finished"
    open_kinds = [] if finished else searched_kinds(cfg)
    return Summary(
        name=cfg.name, created=time.time(), dataset=cfg.dataset.name,
        teacher_model=cfg.teacher.model, student_model=cfg.student.model,
        headline=headline(best, widths, student_model=cfg.student.model,
                          teacher_acc=final.teacher.test_acc if final.teacher else None,
                          baseline_note=final.baseline_note),
        complete=not flying and not open_kinds,
        incomplete_kinds=open_kinds, incomplete_trials=flying, failed_trials=failed,
        epoch_budget=max_epochs(cfg), per_width=cfg.search.per_width, seeds=final.seeds,
        final=final, best=best, widths=widths, search=search_cost(cfg, rows, progress, run),
        importances=read_importances(results_dir), losses=compare_losses(ctx), answer=answer,
        answer_text=answer_sentence(answer, cfg.student.model),
        teacher_val_above_test_p=_teacher_check(cfg, final), latency=ctx.latency)


# --------------------------------------------------------------------------- summary.csv
CSV_FIELDS = ("comparison", "distilled_width", "baseline_width", "distilled_params",
              "baseline_params", "compression", "baseline_tuned", "distilled_mean",
              "distilled_std", "distilled_n", "baseline_mean", "baseline_std", "baseline_n",
              "difference", "p_value", "p_value_holm", "seed_note", "test_ci_low",
              "test_ci_high", "test_p_value", "test_p_value_holm", "test_n", "test_discordant",
              "test_note", "gap_recovered", "teacher_acc", "verdict", "significant",
              "seeds_needed", "test_examples_needed", "distilled_accs", "baseline_accs",
              "distilled_trial", "baseline_trial",
              # the front: each side's size, cost and standing against the target
              "distilled_macs", "distilled_latency_ms", "distilled_batch_latency_ms",
              "distilled_lower", "distilled_meets", "distilled_seeds_to_show",
              "distilled_test_examples_to_show", "baseline_macs", "baseline_latency_ms",
              "baseline_batch_latency_ms", "baseline_lower", "baseline_meets",
              "baseline_seeds_to_show", "baseline_test_examples_to_show")


def summary_csv(summary: Summary) -> str:
    """summary.csv: a row per comparison (the best, then each width), its settings last."""
    entries = [("best", summary.best.to_json())] + [("width", w.to_json())
                                                    for w in summary.widths]
    setting_cols: list[str] = []
    for _, c in entries:
        for kind in KINDS:
            for k in c[f"{kind}_settings"] or {}:
                col = f"{kind}_{k}"
                if col not in setting_cols and col not in CSV_FIELDS:  # width has its column
                    setting_cols.append(col)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*CSV_FIELDS, *setting_cols], lineterminator="\n")
    w.writeheader()
    for name, c in entries:
        row = {k: c.get(k) for k in CSV_FIELDS if k != "comparison"}
        row["comparison"] = name
        for k in ("distilled_accs", "baseline_accs"):
            row[k] = ";".join(repr(a) for a in c[k])
        for kind in KINDS:
            for k, v in (c[f"{kind}_settings"] or {}).items():
                if f"{kind}_{k}" not in CSV_FIELDS:
                    row[f"{kind}_{k}"] = v
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()
