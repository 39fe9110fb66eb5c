"""Results folder -> report.md, summary.json, summary.csv and PNG plots. No training here.

The test accuracies come from the final evaluation (final.json: each best setting retrained with
several seeds, tested once). `write_report` turns them and the search's own records (trials.csv,
progress.csv, run.json) into:

  report.md        a headline sentence first, then tables and the plots (relative links)
  summary.json     every number in report.md, unrounded (`summary`); report.md formats these
  summary.csv      the comparisons as a flat table, one row per comparison
  *.png            test accuracy vs student parameters, val_acc vs temperature and vs alpha,
                   best-so-far val_acc vs trial-epochs spent (`plots`)

`make_report` runs the final evaluation first (`final.evaluate_final`: training, torch), then
`write_report`. Rendering needs neither torch nor Ray. It works on a finished, an interrupted or
a resumed search, and on a folder copied elsewhere: nothing written names an absolute path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from kdsearch import files
from kdsearch.plots import PLOTS, write_plots
from kdsearch.results import (FINAL_FILE, PHASE_LABEL, PHASES, ReportError, read_final,
                              read_run_if_any, write_json)
from kdsearch.stats import SIGNIFICANCE
from kdsearch.summary import (SUMMARY_CSV, SUMMARY_JSON, fmt_ci, fmt_gap, fmt_p, fmt_ratio,
                              fmt_seconds, fmt_value, pct, pm, points, seed_phrase, summarize,
                              summary_csv, test_phrase)
from kdsearch.tables import PROGRESS_FILE, TRIALS_FILE, read_table

if TYPE_CHECKING:  # (annotations only: the final evaluation's types)
    from kdsearch.builders import Given
    from kdsearch.data import Dataset
    from kdsearch.retrain import Runner
    from kdsearch.teacher import Teacher

REPORT_FILE = "report.md"
# run.json's phase states as the cost table words them ("started": running, or killed)
_STATUS = {"finished": "finished", "started": "unfinished (interrupted?)",
           "not started": "not started"}


# --------------------------------------------------------------------------- report.md
def _table(header: Sequence[str], rows: list[Sequence[str]], align: str) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _setting_table(summary: dict[str, Any]) -> list[str]:
    entries = []
    for c in summary["widths"]:
        for kind in ("distilled", "baseline"):
            if c[f"{kind}_settings"] is None:
                continue
            label = "baseline (untuned)" if kind == "baseline" and not c["baseline_tuned"] \
                else kind
            if c[f"{kind}_width"] == summary["best"][f"{kind}_width"]:
                label += " **(best)**"
            entries.append((label, c, kind))
    dims: list[str] = []
    for _, c, kind in entries:
        for k in c[f"{kind}_settings"]:
            if k not in dims and k != "width":
                dims.append(k)
    header = ["setting", "width", *dims, "search trial", "search val acc (epoch)", "test acc"]
    rows = []
    for label, c, kind in entries:
        s = c[f"{kind}_settings"]
        rows.append([label, str(c[f"{kind}_width"]), *(fmt_value(s.get(d)) for d in dims),
                     f"`{c[f'{kind}_trial']}`" if c[f"{kind}_trial"] else "—",
                     f"{pct(c[f'{kind}_search_val_acc'])}% ({c[f'{kind}_search_epochs']})"
                     if c[f"{kind}_search_val_acc"] is not None else "—",
                     pm(c[f"{kind}_mean"], c[f"{kind}_std"])])
    return _table(header, rows, "lr" + "r" * (len(header) - 2))


def _p_pair(raw: float | None, adjusted: float | None) -> str:
    return "n/a" if raw is None else f"{fmt_p(raw)} ({fmt_p(adjusted)})"


def _seed_cell(c: dict[str, Any]) -> str:
    note = c["seed_note"]
    if note == "too_few_seeds":
        return "one seed"
    if note == "no_spread":
        return "no spread"
    cell = _p_pair(c["p_value"], c.get("p_value_holm"))
    return cell + {"no_spread_distilled": ", distilled: no spread",
                   "no_spread_baseline": ", baseline: no spread"}.get(note or "", "")


def _verdict_cell(c: dict[str, Any]) -> str:
    if c["verdict"] == "beats":
        return "distilled ahead"
    if c["verdict"] == "does_not_beat" and c["significant"]:
        return "baseline ahead"
    return "none" if c["verdict"] != "no_comparison" else "no comparison"


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
        label = PHASE_LABEL[g["phase"]] + ("" if g["width"] is None else f", width {g['width']}")
        if g["importances"]:
            cells = [fmt_gap(g["importances"].get(n)) if n in g["importances"] else "—"
                     for n in names]
        else:
            why = (f"too few trials (fewer than {importances['min_trials']})"
                   if g["trials"] < importances["min_trials"] else "one searched value")
            cells = [why] + [""] * (len(names) - 1) if names else [why]
        rows.append([label, str(g["trials"]), *cells])
    intro = [f"Optuna's importance of each searched value (`optuna.importance."
             f"get_param_importances`, PED-ANOVA) for the {importances['target']}, which every "
             f"trial that did not fail reached; each row rests on the trials it counts.", ""]
    header = ["trials of", "trials", *(names or ["importance"])]
    return intro + _table(header, rows, "lr" + "r" * max(1, len(names)))


def render(summary: dict[str, Any], plots: dict[str, dict[str, Any]]) -> str:
    """report.md: every number formatted from `summary` by the functions above."""
    s, t, data = summary, summary["teacher"], summary["data"] or {}
    seeds = s["seeds"]
    out = [f"**{s['headline']}**", ""]
    out += [f"kdsearch {s['kdsearch_version']} report for `{s['name']}`: {s['teacher_model']} "
            f"teacher, {s['student_model']} students, {s['dataset']}. Each setting below was "
            f"retrained from scratch with {len(seeds)} seeds ({', '.join(map(str, seeds))}) on "
            f"the training split ({data.get('train', 0):,} examples) for its full epoch budget "
            f"and evaluated once on the held-out test split ({data.get('test', 0):,} examples); "
            f"mean ± sample standard deviation over seeds. The search saw only the validation "
            f"split ({data.get('val', 0):,} examples).", "",
            f"A verdict that one side beats the other needs two tests to agree at p < "
            f"{SIGNIFICANCE:g}. Over seeds, Welch's t-test on the exact test counts (seeds "
            f"that land on the same count have no spread; when neither side has any there is "
            f"no seed test, and the verdict rests on the test set). Over the test examples, "
            f"the paired comparison of the seed-averaged correctness of each example (its 95% "
            f"interval, and the exact sign-flip test, McNemar's with one seed a side), since "
            f"the test split is a sample too. Per width, both p-values are adjusted with "
            f"Holm's method over the {len(s['widths'])} widths compared (raw, then adjusted); "
            f"the headline's best-vs-best comparison keeps its own. These weigh the seeds and "
            f"the test examples of the settings the search picked, not the search's own luck: "
            f"a search run again (another `search.seed`) may pick other settings.", ""]
    if not s["complete"]:
        parts = []
        if s["incomplete_phases"]:
            parts.append("phase " + ", ".join(f"`{p}`" for p in s["incomplete_phases"])
                         + " did not finish")
        if s["incomplete_trials"]:
            ids = ", ".join(f"`{r['trial_id']}` ({PHASE_LABEL.get(r['phase'], r['phase'])}, "
                            f"{r['status']})" for r in s["incomplete_trials"])
            parts.append(f"{len(s['incomplete_trials'])} trials did not finish: {ids}")
        out += [f"> **Incomplete search.** The search was interrupted: {'; '.join(parts)}. "
                f"This report uses the finished trials only; continue the search with "
                f"`kdsearch resume` on this folder and report again.", ""]
    if not s["baseline_tuned"]:
        note = s["baseline_note"] or "the baseline was not tuned"
        out += [f"> **{note[0].upper()}{note[1:]}.** For a comparison, the baseline was trained "
                f"at the distilled setting's learning rate (and its other non-distillation "
                f"values) with alpha = 1; it is labelled \"untuned\".", ""]

    out += ["## Test accuracy by student width", ""]
    rows = []
    for c in s["widths"]:
        base = pm(c["baseline_mean"], c["baseline_std"])
        if c["baseline_tuned"] is False:
            base += " (untuned)"
        searched = " / ".join(f"{c.get(f'{k}_trials', 0)} ({c.get(f'{k}_full_trials', 0)})"
                              for k in ("distilled", "baseline"))
        rows.append([str(c["distilled_width"] or c["baseline_width"]),
                     f"{(c['distilled_params'] or c['baseline_params']):,}",
                     fmt_ratio(c["compression"]), pm(c["distilled_mean"], c["distilled_std"]),
                     base, points(c["difference"]), _seed_cell(c), fmt_ci(c),
                     _p_pair(c["test_p_value"], c.get("test_p_value_holm")), _verdict_cell(c),
                     fmt_gap(c["gap_recovered"]), searched])
    out += _table(["width", "parameters", "compression", "distilled", "baseline",
                   "difference (points)", "seeds: Welch p (Holm)", "test set: 95% CI (points)",
                   "test set: p (Holm)", "verdict", "gap recovered",
                   "trials: distilled / baseline (full budget)"], rows, "rrrllrrrrlrr")
    unsettled = [c for c in s["widths"] if c.get("advice")]
    if unsettled:
        out += ["", f"What would settle the rows without a verdict (from the spreads seen, for "
                    f"80% power at the strictest level Holm's method asks of a width, "
                    f"{SIGNIFICANCE:g} / {len(s['widths'])}):", ""]
        out += [f"- width {c['distilled_width'] or c['baseline_width']}: "
                + "; ".join(c["advice"]) + "." for c in unsettled]
    budget = s.get("epoch_budget")

    def stopped_early(c: dict[str, Any], kind: str) -> bool:
        # the trial's own budget: `epochs` may be searched, and a 5-epoch trial that ran 5 is whole
        own = (c.get(f"{kind}_settings") or {}).get("epochs") or budget
        return bool(c.get(f"{kind}_trial")) and (c.get(f"{kind}_search_epochs") or own) < own

    thin = [str(c["distilled_width"] or c["baseline_width"]) for c in s["widths"]
            if budget and any(stopped_early(c, k) for k in ("distilled", "baseline"))]
    if thin:
        out += ["", f"Caution: at width{'s' if len(thin) > 1 else ''} {', '.join(thin)} the "
                    f"best setting of one kind comes from "
                    f"a trial ASHA stopped early (no trial of that kind ran its full epoch "
                    f"budget there), so that row compares less-tuned settings. "
                    + ("For a fair row, give that width more trials (search.num_samples), or "
                       "search it alone (that width only in `search.space.width`)."
                       if s.get("per_width") or len(s["widths"]) == 1 else
                       "The searcher spent its budget on other widths: set "
                       "`search.per_width: true` to give every width an equal share.")]
    if t["params"] is None:  # teacher.logits: no model here
        out += ["", f"Teacher ({s['teacher_model']}): its logits on the training split came "
                    f"from a file (`teacher.logits`), so there is no teacher accuracy, "
                    f"compression or gap recovered.", ""]
    else:
        out += ["", f"Teacher ({s['teacher_model']}, {t['params']:,} parameters): "
                    f"{pct(t['test_acc'])}% test accuracy, {pct(t['val_acc'])}% validation. "
                    f"Compression = teacher parameters / student parameters; gap recovered = "
                    f"(distilled − baseline) / (teacher − baseline).", ""]
    b = s["best"]
    if b["distilled_width"] != b["baseline_width"]:
        out += [f"Best overall: distilled width {b['distilled_width']} "
                f"{pm(b['distilled_mean'], b['distilled_std'])} vs baseline width "
                f"{b['baseline_width']} {pm(b['baseline_mean'], b['baseline_std'])} "
                f"({points(b['difference'])} points; {seed_phrase(b)}; {test_phrase(b)}).",
                ""]
    out += ["Per-seed test accuracies (%):", ""]
    n_seeds = len(s.get("seeds") or [])
    for c in s["widths"]:
        for kind in ("distilled", "baseline"):
            accs = c[f"{kind}_accs"]
            if c[f"{kind}_width"] is None or not (accs or n_seeds):
                continue
            text = ", ".join(pct(a) for a in accs) if accs else "none"
            errors = c.get(f"{kind}_errors") or ["diverged"] * (n_seeds - len(accs))
            why = [f"{errors.count('diverged')} of {n_seeds} seeds diverged"]
            why += [f"1 of {n_seeds} seeds failed ({e})" for e in errors if e != "diverged"]
            if errors:
                text += " (" + "; ".join(w for w in why if not w.startswith("0 of")) + ")"
            out.append(f"- width {c[f'{kind}_width']}, {kind}: {text}")
    out += ["", "## Best hyperparameters", "",
            "The best trial of each kind at each width (full-budget trials first, then final "
            "validation accuracy; equal accuracies by the lower validation loss), as retrained.",
            ""]
    out += _setting_table(s)

    cost = s["search"]
    ph, tot = cost["phases"], cost["total"]
    cols = [p for p in PHASES if ph[p]["status"] != "off"]

    def line(name: str, f: Any) -> list[str]:
        return [name, *(f(ph[p]) for p in cols), f(tot)]

    out += ["", "## What the search cost", ""]
    out += _table(["", *(PHASE_LABEL[p] for p in cols), "total"], [
        line("trials run / planned", lambda x: f"{x['trials']} / {x['planned']}"),
        line("ran the full epoch budget", lambda x: str(x["full_budget"])),
        line("stopped early by ASHA", lambda x: str(x["stopped_early"])),
        line("failed / diverged", lambda x: f"{x['failed']} / {x['diverged']}"),
        line("incomplete (interrupted)", lambda x: str(x["incomplete"])),
        line("trial-epochs", lambda x: f"{x['trial_epochs']:,}"),
        line("training time (sum over trials)", lambda x: fmt_seconds(x["training_seconds"])),
        ["wall time (the phases run side by side)", *("" for _ in cols),
         fmt_seconds(tot["wall_seconds"])],
        ["phase status", *(_STATUS.get(ph[p]["status"], ph[p]["status"]) for p in cols),
         "complete" if s["complete"] else "incomplete"]], "l" + "r" * (len(cols) + 1))
    hw = cost["hardware"]
    if hw:
        out += ["", f"Hardware: {hw.get('cpus', 0):g} CPUs, {hw.get('gpus', 0):g} GPUs, "
                    f"{hw.get('nodes', 1)} node(s); driver {hw.get('driver', '?')}; torch "
                    f"{hw.get('torch', '?')}; up to {cost.get('max_concurrent_trials')} trials "
                    f"at once."]
    reused = ""
    if s["final_reused"]:
        reused = f"{s['final_reused']} settings reused from an earlier `{FINAL_FILE}`"
        if s.get("final_reused_training_seconds"):
            reused += (f" (trained then in {fmt_seconds(s['final_reused_training_seconds'])}, "
                       f"summed over seeds)")
    if s.get("failed_trials"):
        out += ["", "Failed trials (the search went on without them):", ""]
        out += [f"- {r['phase']} `{r['trial_id']}` {r['kind']}: {r['error'] or 'no message'}"
                for r in s["failed_trials"]]
    if s["final_retrained"] or not reused:
        out += ["", f"Final evaluation: {s['final_retrained']} retrainings on "
                    f"{s['final_device']} in {fmt_seconds(s['final_seconds'])}"
                    f"{'; ' + reused if reused else ''}."]
    else:  # nothing retrained: a report of retrainings done before
        out += ["", f"Final evaluation: all {reused} on {s['final_device']}."]

    out += ["", "## What mattered", ""] + importance_table(s.get("importances"))
    out += ["", "## Plots", ""]
    for name, rec in plots.items():
        out += [f"![{rec['title']}]({name})", ""]
    missing = [n for n in PLOTS if n not in plots]
    if missing:
        out += ["Not drawn (no data: the dimension was not searched or no trial finished): "
                + ", ".join(f"`{m}`" for m in missing) + ".", ""]
    out += ["## Files", "",
            f"`{SUMMARY_JSON}` and `{SUMMARY_CSV}` hold the numbers above unrounded; "
            f"`{FINAL_FILE}` every retraining; `{TRIALS_FILE}` every trial of the search "
            f"(distilled and baseline); `{PROGRESS_FILE}` every epoch they reported; "
            f"`optuna.db` the Optuna studies; `importances.json` what mattered; `config.yaml` "
            f"the resolved config; `students/` the trained students of the retrainings (a "
            f"state_dict each, `students/index.json` lists them with their test accuracy; "
            f"`kdsearch.load_student(\"results/{summary['name']}\")` rebuilds the best distilled "
            f"one).", ""]
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


def _write(results: Path, final: dict[str, Any]) -> Path:
    summary = summarize(results, final)
    plots = write_plots(results, final)
    summary["plots"] = plots
    # everything rendered before anything is written: a failure leaves the three files as they were
    table, text = summary_csv(summary), render(summary, plots)
    write_json(results / SUMMARY_JSON, summary)
    files.write_text(results / SUMMARY_CSV, table)
    path = results / REPORT_FILE
    files.write_text(path, text)
    return path


def make_report(results_dir: str | os.PathLike[str], *, retrain: bool = True,
                device: str = "auto", quiet: bool = False, runner: Runner | None = None,
                loaded: tuple[Dataset, Teacher] | None = None, given: Given | None = None
                ) -> Path:
    """Run the final evaluation, then write report.md, summary.json, summary.csv and the plots;
    return report.md's path.

    With `retrain` every best setting is retrained; with `retrain=False` the rows of an
    up-to-date final.json are reused as they are and only what changed is trained. `runner`
    trains the models (default: one after the other in this process); `loaded` hands over the
    dataset and teacher a search already holds (see `final.evaluate_final`); `given` the
    objects run_search was given in place of the space file's names.
    """
    # the final evaluation trains (torch): loaded here, so that rendering alone never needs it
    from kdsearch.final import evaluate_final, read_searched

    results = Path(results_dir)
    read_searched(results)  # the folder and its tables checked before final.json is written
    read_table(results / PROGRESS_FILE)
    read_run_if_any(results)
    final = evaluate_final(results, retrain=retrain, device=device, quiet=quiet,
                           runner=runner, loaded=loaded, given=given)
    return _write(results, final)
