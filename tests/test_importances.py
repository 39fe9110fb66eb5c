"""What mattered: importances.json from trials.csv and progress.csv, its table in report.md and
its plot. The tables are written by hand here, with a val_acc that only one searched value moves,
so the expected answer is known."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from kdsearch.config import load_config
from kdsearch.importances import MIN_TRIALS, write_importances
from kdsearch.plots import plot_importance
from kdsearch.report import importance_table
from kdsearch.results import IMPORTANCES_FILE, read_importances
from kdsearch.tables import PROGRESS_FILE, TRIALS_FILE, write_table

SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"


def _write_tables(folder: Path, n_distill: int, n_baseline: int, *, grace: int = 5) -> None:
    """Trials whose val_acc at the grace epoch depends on the temperature alone (distilled) or on
    the lr alone (baseline); their final val_acc depends on alpha alone, to tell the two targets
    apart. Every width gets trials in turn."""
    rng = random.Random(0)
    trials, progress = [], []
    widths = [8, 16, 32, 64]
    for phase, n in (("distill", n_distill), ("baseline", n_baseline)):
        for i in range(n):
            tid = f"{phase[:4]}_{i:03d}"
            t, a, lr = rng.uniform(1, 20), rng.uniform(0, 1), math.exp(rng.uniform(-8, -3.6))
            w = widths[i % len(widths)]
            row = {"phase": phase, "trial_id": tid, "status": "TERMINATED", "diverged": 0,
                   "lr": lr, "width": w}
            at_grace = 0.5 + 0.02 * t if phase == "distill" else 0.5 + 0.05 * math.log(lr)
            final = 0.9 + 0.05 * a
            if phase == "distill":
                row |= {"temperature": t, "alpha": a}
            row["val_acc"] = final
            trials.append(row)
            for epoch in range(1, grace + 2):
                progress.append({"phase": phase, "trial_id": tid, "epoch": epoch,
                                 "val_acc": at_grace if epoch == grace else 0.1})
    # a failed trial and a diverged one never count
    trials.append({"phase": "distill", "trial_id": "dist_err", "status": "ERROR", "diverged": 0,
                   "temperature": 3.0, "alpha": 0.5, "lr": 1e-3, "width": 8})
    trials.append({"phase": "distill", "trial_id": "dist_nan", "status": "TERMINATED",
                   "diverged": 1, "temperature": 3.0, "alpha": 0.5, "lr": 1e-3, "width": 8,
                   "val_acc": 0.1})
    write_table(folder / TRIALS_FILE, trials)
    write_table(folder / PROGRESS_FILE, progress, ("phase", "trial_id", "epoch"))


def test_the_value_that_moves_val_acc_at_the_grace_epoch_is_the_one_that_mattered(
        tmp_path: Path) -> None:
    cfg = load_config(SPACE)
    _write_tables(tmp_path, n_distill=48, n_baseline=48)
    out = write_importances(tmp_path, cfg)
    assert read_importances(tmp_path) == out == json.loads(
        (tmp_path / IMPORTANCES_FILE).read_text())
    assert out["target"] == "val_acc at epoch 5"
    groups = {(g["phase"], g["width"]): g for g in out["groups"]}
    # the phase as a whole, then each width (per_width: true)
    assert set(groups) == {(p, w) for p in ("distill", "baseline") for w in (None, 8, 16, 32, 64)}
    whole = groups[("distill", None)]
    assert whole["trials"] == 48  # the failed and the diverged trial are not counted
    assert set(whole["importances"]) == {"temperature", "alpha", "lr", "width"}
    assert max(whole["importances"], key=whole["importances"].get) == "temperature"
    assert whole["importances"]["temperature"] > 0.5
    assert math.isclose(sum(whole["importances"].values()), 1.0, rel_tol=1e-6)
    # a width of 12 trials: enough; the width is not a searched value within it
    w8 = groups[("distill", 8)]
    assert w8["trials"] == 12 and "width" not in w8["importances"]
    assert max(w8["importances"], key=w8["importances"].get) == "temperature"
    # the baseline searches lr (and width); within a width lr alone: nothing to compare
    assert max(groups[("baseline", None)]["importances"],
               key=groups[("baseline", None)]["importances"].get) == "lr"
    assert groups[("baseline", 8)]["importances"] is None


def test_without_asha_the_target_is_the_final_val_acc(tmp_path: Path) -> None:
    cfg = load_config(SPACE, ["search.scheduler=fifo"])
    _write_tables(tmp_path, n_distill=24, n_baseline=0)
    out = write_importances(tmp_path, cfg)
    assert out["target"] == "final val_acc"
    whole = next(g for g in out["groups"] if g["phase"] == "distill" and g["width"] is None)
    assert max(whole["importances"], key=whole["importances"].get) == "alpha"
    # no baseline trials: no baseline rows at all
    assert all(g["phase"] == "distill" for g in out["groups"])


def test_too_few_trials_give_a_count_and_no_importances_and_the_table_says_why(
        tmp_path: Path) -> None:
    cfg = load_config(SPACE)
    _write_tables(tmp_path, n_distill=MIN_TRIALS - 1, n_baseline=MIN_TRIALS)
    out = write_importances(tmp_path, cfg)
    groups = {(g["phase"], g["width"]): g for g in out["groups"]}
    assert groups[("distill", None)] == {"phase": "distill", "width": None,
                                         "trials": MIN_TRIALS - 1, "importances": None}
    assert groups[("baseline", None)]["importances"] is not None
    table = "\n".join(importance_table(out))
    assert f"| distilled | {MIN_TRIALS - 1} | too few trials (fewer than {MIN_TRIALS})" in table
    assert "| baseline, width 8 | 3 | too few trials" in table
    assert "PED-ANOVA" in table and "val_acc at epoch 5" in table
    # the plot draws the groups that have importances, and nothing without any
    drawn = plot_importance(out, tmp_path / "importance.png")
    assert drawn is not None
    assert (tmp_path / "importance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert drawn["series"] == {f"baseline ({MIN_TRIALS} trials)": 2}  # lr and width
    assert plot_importance({**out, "groups": [groups[("distill", None)]]},
                           tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_a_report_without_importances_says_where_they_come_from() -> None:
    text = " ".join(importance_table(None))
    assert text.startswith("No importances") and "kdsearch report" in text
