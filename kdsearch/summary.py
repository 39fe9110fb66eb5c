"""summary.json and summary.csv: every number of the report, from final.json and the search's
own records (trials.csv, progress.csv, run.json), and the headline sentence.

report.md shows only these numbers, formatted by the functions here. No training, no torch.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

from kdsearch.config import max_epochs
from kdsearch.results import (BASELINE, DISTILLED, PHASES, incomplete_trials, phase_samples,
                              read_config, read_importances, read_run_if_any, search_state)
from kdsearch.stats import SIGNIFICANCE, adjust, compare, decide, unpack_correct
from kdsearch.tables import PROGRESS_FILE, TRIALS_FILE, read_table
from kdsearch.version import __version__

SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_FORMAT = 2  # 2: the seed test from exact counts, the test-set comparison, Holm


# --------------------------------------------------------------------------- formatting
# report.md shows only numbers formatted by these functions from summary.json's values.
def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{pct(mean)}%" if std is None else f"{pct(mean)} ± {pct(std)}%"


def points(diff: float | None) -> str:
    return "n/a" if diff is None else f"{100 * diff:+.2f}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    if p < 0.01:
        return f"{p:.1e}"
    text = f"{p:.2f}"
    # never round across the significance level: 0.0496 is not "0.05" beside "beats"
    if float(text) == SIGNIFICANCE or (float(text) < SIGNIFICANCE) != (p < SIGNIFICANCE):
        text = f"{p:.3g}"
    return text


def fmt_gap(g: float | None) -> str:
    return "n/a" if g is None else f"{100 * g:.0f}%"


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "n/a"
    return f"{r:,.0f}×" if r >= 10 else f"{r:.1f}×"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


# --------------------------------------------------------------------------- the summary
def _row_summary(row: dict[str, Any] | None, n_test: int | None) -> dict[str, Any]:
    if row is None:
        return {"width": None, "params": None, "tuned": None, "trial": None,
                "search_val_acc": None, "search_epochs": None, "settings": None, "accs": [],
                "correct": None, "errors": []}
    packed = row.get("test_correct")
    correct = None
    if packed is not None and n_test:
        correct = [unpack_correct(p, n_test) for p in packed if p is not None]
    # why a seed has no accuracy (older final.json: every one of them diverged)
    errors = row.get("errors") or [None if a is not None else "diverged"
                                   for a in row["test_accs"]]
    return {"width": row["width"], "params": row["params"], "tuned": row["tuned"],
            "trial": row["trial_id"], "search_val_acc": row["val_acc"],
            "search_epochs": row.get("search_epochs"),
            "settings": {**row["settings"], "alpha": row["alpha"], "epochs": row["epochs"]},
            "accs": [a for a in row["test_accs"] if a is not None], "correct": correct,
            "errors": [e for e in errors if e is not None]}


def comparison(d_row: dict[str, Any] | None, b_row: dict[str, Any] | None,
               teacher: dict[str, Any], n_test: int | None = None) -> dict[str, Any]:
    """One row of the report: a distilled setting against a baseline setting (`stats.compare`);
    `n_test`: the test split's size, which makes the accuracies exact counts."""
    d, b = _row_summary(d_row, n_test), _row_summary(b_row, n_test)
    out: dict[str, Any] = {"distilled_width": d["width"], "baseline_width": b["width"],
                           "distilled_params": d["params"], "baseline_params": b["params"],
                           "compression": (teacher["params"] / d["params"]
                                           if d["params"] and teacher["params"] else None),
                           "baseline_tuned": b["tuned"]}
    out.update(compare(d["accs"], b["accs"], teacher["test_acc"], n_test=n_test,
                       distilled_correct=d["correct"], baseline_correct=b["correct"]))
    out.update({"distilled_accs": d["accs"], "baseline_accs": b["accs"],
                # why the seeds missing from *_accs have no accuracy ("diverged", or a failure)
                "distilled_errors": d["errors"], "baseline_errors": b["errors"],
                "distilled_trial": d["trial"], "baseline_trial": b["trial"],
                "distilled_search_val_acc": d["search_val_acc"],
                "baseline_search_val_acc": b["search_val_acc"],
                "distilled_search_epochs": d["search_epochs"],
                "baseline_search_epochs": b["search_epochs"],
                "distilled_settings": d["settings"], "baseline_settings": b["settings"]})
    return out


