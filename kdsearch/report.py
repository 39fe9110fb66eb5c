"""Results folder -> report.md, summary.json, summary.csv and PNG plots. No training here.

The test accuracies come from the final evaluation (final.json: each best setting retrained with
several seeds, tested once). `write_report` turns them and the search's own records (trials.csv,
progress.csv, run.json) into:

  report.md        the answer first (the smallest student that meets the target), then
                   tables and the plots (relative links)
  summary.json     every number in report.md, unrounded (`summary`); report.md formats these
  summary.csv      the comparisons as a flat table, one row per comparison
  *.png            test accuracy vs student parameters, val_acc vs temperature and vs alpha,
                   best-so-far val_acc vs trial-epochs spent (`plots`)

`make_report` runs the final evaluation first (`final.evaluate_final`, which trains with torch)
and times the students (`latency.measure`). Then it runs `write_report`. Rendering needs neither
torch nor Ray. It works on a finished, an interrupted or a resumed search, and on a folder
copied elsewhere, because nothing written names an absolute path. Each section of report.md has
a function of its own, and `render` puts them in order.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from kdsearch import files
from kdsearch.answer import Side, rule_sentences, to_show
from kdsearch.errors import UserError, one_line
from kdsearch.final_record import FINAL_FILE, LATENCY_FILE, FinalRecord, read_final
from kdsearch.formatting import (examples_phrase, fmt_ci, fmt_gap, fmt_p, fmt_ratio,
                                 fmt_seconds, fmt_value, pct, pm, points, seed_phrase)
from kdsearch.plots import PLOTS, group_label, write_plots
from kdsearch.results import ReportError, read_run_if_any
from kdsearch.stats import SIGNIFICANCE, Tests
from kdsearch.summary import (SUMMARY_CSV, SUMMARY_JSON, Comparison, Spent, Summary,
                              summarize, summary_csv)
from kdsearch.tables import BASELINE, KINDS, PHASE, PROGRESS_FILE, TRIALS_FILE, read_table
from kdsearch.version import __version__

if TYPE_CHECKING:  # (annotations only: the final evaluation's types)
    from kdsearch.builders import UserObjects
    from kdsearch.inputs import Inputs
    from kdsearch.retrain import Runner

log = logging.getLogger(__name__)

REPORT_FILE = "report.md"
TEACHER_CHECK_LEVEL = 0.01  # below it, the report says the teacher's val accuracy is too high
# run.json's search states as the cost table words them ("started": running, or killed)
_STATUS = {"finished": "finished", "started": "unfinished (interrupted?)",
           "not started": "not started"}


def _table(header: Sequence[str], rows: list[Sequence[str]], align: str) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


# --------------------------------------------------------------------------- the opening
def intro(s: Summary) -> list[str]:
    """Who taught whom on what, how the numbers were made, and how they are tested."""
    data, seeds = s.final.data, s.seeds
    train, val, test = (data.train, data.val, data.test) if data else (0, 0, 0)
    return [
        f"kdsearch {__version__} report for `{s.name}`: "
        f"{s.teacher_model} teacher, {s.student_model} students, {s.dataset}. Each setting "
        f"below was retrained from scratch with {len(seeds)} seeds "
        f"({', '.join(map(str, seeds))}) on the training split ({train:,} examples) for its "
        f"full epoch budget and evaluated once on the held-out test split ({test:,} "
        f"examples); mean ± sample standard deviation over seeds. The search saw only the "
        f"validation split ({val:,} examples).", "",
        f"A verdict that one side beats the other needs two tests to agree at p < "
        f"{SIGNIFICANCE:g}. Over seeds, Welch's t-test on the exact test counts (seeds "
        f"that land on the same count have no spread; when neither side has any there is "
        f"no seed test, and the verdict rests on the test set). Over the test examples, "
        f"the paired comparison of the seed-averaged correctness of each example (its 95% "
        f"interval, and the exact sign-flip test, McNemar's with one seed a side), since "
        f"the test split is a sample too. Per width, both p-values are adjusted with "
        f"Holm's method over the {len(s.widths)} widths compared (raw, then adjusted); "
        f"the headline's best-vs-best comparison keeps its own. These weigh the seeds and "
        f"the test examples of the settings the search picked, not the search's own luck: "
        f"a search run again (another `search.seed`) may pick other settings.", ""]


def notices(s: Summary) -> list[str]:
    """An interrupted search, an untuned baseline: said before any number."""
    out: list[str] = []
    if not s.complete:
        parts = []
        if s.incomplete_kinds:
            parts.append("phase " + ", ".join(f"`{PHASE[k]}`" for k in s.incomplete_kinds)
                         + " did not finish")
        if s.incomplete_trials:
            ids = ", ".join(f"`{n.trial_id}` ({n.kind}, {n.status})"
                            for n in s.incomplete_trials)
            parts.append(f"{len(s.incomplete_trials)} trials did not finish: {ids}")
        out += [f"> **Incomplete search.** The search was interrupted: {'; '.join(parts)}. "
                f"This report uses the finished trials only; continue the search with "
                f"`kdsearch resume` on this folder and report again.", ""]
    if not s.final.baseline_tuned:
        note = s.final.baseline_note or "the baseline was not tuned"
        out += [f"> **{note[0].upper()}{note[1:]}.** For a comparison, the baseline was trained "
                f"at the distilled setting's learning rate (and its other non-distillation "
                f"values) with alpha = 1; it is labelled \"untuned\".", ""]
    return out


# --------------------------------------------------------------------------- the front
_MEETS = {"meets": "yes", "likely": "likely, not shown", "misses": "no", "unknown": "n/a"}


def _standing(side: Side) -> list[str]:
    if side.width is None:
        return ["—", "—", "—"]
    b = side.bound
    lower = f"{pct(b.lower)}%" if b is not None and b.lower is not None else "n/a"
    return [pm(side.mean, side.std), lower, _MEETS[side.status]]


def front_table(s: Summary) -> list[str]:
    """Each width's size, cost, and each kind's accuracy against the target."""
    a = s.answer
    if a.needed is None:
        return []
    rows = []
    for c in s.widths:
        t = c.distilled.latency or c.baseline.latency
        macs = c.distilled.macs or c.baseline.macs
        rows.append([str(c.width), f"{c.params:,}", "n/a" if macs is None else f"{macs:,}",
                     "n/a" if t is None else f"{t.batch1_ms:.3f}",
                     "n/a" if t is None or s.latency is None
                     else f"{t.throughput(s.latency.batch):,.0f}",
                     *_standing(c.distilled), *_standing(c.baseline)])
    batch = f", batch {s.latency.batch}" if s.latency else ""
    out = [f"## The smallest student {a.target.words(a.teacher_acc)}", ""]
    out += _table(["width", "parameters", "MACs / example", "latency (ms), 1 example",
                   f"examples / s{batch}", "distilled", "at least (95%)", "meets",
                   "alone", "at least (95%)", "meets"], rows, "rrrrrllllll")
    unshown = [side for c in s.widths for side in (c.distilled, c.baseline)
               if side.status == "likely"]
    if unshown:
        out += ["", "What would show the \"likely\" rows:", ""]
        out += [f"- width {side.width}, {'distilled' if side.kind == 'distilled' else 'alone'}: "
                f"{to_show(side)}." for side in unshown]
    return out + _latency_note(s)


def _latency_note(s: Summary) -> list[str]:
    r = s.latency
    if r is None:
        return ["", f"Not timed: no `{LATENCY_FILE}` (`kdsearch latency results/{s.name}` "
                    f"times the saved students)."]
    return ["", f"Latency: measured on {r.device}, {r.threads} torch thread"
                f"{'s' if r.threads > 1 else ''}, torch {r.torch}, on {r.host}; the median of "
                f"timed calls after {r.warmup} warm-up calls, one example and a batch of "
                f"{r.batch}. Time them where they will run with `kdsearch latency "
                f"results/{s.name} [--device cuda] [--threads N]`; export one with `kdsearch "
                f"export results/{s.name} --answer --format onnx`."]


# --------------------------------------------------------------------------- by width
def _p_pair(raw: float | None, adjusted: float | None) -> str:
    return "n/a" if raw is None else f"{fmt_p(raw)} ({fmt_p(adjusted)})"


def _seed_cell(t: Tests) -> str:
    if t.seed_note == "too_few_seeds":
        return "one seed"
    if t.seed_note == "no_spread":
        return "no spread"
    cell = _p_pair(t.p_value, t.p_value_holm)
    return cell + {"no_spread_distilled": ", distilled: no spread",
                   "no_spread_baseline": ", baseline: no spread"}.get(t.seed_note or "", "")


def _verdict_cell(c: Comparison) -> str:
    verdict = c.decision.verdict
    if verdict == "beats":
        return "distilled ahead"
    if verdict == "does_not_beat" and c.decision.significant:
        return "baseline ahead"
    return "none" if verdict != "no_comparison" else "no comparison"


def width_table(s: Summary) -> list[str]:
    """The test accuracy of each width, distilled against the baseline, with the tests."""
    rows = []
    for c in s.widths:
        d, b, t = c.distilled, c.baseline, c.tests
        base = pm(b.mean, b.std) + (" (untuned)" if b.tuned is False else "")
        searched = " / ".join(f"{x.trials or 0} ({x.full_trials or 0})" for x in (d, b))
        rows.append([str(c.width), f"{c.params:,}", fmt_ratio(c.compression),
                     pm(d.mean, d.std), base, points(t.difference), _seed_cell(t), fmt_ci(t),
                     _p_pair(t.test_p_value, t.test_p_value_holm), _verdict_cell(c),
                     fmt_gap(t.gap_recovered), searched])
    out = ["## Distilled against alone, width by width", "", f"{s.headline}", ""]
    out += _table(["width", "parameters", "compression", "distilled", "baseline",
                   "difference (points)", "seeds: Welch p (Holm)", "test set: 95% CI (points)",
                   "test set: p (Holm)", "verdict", "gap recovered",
                   "trials: distilled / baseline (full budget)"], rows, "rrrllrrrrlrr")
    return out + _advice(s) + _caution(s)


def _advice(s: Summary) -> list[str]:
    unsettled = [c for c in s.widths if c.decision.advice]
    if not unsettled:
        return []
    out = ["", f"What would settle the rows without a verdict (from the spreads seen, for 80% "
               f"power at the strictest level Holm's method asks of a width, "
               f"{SIGNIFICANCE:g} / {len(s.widths)}):", ""]
    return out + [f"- width {c.width}: " + "; ".join(c.decision.advice) + "."
                  for c in unsettled]


def _caution(s: Summary) -> list[str]:
    """Widths whose best setting of a kind comes from a trial ASHA stopped early."""
    thin = [str(c.width) for c in s.widths if s.epoch_budget
            and (c.distilled.stopped_early or c.baseline.stopped_early)]
    if not thin:
        return []
    fix = ("For a fair row, give that width more trials (search.num_samples), or search it "
           "alone (that width only in `search.space.width`)." if s.per_width or len(s.widths) == 1
           else "The searcher spent its budget on other widths: set `search.per_width: true` "
                "to give every width an equal share.")
    return ["", f"Caution: at width{'s' if len(thin) > 1 else ''} {', '.join(thin)} the best "
                f"setting of one kind comes from a trial ASHA stopped early (no trial of that "
                f"kind ran its full epoch budget there), so that row compares less-tuned "
                f"settings. " + fix]


def loss_table(s: Summary) -> list[str]:
    """Each searched loss's best setting against a tuned KD's, width by width."""
    if not s.losses:
        return []
    rows = []
    for c in s.losses:
        t = c.tests
        rows.append([str(c.width), c.loss, pm(c.side.mean, c.side.std), pm(c.kd.mean, c.kd.std),
                     points(t.difference), _seed_cell(t), fmt_ci(t),
                     _p_pair(t.test_p_value, t.test_p_value_holm),
                     {"beats": f"{c.loss} ahead", "does_not_beat": "KD ahead"
                      if c.decision.significant else "none"}.get(c.decision.verdict, "none")])
    out = ["", "## Losses against a tuned KD", "",
           f"Each loss was searched with its own trials and searcher (an equal share), and the "
           f"best setting of each at each width retrained with the same seeds; its test "
           f"accuracy against Hinton's KD's, with the same two tests, Holm-adjusted over the "
           f"{len(s.losses)} comparisons.", ""]
    return out + _table(["width", "loss", "its test acc", "KD's", "difference (points)",
                         "seeds: Welch p (Holm)", "test set: 95% CI (points)",
                         "test set: p (Holm)", "verdict"], rows, "rlllrrrrl")


def teacher_line(s: Summary) -> list[str]:
    t = s.final.teacher
    if t is None or t.params is None:  # teacher.logits: no model here
        return ["", f"Teacher ({s.teacher_model}): its logits on the training split came "
                    f"from a file (`teacher.logits`), so there is no teacher accuracy, "
                    f"compression or gap recovered.", ""]
    out = ["", f"Teacher ({s.teacher_model}, {t.params:,} parameters): {pct(t.test_acc)}% test "
               f"accuracy, {pct(t.val_acc)}% validation. Compression = teacher parameters / "
               f"student parameters; gap recovered = (distilled − baseline) / (teacher − "
               f"baseline).", ""]
    p = s.teacher_val_above_test_p
    if p is not None and p < TEACHER_CHECK_LEVEL:
        out += [f"> **The teacher's validation accuracy is above its test accuracy by more than "
                f"chance allows** (Fisher's exact test, one-sided p = {fmt_p(p)}): it may have "
                f"been trained on the rows kdsearch holds out for validation. The students are "
                f"not harmed, but its validation accuracy overstates it. If it was trained on "
                f"all of your `train` rows, return your own `\"val\"` rows from your dataset "
                f"function (docs/own_models.md).", ""]
    return out


def best_line(s: Summary) -> list[str]:
    """The best of each kind against each other, when they are of different widths."""
    d, b, t = s.best.distilled, s.best.baseline, s.best.tests
    if d.width == b.width:
        return []
    return [f"Best overall: distilled width {d.width} {pm(d.mean, d.std)} vs baseline width "
            f"{b.width} {pm(b.mean, b.std)} ({points(t.difference)} points; {seed_phrase(t)}; "
            f"{examples_phrase(t)}).", ""]


def per_seed(s: Summary) -> list[str]:
    """Every seed's test accuracy, and why a seed has none."""
    out = ["Per-seed test accuracies (%):", ""]
    n_seeds = len(s.seeds)
    for c in s.widths:
        for side in (c.distilled, c.baseline):
            if side.width is None:
                continue
            text = ", ".join(pct(a) for a in side.accs) if side.accs else "none"
            errors = side.errors or ["diverged"] * (n_seeds - len(side.accs))
            why = [f"{errors.count('diverged')} of {n_seeds} seeds diverged"]
            why += [f"1 of {n_seeds} seeds failed ({e})" for e in errors if e != "diverged"]
            if errors:
                text += " (" + "; ".join(w for w in why if not w.startswith("0 of")) + ")"
            out.append(f"- width {side.width}, {side.kind}: {text}")
    return out


