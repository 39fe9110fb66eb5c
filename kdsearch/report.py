"""Results folder -> report.md, summary.json, summary.csv and PNG plots. No training here.

The test accuracies come from `final.py` (final.json: each best setting retrained with several
seeds, tested once). This module turns them and the search's own records (trials.csv,
progress.csv, run.json) into:

  report.md        a headline sentence first, then tables and the plots (relative links)
  summary.json     every number in report.md, unrounded; report.md formats these same values
  summary.csv      the comparisons as a flat table, one row per comparison
  *.png            test accuracy vs student parameters, val_acc vs temperature and vs alpha,
                   best-so-far val_acc vs trial-epochs spent

It works on a finished, an interrupted or a resumed search, and on a folder copied elsewhere:
nothing written names an absolute path.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from kdsearch import __version__, files
from kdsearch.config import max_epochs
from kdsearch.final import (BASELINE, DISTILLED, FINAL_FILE, Runner,
                            evaluate_final, incomplete_trials, mean_std,
                            read_config, read_searched, row_width, write_json)
from kdsearch.search import (PHASE_LABEL, PHASES, PROGRESS_FILE, RUN_FILE, TRIALS_FILE,
                             check_run, phase_samples, search_state)
from kdsearch.tables import read_table

if TYPE_CHECKING:
    from kdsearch.data import Dataset
    from kdsearch.teacher import Teacher

REPORT_FILE = "report.md"
SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_FORMAT = 1
SIGNIFICANCE = 0.05  # the p-value below which the headline says distillation beats the baseline
PLOT_TEST_ACC = "test_acc_vs_params.png"
PLOT_TEMPERATURE = "val_acc_vs_temperature.png"
PLOT_ALPHA = "val_acc_vs_alpha.png"
PLOT_BEST_SO_FAR = "best_val_acc_vs_trial_epochs.png"
# run.json's phase states as the cost table words them ("started": running, or killed)
_STATUS = {"finished": "finished", "started": "unfinished (interrupted?)",
           "not started": "not started"}


# --------------------------------------------------------------------------- statistics
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
def _row_summary(row: dict[str, Any] | None) -> dict[str, Any]:
    if row is None:
        return {"width": None, "params": None, "tuned": None, "trial": None,
                "search_val_acc": None, "search_epochs": None, "settings": None, "accs": []}
    return {"width": row["width"], "params": row["params"], "tuned": row["tuned"],
            "trial": row["trial_id"], "search_val_acc": row["val_acc"],
            "search_epochs": row.get("search_epochs"),
            "settings": {**row["settings"], "alpha": row["alpha"], "epochs": row["epochs"]},
            "accs": [a for a in row["test_accs"] if a is not None]}


def comparison(d_row: dict[str, Any] | None, b_row: dict[str, Any] | None,
               teacher: dict[str, Any]) -> dict[str, Any]:
    d, b = _row_summary(d_row), _row_summary(b_row)
    out: dict[str, Any] = {"distilled_width": d["width"], "baseline_width": b["width"],
                           "distilled_params": d["params"], "baseline_params": b["params"],
                           "compression": (teacher["params"] / d["params"]
                                           if d["params"] else None),
                           "baseline_tuned": b["tuned"]}
    out.update(compare(d["accs"], b["accs"], teacher["test_acc"]))
    out.update({"distilled_accs": d["accs"], "baseline_accs": b["accs"],
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


def _headline(best: dict[str, Any], widths: list[dict[str, Any]], teacher: dict[str, Any],
              student_model: str, baseline_note: str) -> str:
    c = best
    student = (f"width-{c['distilled_width']} {student_model} "
               f"({c['distilled_params']:,} parameters)")
    base = "the tuned baseline" if c["baseline_tuned"] else "an untuned baseline"
    if c["baseline_width"] != c["distilled_width"]:
        base += f" (width {c['baseline_width']}, {c['baseline_params']:,} parameters)"
    lead = {"beats": "Distillation beats the baseline",
            "not_significant": "Distillation does not beat the baseline significantly",
            "does_not_beat": "Distillation does not beat the baseline",
            "no_comparison": "No comparison: every retraining of the "
                             + ("distilled" if c["distilled_mean"] is None else "baseline")
                             + " setting diverged"}[verdict(c)]
    n = min(c["distilled_n"], c["baseline_n"])
    s = (f"{lead}: distilled {student} {pm(c['distilled_mean'], c['distilled_std'])} test "
         f"accuracy vs {pm(c['baseline_mean'], c['baseline_std'])} for {base} "
         f"({points(c['difference'])} points, Welch p = {fmt_p(c['p_value'])}, "
         f"{n} seed{'' if n == 1 else 's'}); "
         f"teacher {pct(teacher['test_acc'])}%; {fmt_ratio(c['compression'])} fewer parameters "
         f"than the teacher.")
    # the best student is often the widest, where a teacher helps least: say where it helps,
    # and where the baseline is significantly ahead (the widths' own comparisons, same width)
    others = [w for w in widths if (w["distilled_width"], w["baseline_width"])
              != (c["distilled_width"], c["baseline_width"])]
    losses = [w for w in others if verdict(w) == "does_not_beat" and w["difference"] < 0
              and w["p_value"] is not None and w["p_value"] < SIGNIFICANCE]
    for words, group in (("Distillation beats the baseline at ",
                          [w for w in others if verdict(w) == "beats"]),
                         ("The baseline beats distillation at ", losses)):
        if group:
            s += " " + words + ", ".join(
                f"width {w['distilled_width']} ({points(w['difference'])} points, "
                f"p = {fmt_p(w['p_value'])}"
                + ("" if w["baseline_tuned"] else ", against an untuned baseline") + ")"
                for w in group) + "."
    if not c["baseline_tuned"] and baseline_note:
        s += f" Note: {baseline_note}."
    return s


def summarize(results_dir: Path, final: dict[str, Any]) -> dict[str, Any]:
    """summary.json's contents (without the plots) from final.json and the search's records."""
    cfg = read_config(results_dir)
    rows = read_table(results_dir / TRIALS_FILE)
    progress = read_table(results_dir / PROGRESS_FILE)
    run = _read_run(results_dir)
    teacher = final["teacher"]
    by_width: dict[int, dict[str, dict[str, Any]]] = {}
    best_rows: dict[str, dict[str, Any]] = {}
    for r in final["rows"]:
        by_width.setdefault(r["width"], {})[r["kind"]] = r
        if r["best"]:
            best_rows[r["kind"]] = r
    widths = [comparison(k.get(DISTILLED), k.get(BASELINE), teacher)
              for _, k in sorted(by_width.items())]
    best = comparison(best_rows.get(DISTILLED), best_rows.get(BASELINE), teacher)
    best["verdict"] = verdict(best)
    for w in widths:
        w["verdict"] = verdict(w)
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
        "headline": _headline(best, widths, teacher, cfg.student.model, final["baseline_note"]),
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
    }


def _read_run(results_dir: Path) -> dict[str, Any]:
    try:
        run = json.loads((results_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}  # the report still has trials.csv; the cost table says "not started"
    return check_run(run, results_dir / RUN_FILE)


# --------------------------------------------------------------------------- summary.csv
CSV_FIELDS = ("comparison", "distilled_width", "baseline_width", "distilled_params",
              "baseline_params", "compression", "baseline_tuned", "distilled_mean",
              "distilled_std", "distilled_n", "baseline_mean", "baseline_std", "baseline_n",
              "difference", "p_value", "gap_recovered", "teacher_acc", "verdict",
              "distilled_accs", "baseline_accs", "distilled_trial", "baseline_trial")


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


# --------------------------------------------------------------------------- plots
def _series(ax: Any) -> dict[str, int]:
    """The labelled series drawn on `ax` and how many points each has (read from the artists)."""
    from matplotlib.collections import PathCollection
    from matplotlib.container import ErrorbarContainer
    from matplotlib.lines import Line2D

    out: dict[str, int] = {}
    for handle, label in zip(*ax.get_legend_handles_labels()):
        if isinstance(handle, ErrorbarContainer):
            n = len(handle.lines[0].get_xydata())
        elif isinstance(handle, PathCollection):
            n = len(handle.get_offsets())
        elif isinstance(handle, Line2D):
            n = len(handle.get_xydata())
        else:
            n = 0
        out[label] = n
    return out


def _figure() -> tuple[Any, Any]:
    # the Agg canvas directly, not pyplot: no global backend switch, no GUI, thread-safe
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig: Any, ax: Any, path: Path, title: str) -> dict[str, Any]:
    ax.legend(fontsize=8)
    fig.tight_layout()
    files.write_atomic(path, lambda f: fig.savefig(f, format="png"))
    return {"file": path.name, "title": title, "xlabel": ax.get_xlabel(),
            "ylabel": ax.get_ylabel(), "series": _series(ax)}


def plot_test_acc(final: dict[str, Any], path: Path) -> dict[str, Any]:
    fig, ax = _figure()
    groups = [(DISTILLED, True, "distilled", "o", 0.97),
              (BASELINE, True, "baseline", "s", 1.03),
              (BASELINE, False, "baseline (untuned)", "^", 1.03)]
    for kind, tuned, label, marker, shift in groups:
        rs = sorted((r for r in final["rows"] if r["kind"] == kind and r["tuned"] == tuned
                     and r["mean"] is not None), key=lambda r: r["params"])
        if not rs:
            continue
        # a small multiplicative shift keeps the two kinds' error bars apart on the log axis
        ax.errorbar([r["params"] * shift for r in rs], [100 * r["mean"] for r in rs],
                    yerr=[100 * (r["std"] or 0.0) for r in rs], marker=marker, capsize=3,
                    label=label)
    t = final["teacher"]
    ax.axhline(100 * t["test_acc"], color="grey", linestyle="--",
               label=f"teacher ({t['params']:,} parameters)")
    ax.set_xscale("log")
    from matplotlib.ticker import NullLocator

    sizes = sorted({(r["params"], r["width"]) for r in final["rows"]})
    ax.set_xticks([p for p, _ in sizes], labels=[f"{p:,}\nwidth {w}" for p, w in sizes],
                  fontsize=8)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("student parameters")
    ax.set_ylabel("test accuracy (%)")
    title = f"Test accuracy vs student size (mean ± std, {len(final['seeds'])} seeds)"
    ax.set_title(title, fontsize=10)
    return _save(fig, ax, path, title)


def _finished(rows: list[dict[str, Any]], phase: str) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("phase") == phase and r.get("status") == "TERMINATED"
            and not int(r.get("diverged") or 0) and r.get("val_acc") not in (None, "")]


def plot_val_acc_vs(dim: str, cfg: Any, rows: list[dict[str, Any]], path: Path
                    ) -> dict[str, Any] | None:
    """val_acc of the finished distillation trials against `dim`, one colour per width."""
    spec = next((d for d in cfg.search.space if d.name == dim), None)
    pts = [r for r in _finished(rows, "distill") if r.get(dim) not in (None, "")]
    if spec is None or not pts:
        return None
    fig, ax = _figure()
    widths = sorted({row_width(r, cfg) for r in pts})
    colours = [f"C{i % 10}" for i in range(len(widths))]
    for w, colour in zip(widths, colours):
        rs = [r for r in pts if row_width(r, cfg) == w]
        faces = ["none" if int(r.get("stopped_early") or 0) else colour for r in rs]
        ax.scatter([float(r[dim]) for r in rs], [100 * float(r["val_acc"]) for r in rs],
                   facecolors=faces, edgecolors=colour, label=f"width {w}")
    if spec.distribution == "loguniform":
        from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(dim)
    ax.set_ylabel("validation accuracy (%), last epoch")
    title = f"Distillation trials: val_acc vs {dim} (hollow: stopped early by ASHA)"
    ax.set_title(title, fontsize=10)
    return _save(fig, ax, path, title)


def plot_best_so_far(progress: list[dict[str, Any]], path: Path) -> dict[str, Any] | None:
    """Running best val_acc against trial-epochs spent, in the order the epochs arrived."""
    if not progress:
        return None
    fig, ax = _figure()
    for phase in PHASES:
        xs, ys, best, n = [], [], -math.inf, 0
        for r in progress:
            if r.get("phase") != phase or r.get("val_acc") in (None, ""):
                continue
            n += 1
            acc = float(r["val_acc"])
            if math.isfinite(acc) and acc > best:
                best = acc
            xs.append(n)
            ys.append(100 * best)
        if xs:
            ax.step(xs, ys, where="post", label=PHASE_LABEL[phase])
    ax.set_xlabel("trial-epochs spent")
    ax.set_ylabel("best validation accuracy so far (%)")
    title = "Search progress: best val_acc vs trial-epochs"
    ax.set_title(title, fontsize=10)
    return _save(fig, ax, path, title)


def write_plots(results_dir: Path, final: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Draw every plot that has data; return {file: what was drawn} (series and point counts)."""
    cfg = read_config(results_dir)
    rows = read_table(results_dir / TRIALS_FILE)
    progress = read_table(results_dir / PROGRESS_FILE)
    drawn = {PLOT_TEST_ACC: plot_test_acc(final, results_dir / PLOT_TEST_ACC),
             PLOT_TEMPERATURE: plot_val_acc_vs("temperature", cfg, rows,
                                               results_dir / PLOT_TEMPERATURE),
             PLOT_ALPHA: plot_val_acc_vs("alpha", cfg, rows, results_dir / PLOT_ALPHA),
             PLOT_BEST_SO_FAR: plot_best_so_far(progress, results_dir / PLOT_BEST_SO_FAR)}
    for name, rec in drawn.items():
        if rec is None:  # a plot of an earlier report that no longer has data
            (results_dir / name).unlink(missing_ok=True)
    return {k: v for k, v in drawn.items() if v is not None}


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
            f"split ({data.get('val', 0):,} examples). Welch's p weighs the spread over these "
            f"seeds of the settings the search picked, not the search's own luck: a search "
            f"run again (another `search.seed`) may pick other settings, so a verdict near "
            f"p = 0.05 on a small validation split can turn.", ""]
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
                     base, points(c["difference"]), fmt_p(c["p_value"]),
                     fmt_gap(c["gap_recovered"]), searched])
    out += _table(["width", "parameters", "compression", "distilled", "baseline",
                   "difference (points)", "Welch p", "gap recovered",
                   "trials: distilled / baseline (full budget)"], rows, "rrrllrrrr")
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
    out += ["", f"Teacher ({s['teacher_model']}, {t['params']:,} parameters): "
                f"{pct(t['test_acc'])}% test accuracy, {pct(t['val_acc'])}% validation. "
                f"Compression = teacher parameters / student parameters; gap recovered = "
                f"(distilled − baseline) / (teacher − baseline).", ""]
    b = s["best"]
    if b["distilled_width"] != b["baseline_width"]:
        out += [f"Best overall: distilled width {b['distilled_width']} "
                f"{pm(b['distilled_mean'], b['distilled_std'])} vs baseline width "
                f"{b['baseline_width']} {pm(b['baseline_mean'], b['baseline_std'])} "
                f"({points(b['difference'])} points, Welch p = {fmt_p(b['p_value'])}).", ""]
    out += ["Per-seed test accuracies (%):", ""]
    n_seeds = len(s.get("seeds") or [])
    for c in s["widths"]:
        for kind in ("distilled", "baseline"):
            accs = c[f"{kind}_accs"]
            if c[f"{kind}_width"] is None or not (accs or n_seeds):
                continue
            lost = n_seeds - len(accs)  # a retraining whose loss diverged has no accuracy
            text = ", ".join(pct(a) for a in accs) if accs else "none"
            if lost > 0:
                text += f" ({lost} of {n_seeds} seeds diverged)"
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

    out += ["", "## Plots", ""]
    for name, rec in plots.items():
        out += [f"![{rec['title']}]({name})", ""]
    missing = [n for n in (PLOT_TEST_ACC, PLOT_TEMPERATURE, PLOT_ALPHA, PLOT_BEST_SO_FAR)
               if n not in plots]
    if missing:
        out += ["Not drawn (no data: the dimension was not searched or no trial finished): "
                + ", ".join(f"`{m}`" for m in missing) + ".", ""]
    out += ["## Files", "",
            f"`{SUMMARY_JSON}` and `{SUMMARY_CSV}` hold the numbers above unrounded; "
            f"`{FINAL_FILE}` every retraining; `{TRIALS_FILE}` every trial of the search "
            f"(distilled and baseline); `{PROGRESS_FILE}` every epoch they reported; "
            f"`optuna.db` the Optuna studies; `config.yaml` the resolved config.", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- entry point
def make_report(results_dir: str | os.PathLike[str], *, retrain: bool = True,
                device: str = "auto", quiet: bool = False, runner: Runner | None = None,
                loaded: "tuple[Dataset, Teacher] | None" = None) -> Path:
    """Write report.md, summary.json, summary.csv and the plots; return report.md's path.

    Runs the final evaluation (final.py) first when `retrain` is true or final.json is missing
    or out of date; with `retrain=False` an up-to-date final.json is reused as it is. `runner`
    trains its models (default: one after the other in this process); `loaded` hands over the
    dataset and teacher a search already holds (see `evaluate_final`).
    """
    results = Path(results_dir)
    read_searched(results)  # the folder and its tables checked before final.json is written
    read_table(results / PROGRESS_FILE)
    _read_run(results)
    final = evaluate_final(results, retrain=retrain, device=device, quiet=quiet,
                           runner=runner, loaded=loaded)
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
