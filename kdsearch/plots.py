"""The report's plots, as PNG files in the results folder: test accuracy against student size
and against latency (the front), val_acc against temperature and against alpha, and the
search's best val_acc so far.

Each function returns what it drew (title, axes, the series and their point counts), which
summary.json keeps. matplotlib's Agg canvas directly, never pyplot: no global backend switch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kdsearch import files
from kdsearch.answer import Side
from kdsearch.config import ExperimentConfig
from kdsearch.results import read_config, read_importances, row_width
from kdsearch.summary import Summary
from kdsearch.tables import (BASELINE, DISTILLED, KINDS, PHASE, PROGRESS_FILE, TRIALS_FILE,
                             TrialRow, kind_of, read_table, read_trials)

PLOT_TEST_ACC = "test_acc_vs_params.png"
PLOT_LATENCY = "test_acc_vs_latency.png"
PLOT_TEMPERATURE = "val_acc_vs_temperature.png"
PLOT_ALPHA = "val_acc_vs_alpha.png"
PLOT_BEST_SO_FAR = "best_val_acc_vs_trial_epochs.png"
PLOT_IMPORTANCE = "importance.png"
PLOTS = (PLOT_TEST_ACC, PLOT_LATENCY, PLOT_TEMPERATURE, PLOT_ALPHA, PLOT_BEST_SO_FAR,
         PLOT_IMPORTANCE)


def _series(ax: Any) -> dict[str, int]:
    """The labelled series drawn on `ax` and how many points each has (read from the artists)."""
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer, ErrorbarContainer
    from matplotlib.lines import Line2D

    out: dict[str, int] = {}
    for handle, label in zip(*ax.get_legend_handles_labels()):
        if isinstance(handle, ErrorbarContainer):
            n = len(handle.lines[0].get_xydata())
        elif isinstance(handle, PathCollection):
            n = len(handle.get_offsets())
        elif isinstance(handle, Line2D):
            n = len(handle.get_xydata())
        elif isinstance(handle, BarContainer):
            n = len(handle.patches)
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


_SERIES = [(DISTILLED, True, "distilled", "o", 0.97),
           (BASELINE, True, "alone (baseline)", "s", 1.03),
           (BASELINE, False, "alone, untuned", "^", 1.03)]


def _front(summary: Summary, path: Path, *, x: str) -> dict[str, Any] | None:
    """Test accuracy (mean, bar: the 95% bound below and as far above) of each retrained
    student against its parameters (`x` "params") or its latency ("latency"), both kinds, the
    teacher's and the target's lines, the answer circled."""
    from matplotlib.ticker import NullLocator

    def where(side: Side) -> float | None:
        if x == "params":
            return float(side.params) if side.params else None
        return side.latency.batch1_ms if side.latency else None

    sides = [side for c in summary.widths for side in (c.distilled, c.baseline)
             if side.mean is not None and where(side) is not None]
    if not sides:
        return None
    fig, ax = _figure()
    for kind, tuned, label, marker, shift in _SERIES:
        mine = sorted((s for s in sides if s.kind == kind and bool(s.tuned) == tuned),
                      key=lambda s: (s.params or 0, s.width or 0))  # joined in width order
        if x == "latency":
            shift = 1.0  # (a latency is measured, not a size shared by both kinds)
        if not mine:
            continue
        # no bar where there is no bound (one seed): the title promises 95% bounds
        half = [100 * (s.bound.half_width if s.bound and s.bound.half_width is not None
                       else 0.0) for s in mine]
        # a small multiplicative shift keeps the two kinds' bars apart on the log axis
        ax.errorbar([(where(s) or 0.0) * shift for s in mine],
                    [100 * (s.mean or 0.0) for s in mine],
                    yerr=half, marker=marker, capsize=3, label=label)
    a, t = summary.answer, summary.final.teacher
    if t is not None and t.test_acc is not None and t.params is not None:
        ax.axhline(100 * t.test_acc, color="grey", linestyle="--",
                   label=f"teacher ({t.params:,} parameters)")
    if a.needed is not None:
        ax.axhline(100 * a.needed, color="C3", linestyle=":",
                   label=f"target ({100 * a.needed:.2f}%)")
    for side, shift in ((a.distilled, 0.97), (a.baseline, 1.03)):
        if side is not None and where(side) is not None:
            shift = shift if x == "params" else 1.0
            ax.scatter([(where(side) or 0.0) * shift], [100 * (side.mean or 0.0)], s=250,
                       facecolors="none", edgecolors="C3", linewidths=1.5)
    spread = [where(s) or 0.0 for s in sides]
    if x == "params" or max(spread) > 10 * min(spread):
        ax.set_xscale("log")
    if x == "params":
        sizes = sorted({(s.params, s.width) for s in sides})
        ax.set_xticks([float(p or 0) for p, _ in sizes],
                      labels=[f"{p:,}\nwidth {w}" for p, w in sizes], fontsize=8)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("student parameters")
    else:
        ax.set_xlabel(f"latency of one example (ms, {summary.latency.device if summary.latency else ''})")
    ax.set_ylabel("test accuracy (%)")
    what = "size" if x == "params" else "latency"
    title = (f"Test accuracy vs student {what} ({len(summary.seeds)} seeds; bars: 95% bound; "
             f"circled: the answer)")
    ax.set_title(title, fontsize=9)
    return _save(fig, ax, path, title)


def plot_val_acc_vs(dim: str, cfg: ExperimentConfig, rows: list[TrialRow], path: Path
                    ) -> dict[str, Any] | None:
    """val_acc of the distillation trials that ended well against `dim`, a colour per width."""
    spec = next((d for d in cfg.search.space if d.name == dim), None)
    pts = [r for r in rows if r.kind == DISTILLED and r.ended_ok and r.value(dim) is not None]
    if spec is None or not pts:
        return None
    fig, ax = _figure()
    widths = sorted({row_width(r, cfg) or 0 for r in pts})
    colours = [f"C{i % 10}" for i in range(len(widths))]
    for w, colour in zip(widths, colours):
        rs = [r for r in pts if (row_width(r, cfg) or 0) == w]
        faces = ["none" if r.stopped_early else colour for r in rs]
        ax.scatter([float(r.value(dim)) for r in rs], [100 * (r.val_acc or 0.0) for r in rs],
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


def plot_best_so_far(progress: list[dict[str, str]], path: Path) -> dict[str, Any] | None:
    """Running best val_acc against trial-epochs spent, in the order the epochs arrived."""
    if not progress:
        return None
    fig, ax = _figure()
    for kind in KINDS:
        xs, ys, best, n = [], [], -math.inf, 0
        for r in progress:
            if r.get("phase") != PHASE[kind] or r.get("val_acc") in (None, ""):
                continue
            n += 1
            acc = float(r["val_acc"])
            if math.isfinite(acc) and acc > best:
                best = acc
            xs.append(n)
            ys.append(100 * best)
        if xs:
            ax.step(xs, ys, where="post", label=kind)
    ax.set_xlabel("trial-epochs spent")
    ax.set_ylabel("best validation accuracy so far (%)")
    title = "Search progress: best val_acc vs trial-epochs"
    ax.set_title(title, fontsize=10)
    return _save(fig, ax, path, title)


def group_label(g: dict[str, Any]) -> str:
    """An importances group in words: "distilled", "distilled, dkd", "baseline, width 16"."""
    loss = f", {g['loss']}" if g.get("loss") else ""
    return kind_of(g["phase"]) + loss + ("" if g["width"] is None else f", width {g['width']}")


def plot_importance(importances: dict[str, Any] | None, path: Path) -> dict[str, Any] | None:
    """The searched values' importances: a bar per value, one colour per group (each phase,
    each width), the groups that have them."""
    groups = [g for g in (importances or {}).get("groups", []) if g["importances"]]
    if not groups:
        return None
    names = list(dict.fromkeys(n for g in groups for n in g["importances"]))
    fig, ax = _figure()
    step = 0.8 / len(groups)
    for i, g in enumerate(groups):
        xs = [j - 0.4 + step * (i + 0.5) for j, n in enumerate(names) if n in g["importances"]]
        ys = [100 * g["importances"][n] for n in names if n in g["importances"]]
        label = group_label(g)
        ax.bar(xs, ys, width=step, label=f"{label} ({g['trials']} trials)")
    ax.set_xticks(range(len(names)), labels=names)
    ax.set_xlabel("searched value")
    ax.set_ylabel("importance (%)")
    title = f"What mattered for the {importances['target']} (Optuna's importances)"
    ax.set_title(title, fontsize=10)
    return _save(fig, ax, path, title)


def write_plots(results_dir: Path, summary: Summary) -> dict[str, dict[str, Any]]:
    """Draw every plot that has data; return {file: what was drawn} (series and point counts)."""
    cfg = read_config(results_dir)
    rows = read_trials(results_dir / TRIALS_FILE)
    progress = read_table(results_dir / PROGRESS_FILE)
    drawn = {PLOT_TEST_ACC: _front(summary, results_dir / PLOT_TEST_ACC, x="params"),
             PLOT_LATENCY: _front(summary, results_dir / PLOT_LATENCY, x="latency"),
             PLOT_TEMPERATURE: plot_val_acc_vs("temperature", cfg, rows,
                                               results_dir / PLOT_TEMPERATURE),
             PLOT_ALPHA: plot_val_acc_vs("alpha", cfg, rows, results_dir / PLOT_ALPHA),
             PLOT_BEST_SO_FAR: plot_best_so_far(progress, results_dir / PLOT_BEST_SO_FAR),
             PLOT_IMPORTANCE: plot_importance(read_importances(results_dir),
                                              results_dir / PLOT_IMPORTANCE)}
    for name, rec in drawn.items():
        if rec is None:  # a plot of an earlier report that no longer has data
            (results_dir / name).unlink(missing_ok=True)
    return {k: v for k, v in drawn.items() if v is not None}