# --------------------------------------------------------------------------- settings
def setting_table(s: Summary) -> list[str]:
    """The best trial of each kind at each width, with its searched values."""
    entries = []
    for c in s.widths:
        for side in (c.distilled, c.baseline):
            if side.settings is None:
                continue
            label = "baseline (untuned)" if side.kind == BASELINE and not side.tuned \
                else side.kind
            if side.width == s.best.side(side.kind).width:
                label += " **(best)**"
            entries.append((label, side))
    dims: list[str] = []
    for _, side in entries:
        dims += [k for k in side.settings or {} if k not in dims and k != "width"]
    header = ["setting", "width", *dims, "search trial", "search val acc (epoch)", "test acc"]
    rows = [[label, str(side.width), *(fmt_value((side.settings or {}).get(d)) for d in dims),
             f"`{side.trial}`" if side.trial else "—",
             f"{pct(side.search_val_acc)}% ({side.search_epochs})"
             if side.search_val_acc is not None else "—", pm(side.mean, side.std)]
            for label, side in entries]
    return (["", "## Best hyperparameters", "",
             "The best trial of each kind at each width (full-budget trials first, then final "
             "validation accuracy; equal accuracies by the lower validation loss), as "
             "retrained.", ""] + _table(header, rows, "lr" + "r" * (len(header) - 2)))