def search_cost(cfg: Any, rows: list[dict[str, Any]], progress: list[dict[str, Any]],
                run: dict[str, Any]) -> dict[str, Any]:
    """What the search spent, per phase and in total (from trials.csv, progress.csv, run.json)."""
    phases: dict[str, Any] = {}
    search = search_state(run)  # both phases run side by side: one status, one wall time
    wall = float(search.get("wall_seconds") or 0.0)
    for phase in PHASES:
        on = phase == "distill" or cfg.search.baseline
        pr = [r for r in rows if r.get("phase") == phase]
        done = [r for r in pr if r.get("status") == "TERMINATED"]
        diverged = [r for r in done if int(r.get("diverged") or 0)]
        early = [r for r in done if int(r.get("stopped_early") or 0) and r not in diverged]
        epochs_rows = [r for r in progress if r.get("phase") == phase]
        trial_epochs = (len(epochs_rows) if progress else
                        sum(int(float(r.get("epochs") or 0)) for r in pr))
        phases[phase] = {
            "status": search.get("status", "not started") if on else "off",
            "planned": phase_samples(cfg, phase) if on else 0,
            "trials": len(pr),
            "full_budget": len(done) - len(diverged) - len(early),
            "stopped_early": len(early),
            "failed": sum(r.get("status") == "ERROR" for r in pr),
            "diverged": len(diverged),
            "incomplete": len(incomplete_trials(pr)),
            "trial_epochs": trial_epochs,
            "training_seconds": sum(float(r.get("training_seconds") or 0) for r in pr),
            "wall_seconds": wall}
    keys = ("planned", "trials", "full_budget", "stopped_early", "failed", "diverged",
            "incomplete", "trial_epochs", "training_seconds")
    total = {k: sum(p[k] for p in phases.values() if p["status"] != "off") for k in keys}
    total["wall_seconds"] = wall
    return {"phases": phases, "total": total, "hardware": run.get("hardware") or {},
            "max_concurrent_trials": run.get("max_concurrent_trials")}


def seed_phrase(c: dict[str, Any], *, holm: bool = False) -> str:
    """The seed test in words: its p-value, or why there is none."""
    n = min(c["distilled_n"], c["baseline_n"])
    seeds = f"{n} seed{'' if n == 1 else 's'}"
    note = c["seed_note"]
    if note == "too_few_seeds":
        return f"{seeds}: no seed test"
    if note == "no_spread":
        return f"the {seeds} of each side agree exactly: no seed test"
    p = fmt_p(c["p_value"]) + (f", Holm {fmt_p(c.get('p_value_holm'))}" if holm else "")
    agree = {"no_spread_distilled": "; the distilled seeds agree exactly",
             "no_spread_baseline": "; the baseline seeds agree exactly"}.get(note or "", "")
    return f"seeds: Welch p = {p}, {seeds}{agree}"


def fmt_ci(c: dict[str, Any]) -> str:
    """The test-set comparison's 95% interval of the difference, in points."""
    if c["test_ci_low"] is None:
        return "n/a"
    return f"{points(c['test_ci_low'])} to {points(c['test_ci_high'])}"


def test_phrase(c: dict[str, Any], *, holm: bool = False) -> str:
    """The test-set comparison in words."""
    if c["test_p_value"] is None:
        return ("no per-example test results for the test-set comparison"
                if c["test_note"] == "no_per_example_results" else "no test-set comparison")
    p = fmt_p(c["test_p_value"]) + (f", Holm {fmt_p(c.get('test_p_value_holm'))}" if holm
                                    else "")
    return (f"test set: 95% CI {fmt_ci(c)} points, p = {p} over {c['test_n']:,} examples, "
            f"{c['test_discordant']:,} scored differently")


