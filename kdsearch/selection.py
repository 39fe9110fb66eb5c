"""Which settings the final evaluation retrains: per width, the best distilled and the best
baseline trial of the search, read from the results folder.

`read_searched` reads and checks a folder's config and trials; `select_settings` picks the
settings; `training_config` is the config a retraining of one of them runs with one seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdsearch.config import VALUE_RULES, ExperimentConfig, config_to_dict, losses_of, with_params
from kdsearch.results import (CONFIG_FILE, RUN_FILE, ReportError, best_trial, dimension_names,
                              dimensions, loss_searched, rank_key, read_config, row_width)
from kdsearch.tables import (BASELINE, DISTILLED, KINDS, TRIALS_FILE, TrialRow, dim_column,
                             read_trials)
from kdsearch.teacher import TeacherError, teacher_key, user_file_sha256


@dataclass(frozen=True)
class Setting:
    """One setting to retrain: the best of its kind at one student width."""

    kind: str  # DISTILLED or BASELINE
    width: int
    settings: dict[str, Any]  # the searched dimensions -> the trial's values
    tuned: bool  # False: a baseline nobody searched for (the distilled setting with alpha = 1)
    best: bool  # the best setting of its kind over all widths
    trial_id: str | None  # the search trial it comes from (None for an untuned baseline)
    val_acc: float | None  # that trial's validation accuracy at its last epoch
    search_epochs: int | None  # the epochs that trial ran (fewer if ASHA stopped it)
    # True: the best setting of one loss, retrained only to compare the losses (several are
    # searched, and another loss is this width's best)
    extra: bool = False

    def spec(self, fingerprint: str) -> dict[str, Any]:
        """Everything that determines the retrained models, but the seeds (`fingerprint`: the
        config's, `training_fingerprint`)."""
        return {"kind": self.kind, "width": self.width, "tuned": self.tuned,
                "settings": self.settings, "config": fingerprint}


@dataclass(frozen=True)
class Selection:
    """The settings to retrain, and whether the baseline among them was tuned."""

    settings: list[Setting]
    baseline_tuned: bool  # a baseline search ran and has a finished trial
    baseline_note: str  # why the baseline is untuned, "" when it is tuned


# --------------------------------------------------------------------------- reading a folder
def read_searched(results_dir: Path) -> tuple[ExperimentConfig, list[TrialRow]]:
    """The config and trials of a results folder that a search has run in, or a ReportError."""
    if not Path(results_dir).is_dir():
        raise ReportError(f"{results_dir}: no such results folder; pass results/<name> of a "
                          f"search")
    cfg = read_config(results_dir)
    rows = read_trials(results_dir / TRIALS_FILE)
    if not rows:
        raise ReportError(f"{results_dir}: no {TRIALS_FILE} or no trials in it; run the search "
                          f"first (kdsearch run SPACE.yaml)")
    check_consistent(cfg, rows, results_dir)
    return cfg, rows


def check_consistent(cfg: ExperimentConfig, rows: list[TrialRow], results_dir: Path) -> None:
    """config.yaml is the one the search ran with: every ended trial holds exactly the
    dimensions it searches, and its teacher is run.json's. A ReportError names what differs."""
    path = results_dir / TRIALS_FILE
    restore = (f"the two files are not of one search: restore {CONFIG_FILE} from a copy of the "
               f"folder (the search's own config)")
    known = set(VALUE_RULES)
    for kind in KINDS:
        for line, r in enumerate(rows, start=2):
            if r.kind != kind or not r.completed:
                continue
            loss = r.value("loss") if kind == DISTILLED and loss_searched(cfg) else None
            searched = set(dimension_names(cfg, kind, loss))
            for name in sorted(searched, key=dim_column):
                if r.value(name) is None:
                    raise ReportError(f"{path}: line {line}: no {dim_column(name)}, which "
                                      f"{CONFIG_FILE} searches; {restore}")
            for name in sorted(known - searched - {"epochs"}):
                if r.value(name) is not None:
                    raise ReportError(f"{path}: line {line}: the trial searched {name}, which "
                                      f"{CONFIG_FILE} does not; {restore}")
    _check_teacher(cfg, results_dir, restore)


def _check_teacher(cfg: ExperimentConfig, results_dir: Path, restore: str) -> None:
    try:
        run = json.loads((results_dir / RUN_FILE).read_text())
        ran_with = run["teacher"]["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no record of the teacher (a search killed early, an older folder)
    try:
        key = teacher_key(cfg)
    except TeacherError:
        return  # its checkpoint or logits file is gone: a retraining that needs it says so
    if ran_with and ran_with != key:
        raise ReportError(f"{results_dir / CONFIG_FILE}: its dataset or teacher settings differ "
                          f"from those the search ran with (teacher {ran_with} in {RUN_FILE}); "
                          f"{restore}")


# --------------------------------------------------------------------------- choosing settings
Best = tuple[dict[str, Any], TrialRow]  # a trial's searched values, and its row


def _best_by_width(rows: list[TrialRow], cfg: ExperimentConfig, kind: str) -> dict[int, Best]:
    dims = dimension_names(cfg, kind)
    groups: dict[int, list[TrialRow]] = {}
    for r in rows:
        w = row_width(r, cfg)
        if r.kind == kind and w is not None:
            groups.setdefault(w, []).append(r)
    found = {w: best_trial(group, kind, dims) for w, group in groups.items()}
    return {w: best for w, best in found.items() if best is not None}


def _overall_width(rows: list[TrialRow], cfg: ExperimentConfig, kind: str) -> int | None:
    best = best_trial([r for r in rows if row_width(r, cfg) is not None], kind,
                      dimension_names(cfg, kind))
    return row_width(best[1], cfg) if best is not None else None


def _setting(kind: str, width: int, best: Best, is_best: bool, extra: bool = False) -> Setting:
    settings, row = best
    return Setting(kind, width, dict(settings), True, is_best, row.trial_id, row.val_acc,
                   row.epochs, extra)


def _best_by_loss(rows: list[TrialRow], cfg: ExperimentConfig) -> dict[str, dict[int, Best]]:
    """Per loss (when several are searched, kd among them), per width, its best distilled
    trial. The report compares each loss with kd; without kd there is nothing to retrain."""
    if not loss_searched(cfg) or "kd" not in losses_of(cfg):
        return {}
    return {loss: _best_by_width([r for r in rows if r.value("loss") == loss], cfg, DISTILLED)
            for loss in losses_of(cfg)}


def _untuned(distilled: Setting, cfg: ExperimentConfig, is_best: bool) -> Setting:
    settings = {d.name: distilled.settings[d.name] for d in dimensions(cfg, BASELINE)
                if d.name in distilled.settings}
    return Setting(BASELINE, distilled.width, settings, False, is_best, None, None, None)


def _baseline_note(cfg: ExperimentConfig, tuned: bool) -> str:
    if not cfg.search.baseline:
        return "the baseline was not tuned (search.baseline is false)"
    if not tuned:
        return "the baseline was not tuned (no baseline trial finished)"
    return ""


def select_settings(cfg: ExperimentConfig, rows: list[TrialRow]) -> Selection:
    """The settings to retrain: per width, the best distilled and the best baseline trial.

    Widths are ranked by their best distilled trial (as `results.best_trial` ranks trials) and
    the best `report.max_widths` kept, plus the best baseline's width. A width whose baseline
    has no finished trial gets an untuned baseline: its distilled setting with alpha = 1. When
    several losses are searched, each loss's best setting at each kept width is retrained too
    (`Setting.extra`), to compare the losses.
    """
    distilled = _best_by_width(rows, cfg, DISTILLED)
    if not distilled:
        raise ReportError(f"no distillation trial finished in {TRIALS_FILE}; nothing to evaluate "
                          f"(continue the search with `kdsearch resume`)")
    baseline = _best_by_width(rows, cfg, BASELINE) if cfg.search.baseline else {}
    # the overall bests are the trials results.best_trial picks (the search's own summary line)
    best_distilled = _overall_width(rows, cfg, DISTILLED)
    best_base = _overall_width(rows, cfg, BASELINE) if baseline else None
    ranked = sorted(distilled, reverse=True,
                    key=lambda w: (w == best_distilled, rank_key(distilled[w][1])))
    widths = set(ranked[:cfg.report.max_widths])
    if best_base is not None:
        widths.add(best_base)
    by_loss = _best_by_loss(rows, cfg)
    out: list[Setting] = []
    for w in sorted(widths):
        d = _setting(DISTILLED, w, distilled[w], w == ranked[0]) if w in distilled else None
        if d is not None:
            out.append(d)
        for best in (found[w] for found in by_loss.values() if w in found):
            if d is None or best[1].trial_id != d.trial_id:  # (the width's best is retrained)
                out.append(_setting(DISTILLED, w, best, False, extra=True))
        if w in baseline:
            out.append(_setting(BASELINE, w, baseline[w], w == best_base))
        elif d is not None:
            out.append(_untuned(d, cfg, best_base is None and w == ranked[0]))
    return Selection(out, bool(baseline), _baseline_note(cfg, bool(baseline)))


def training_config(cfg: ExperimentConfig, setting: Setting, seed: int) -> ExperimentConfig:
    """The config a retraining runs: the setting's values, alpha = 1 for a baseline, the seed."""
    c = with_params(cfg, {**setting.settings, "width": setting.width})
    alpha = 1.0 if setting.kind == BASELINE else c.training.alpha
    return dataclasses.replace(c, training=dataclasses.replace(c.training, seed=seed,
                                                               alpha=alpha))


# --------------------------------------------------------------------------- what a row is of
def teacher_files(cfg: ExperimentConfig, recorded: dict[str, str] | None = None
                  ) -> dict[str, str]:
    """The sha256 of teacher.checkpoint and teacher.logits, where set: read from the files, or,
    where a file is gone (the folder reported on another machine), as final.json `recorded`."""
    out = {}
    for key in ("checkpoint", "logits"):
        path = getattr(cfg.teacher, key)
        if path:
            out[key] = (user_file_sha256(Path(path)) or (recorded or {}).get(key)
                        or "unreadable")
    return out


def training_fingerprint(cfg: ExperimentConfig, files: dict[str, str] | None = None) -> str:
    """Return a hash of the config sections that a retraining depends on (not search or report).

    A teacher's checkpoint or logits count by their content (`teacher_files`), not by their
    path. Keys at their default, or unset, are left out of the hash. So a config that lacks
    such a key has the same fingerprint as one that leaves it at its default."""
    d = config_to_dict(cfg)
    for key, sha in (files or {}).items():
        d["teacher"][key] = sha
    if d["training"]["fast_step"] == "auto":  # the default: left out (see the docstring)
        del d["training"]["fast_step"]
    if d["training"]["loss"] == "kd":  # the default: left out
        del d["training"]["loss"]
    for key in ("dkd_alpha", "dkd_beta", "dkd_warmup", "ls_weight"):
        if d["training"][key] is None:
            del d["training"][key]
    for section, key in (("teacher", "kwargs"), ("teacher", "checkpoint"),
                         ("teacher", "logits"), ("student", "kwargs")):
        if not d[section][key]:  # unset: left out
            del d[section][key]
    blob = json.dumps({k: d[k] for k in ("dataset", "teacher", "student", "training")},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