# --------------------------------------------------------------------------- the cost
def cost_table(s: Summary) -> list[str]:
    """What the search spent, per kind and in total; the hardware; failed trials; the final
    evaluation's time."""
    kinds = [k for k in KINDS if s.search.kinds[k].status != "off"]
    tot = s.search.total

    def line(name: str, f: Callable[[Spent], str]) -> list[str]:
        return [name, *(f(s.search.kinds[k]) for k in kinds), f(tot)]

    out = ["", "## What the search cost", ""]
    out += _table(["", *kinds, "total"], [
        line("trials run / planned", lambda x: f"{x.trials} / {x.planned}"),
        line("ran the full epoch budget", lambda x: str(x.full_budget)),
        line("stopped early by ASHA", lambda x: str(x.stopped_early)),
        line("failed / diverged", lambda x: f"{x.failed} / {x.diverged}"),
        line("incomplete (interrupted)", lambda x: str(x.incomplete)),
        line("trial-epochs", lambda x: f"{x.trial_epochs:,}"),
        line("training time (sum over trials)", lambda x: fmt_seconds(x.training_seconds)),
        ["time spent searching, over all its runs (both kinds side by side)",
         *("" for _ in kinds), fmt_seconds(tot.wall_seconds)],
        ["time from its first start to its end", *("" for _ in kinds),
         fmt_seconds(s.search.elapsed_seconds)],
        ["status", *(_STATUS.get(s.search.kinds[k].status, s.search.kinds[k].status)
                           for k in kinds), "complete" if s.complete else "incomplete"]],
        "l" + "r" * (len(kinds) + 1))
    hw = s.search.hardware
    if hw:
        out += ["", f"Hardware: {hw.get('cpus', 0):g} CPUs, {hw.get('gpus', 0):g} GPUs, "
                    f"{hw.get('nodes', 1)} node(s); driver {hw.get('driver', '?')}; torch "
                    f"{hw.get('torch', '?')}; up to {s.search.max_concurrent_trials} trials "
                    f"at once."]
    if s.failed_trials:
        out += ["", "Failed trials (the search went on without them):", ""]
        out += [f"- {PHASE[n.kind]} `{n.trial_id}` {n.status}: "
                f"{n.error or 'no message'}" for n in s.failed_trials]
    return out + _final_line(s.final)