def headline(best: dict[str, Any], widths: list[dict[str, Any]], teacher: dict[str, Any],
             student_model: str, baseline_note: str) -> str:
    """The sentence that opens report.md: the best distilled student against the best baseline
    (its own tests), then the widths where either side wins (Holm-adjusted over the widths)."""
    c = best
    student = (f"width-{c['distilled_width']} {student_model} "
               f"({c['distilled_params']:,} parameters)")
    base = "the tuned baseline" if c["baseline_tuned"] else "an untuned baseline"
    if c["baseline_width"] != c["distilled_width"]:
        base += f" (width {c['baseline_width']}, {c['baseline_params']:,} parameters)"
    verdict = c["verdict"]
    lead = {"beats": "Distillation beats the baseline",
            "not_significant": "Distillation does not beat the baseline significantly",
            "does_not_beat": ("The baseline beats distillation" if c["significant"]
                              else "Distillation does not beat the baseline"),
            "no_comparison": "No comparison: every retraining of the "
                             + ("distilled" if c["distilled_mean"] is None else "baseline")
                             + " setting diverged"}[verdict]
    s = f"{lead}: distilled {student} {pm(c['distilled_mean'], c['distilled_std'])} test " \
        f"accuracy vs {pm(c['baseline_mean'], c['baseline_std'])} for {base}"
    if verdict != "no_comparison":
        s += f" ({points(c['difference'])} points; {seed_phrase(c)}; {test_phrase(c)})"
    if teacher["test_acc"] is None:  # its logits came from a file: no model to test
        s += "; the teacher's logits came from a file (no teacher accuracy)."
    else:
        s += (f"; teacher {pct(teacher['test_acc'])}%; {fmt_ratio(c['compression'])} fewer "
              f"parameters than the teacher.")
    # the best student is often the widest, where a teacher helps least: say where it helps,
    # and where the baseline is significantly ahead (the widths' own comparisons, same width)
    others = [w for w in widths if (w["distilled_width"], w["baseline_width"])
              != (c["distilled_width"], c["baseline_width"])]
    n = len(widths)
    for words, group in (("Distillation beats the baseline at ",
                          [w for w in others if w["verdict"] == "beats"]),
                         ("The baseline beats distillation at ",
                          [w for w in others if w["verdict"] == "does_not_beat"
                           and w["significant"]])):
        if group:
            s += " " + words + ", ".join(
                f"width {w['distilled_width']} ({points(w['difference'])} points, "
                f"Holm-adjusted p = {fmt_p(w.get('p_value_holm'))} over seeds and "
                f"{fmt_p(w.get('test_p_value_holm'))} over the test set"
                + ("" if w["baseline_tuned"] else ", against an untuned baseline") + ")"
                for w in group) + f" ({n} widths compared)."
    if not c["baseline_tuned"] and baseline_note:
        s += f" Note: {baseline_note}."
    return s