def _final_line(f: FinalRecord) -> list[str]:
    reused = ""
    if f.reused:
        reused = f"{f.reused} settings reused from an earlier `{FINAL_FILE}`"
        if f.reused_training_seconds:
            reused += (f" (trained then in {fmt_seconds(f.reused_training_seconds)}, summed "
                       f"over seeds)")
    if f.retrained or not reused:
        return ["", f"Final evaluation: {f.retrained} retrainings on {f.device} in "
                    f"{fmt_seconds(f.seconds)}{'; ' + reused if reused else ''}."]
    # nothing retrained: a report of retrainings done before
    return ["", f"Final evaluation: all {reused} on {f.device}."]


# --------------------------------------------------------------------------- the rest
def importance_table(importances: dict[str, Any] | None) -> list[str]:
    """Each group's importances of the searched values (Optuna's), with the trials they rest on;
    a group with too few trials, or one value searched, says so instead."""
    if not importances:
        return ["No importances: they are computed from trials.csv and progress.csv, with "
                "Optuna, by `kdsearch run`, `kdsearch resume` and `kdsearch report`."]
    groups = importances["groups"]
    names = list(dict.fromkeys(n for g in groups for n in g["importances"] or {}))
    rows = []
    for g in groups:
        label = group_label(g)
        if g["importances"]:
            cells = [fmt_gap(g["importances"].get(n)) if n in g["importances"] else "—"
                     for n in names]
        else:
            why = (f"too few trials (fewer than {importances['min_trials']})"
                   if g["trials"] < importances["min_trials"] else "one searched value")
            cells = [why] + [""] * (len(names) - 1) if names else [why]
        rows.append([label, str(g["trials"]), *cells])
    intro_ = [f"Optuna's importance of each searched value (`optuna.importance."
              f"get_param_importances`, PED-ANOVA) for the {importances['target']}, which every "
              f"trial that did not fail reached; each row rests on the trials it counts.", ""]
    header = ["trials of", "trials", *(names or ["importance"])]
    return intro_ + _table(header, rows, "lr" + "r" * max(1, len(names)))


def plot_links(s: Summary) -> list[str]:
    out = ["", "## Plots", ""]
    for name, rec in s.plots.items():
        out += [f"![{rec['title']}]({name})", ""]
    missing = [n for n in PLOTS if n not in s.plots]
    if missing:
        out += ["Not drawn (no data: the dimension was not searched or no trial finished): "
                + ", ".join(f"`{m}`" for m in missing) + ".", ""]
    return out


def file_list(s: Summary) -> list[str]:
    return ["## Files", "",
            f"`{SUMMARY_JSON}` and `{SUMMARY_CSV}` hold the numbers above unrounded; "
            f"`{FINAL_FILE}` every retraining; `{TRIALS_FILE}` every trial of the search "
            f"(distilled and baseline); `{PROGRESS_FILE}` every epoch they reported; "
            f"`optuna.db` the Optuna studies; `importances.json` what mattered; `{LATENCY_FILE}` "
            f"the students' timings; `config.yaml` the resolved config; `students/` the trained "
            f"students of the retrainings (a state_dict each, `students/index.json` lists them "
            f"with their test accuracy; `kdsearch.load_student(\"results/{s.name}\")` rebuilds "
            f"the best distilled one, `kdsearch export results/{s.name} --answer` writes the "
            f"answer's as ONNX).", ""]