def summarize(results_dir: Path, final: dict[str, Any]) -> dict[str, Any]:
    """summary.json's contents (without the plots) from final.json and the search's records."""
    cfg = read_config(results_dir)
    rows = read_table(results_dir / TRIALS_FILE)
    progress = read_table(results_dir / PROGRESS_FILE)
    run = read_run_if_any(results_dir)  # without it the cost table says "not started"
    teacher = final["teacher"]
    by_width: dict[int, dict[str, dict[str, Any]]] = {}
    best_rows: dict[str, dict[str, Any]] = {}
    for r in final["rows"]:
        by_width.setdefault(r["width"], {})[r["kind"]] = r
        if r["best"]:
            best_rows[r["kind"]] = r
    n_test = (final.get("data") or {}).get("test")
    widths = [comparison(k.get(DISTILLED), k.get(BASELINE), teacher, n_test)
              for _, k in sorted(by_width.items())]
    best = comparison(best_rows.get(DISTILLED), best_rows.get(BASELINE), teacher, n_test)
    best.update(decide(best))  # its own tests: the one comparison it makes
    adjust(widths)  # the widths are one family: Holm over them
    for w in widths:
        w.update(decide(w, family=len(widths)))
        # how much search stands behind each side of the row
        width = w["distilled_width"] or w["baseline_width"]
        for kind, phase in (("distilled", "distill"), ("baseline", "baseline")):
            ran = [r for r in rows if r.get("phase") == phase and r.get("status") == "TERMINATED"
                   and str(r.get("width") or cfg.student.width) == str(width)
                   and not int(r.get("diverged") or 0)]
            w[f"{kind}_trials"] = len(ran)
            w[f"{kind}_full_trials"] = sum(not int(r.get("stopped_early") or 0) for r in ran)
    unfinished = incomplete_trials(rows)
    expected = [p for p in PHASES if p == "distill" or cfg.search.baseline]
    status = search_state(run).get("status", "not started")
    open_phases = expected if status != "finished" else []
    return {
        "format": SUMMARY_FORMAT, "kdsearch_version": __version__, "name": cfg.name,
        "created": time.time(), "dataset": cfg.dataset.name,
        "teacher_model": cfg.teacher.model, "student_model": cfg.student.model,
        "headline": headline(best, widths, teacher, cfg.student.model, final["baseline_note"]),
        "complete": not unfinished and not open_phases,
        "incomplete_phases": open_phases,
        "incomplete_trials": [{"phase": r.get("phase"), "trial_id": r.get("trial_id"),
                               "status": r.get("status")} for r in unfinished],
        "failed_trials": [{"phase": r.get("phase"), "trial_id": r.get("trial_id"),
                           "kind": "diverged" if str(r.get("diverged") or "0") not in ("0", "")
                           else "error", "error": (r.get("error") or "")[:200]}
                          for r in rows if r.get("status") == "ERROR"
                          or str(r.get("diverged") or "0") not in ("0", "")],
        "epoch_budget": max_epochs(cfg),
        "per_width": cfg.search.per_width,
        "seeds": final["seeds"], "data": final["data"],
        "final_device": final["device"], "final_seconds": final["seconds"],
        "final_retrained": final["retrained"], "final_reused": final["reused"],
        "final_reused_training_seconds": final.get("reused_training_seconds"),
        "teacher": {"test_acc": teacher["test_acc"], "val_acc": teacher["val_acc"],
                    "params": teacher["params"]},
        "baseline_tuned": final["baseline_tuned"], "baseline_note": final["baseline_note"],
        "best": best, "widths": widths,
        "search": search_cost(cfg, rows, progress, run),
        "importances": read_importances(results_dir),
    }


# --------------------------------------------------------------------------- summary.csv
CSV_FIELDS = ("comparison", "distilled_width", "baseline_width", "distilled_params",
              "baseline_params", "compression", "baseline_tuned", "distilled_mean",
              "distilled_std", "distilled_n", "baseline_mean", "baseline_std", "baseline_n",
              "difference", "p_value", "p_value_holm", "seed_note", "test_ci_low",
              "test_ci_high", "test_p_value", "test_p_value_holm", "test_n", "test_discordant",
              "test_note", "gap_recovered", "teacher_acc", "verdict", "significant",
              "seeds_needed", "test_examples_needed", "distilled_accs", "baseline_accs",
              "distilled_trial", "baseline_trial")


def summary_csv(summary: dict[str, Any]) -> str:
    entries = [("best", summary["best"])] + [("width", w) for w in summary["widths"]]
    setting_cols: list[str] = []
    for _, c in entries:
        for kind in ("distilled", "baseline"):
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
        for kind in ("distilled", "baseline"):
            for k, v in (c[f"{kind}_settings"] or {}).items():
                if f"{kind}_{k}" not in CSV_FIELDS:
                    row[f"{kind}_{k}"] = v
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()