def render(s: Summary) -> str:
    """report.md: every number formatted from `s` by the section functions above."""
    data = s.final.data
    rule = rule_sentences(s.answer, len(s.seeds), data.test if data else 0)
    out = [f"**{s.answer_text}**", ""] + ([rule, ""] if rule else []) + intro(s) + notices(s)
    out += front_table(s) + [""] + width_table(s) + loss_table(s)
    out += teacher_line(s) + best_line(s) + per_seed(s) + setting_table(s) + cost_table(s)
    out += ["", "## What mattered", ""] + importance_table(s.importances)
    out += plot_links(s) + file_list(s)
    return "\n".join(out)


# --------------------------------------------------------------------------- entry points
def write_report(results_dir: str | os.PathLike[str]) -> Path:
    """Write report.md, summary.json, summary.csv and the plots from the folder's final.json
    (no training); return report.md's path. A ReportError when final.json is missing or
    damaged: `make_report` retrains what it needs."""
    results = Path(results_dir)
    final = read_final(results)
    if final is None:
        raise ReportError(f"{results}: no readable {FINAL_FILE}; write the report with "
                          f"`kdsearch report {results}` (it retrains the best settings)")
    return _write(results, final)


def _write(results: Path, final: FinalRecord) -> Path:
    summary = summarize(results, final)
    summary.plots = write_plots(results, summary)
    # everything rendered before anything is written: a failure leaves the three files as they were
    table, text = summary_csv(summary), render(summary)
    files.write_json(results / SUMMARY_JSON, summary.to_json())
    files.write_text(results / SUMMARY_CSV, table)
    path = results / REPORT_FILE
    files.write_text(path, text)
    return path


def make_report(results_dir: str | os.PathLike[str], *, retrain: bool = True,
                device: str = "auto", runner: Runner | None = None,
                inputs: Inputs | None = None, objects: UserObjects | None = None) -> Path:
    """Run the final evaluation (`final.evaluate_final`, which takes the same arguments), then
    write report.md, summary.json, summary.csv and the plots; return report.md's path."""
    # the final evaluation trains (torch): loaded here, so that rendering alone never needs it
    from kdsearch.final import evaluate_final
    from kdsearch.selection import read_searched

    results = Path(results_dir)
    read_searched(results)  # the folder and its tables checked before final.json is written
    read_table(results / PROGRESS_FILE)
    read_run_if_any(results)
    final = evaluate_final(results, retrain=retrain, device=device, runner=runner,
                           inputs=inputs, objects=objects)
    _time_students(results, final, objects if inputs is None else inputs.objects)
    return _write(results, final)


def _time_students(results: Path, final: FinalRecord, objects: UserObjects | None) -> None:
    """Time the saved students on this machine's CPU, one thread, into latency.json.

    A report that retrained nothing keeps a latency.json that times every saved student, on
    whatever device and threads `kdsearch latency` used. Without saved students (every
    retraining diverged), or when a student cannot be loaded here, the report says "Not timed"
    and is written all the same."""
    from kdsearch.latency import measure, times_every
    from kdsearch.students import read_entries

    entries = read_entries(results)
    if not entries:
        (results / LATENCY_FILE).unlink(missing_ok=True)  # it would time students now gone
        return
    if final.retrained == 0 and times_every(results, entries):
        return
    try:
        measure(results, device="cpu", threads=1,
                student=objects.student if objects is not None else None)
    except UserError as e:
        (results / LATENCY_FILE).unlink(missing_ok=True)
        log.warning(f"latency: not timed: {one_line(e)}")
