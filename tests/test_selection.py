"""Which settings the final evaluation retrains (`kdsearch.selection`): a results folder read and
checked, the best setting per width and kind, and what a retraining depends on."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from kdsearch.config import (ExperimentConfig, config_from_dict, config_to_dict,
                             dump_config)
from kdsearch.results import ReportError
from kdsearch.selection import (check_consistent, read_searched, select_settings, teacher_files,
                                training_config, training_fingerprint)
from kdsearch.tables import TrialRow, write_table
from kdsearch.teacher import teacher_key

LR = {"distribution": "loguniform", "low": 1e-3, "high": 1e-1}
ALPHA = {"distribution": "uniform", "low": 0.1, "high": 0.9}
WIDTHS = {"distribution": "choice", "values": [8, 16, 32]}


def _cfg(**sections: object) -> ExperimentConfig:
    """A config that searches lr, alpha and width, with `sections` set on top."""
    raw: dict = {"name": "sel", "search": {"space": {"lr": LR, "alpha": ALPHA, "width": WIDTHS}}}
    raw.update(sections)
    return config_from_dict(raw)


def _cells(phase: str, trial_id: str, width: int | None, val_acc: float | None, *,
           status: str = "TERMINATED", early: int = 0, diverged: int = 0, lr: float = 0.01,
           alpha: float | None = 0.5, val_loss: float = 0.1, epochs: int = 10
           ) -> dict[str, str]:
    """One trials.csv row as text (a baseline gets no alpha)."""
    row = {"phase": phase, "trial_id": trial_id, "status": status, "stopped_early": str(early),
           "diverged": str(diverged), "epochs": str(epochs),
           "val_acc": "" if val_acc is None else str(val_acc), "val_loss": str(val_loss),
           "lr": str(lr), "width": "" if width is None else str(width)}
    if phase == "distill" and alpha is not None:
        row["alpha"] = str(alpha)
    return row


def _rows(*cells: dict[str, str]) -> list[TrialRow]:
    return [TrialRow.from_csv(c) for c in cells]


def _folder(path: Path, cfg: ExperimentConfig, cells: list[dict[str, str]]) -> Path:
    """A results folder as a search leaves it: config.yaml and trials.csv."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(dump_config(cfg))
    write_table(path / "trials.csv", cells)
    return path


# --------------------------------------------------------------------------- read_searched
def test_read_searched_gives_the_folders_config_and_trials(tmp_path: Path) -> None:
    cfg = _cfg()
    cells = [_cells("distill", "d0000001", 16, 0.9), _cells("baseline", "b0000001", 8, 0.8)]
    folder = _folder(tmp_path / "run", cfg, cells)
    read_cfg, rows = read_searched(folder)
    assert read_cfg == cfg
    assert [(r.kind, r.trial_id, r.value("width"), r.val_acc) for r in rows] == [
        ("distilled", "d0000001", 16, 0.9), ("baseline", "b0000001", 8, 0.8)]


def test_read_searched_refuses_a_folder_without_a_search_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no such results folder") as info:
        read_searched(tmp_path / "missing")
    assert "\n" not in str(info.value)
    with pytest.raises(ReportError, match="no config.yaml"):
        read_searched(tmp_path)
    (tmp_path / "config.yaml").write_text(dump_config(_cfg()))
    with pytest.raises(ReportError, match="no trials.csv or no trials in it; run the search"):
        read_searched(tmp_path)
    write_table(tmp_path / "trials.csv", [])  # a header and no row
    with pytest.raises(ReportError, match="no trials.csv or no trials in it"):
        read_searched(tmp_path)


# --------------------------------------------------------------------------- check_consistent
def test_check_consistent_needs_every_searched_value_of_an_ended_trial(tmp_path: Path) -> None:
    cfg = _cfg()
    good = _cells("distill", "d1", 16, 0.9)
    check_consistent(cfg, _rows(good), tmp_path)  # no error
    no_alpha = _cells("distill", "d2", 16, 0.9, alpha=None)
    with pytest.raises(ReportError, match=r"line 3: no alpha, which config.yaml searches"):
        check_consistent(cfg, _rows(good, no_alpha), tmp_path)
    # a trial still in flight has not reported its values yet: not a mismatch
    running = _cells("distill", "d3", None, None, status="RUNNING", alpha=None)
    check_consistent(cfg, _rows(good, running), tmp_path)


def test_check_consistent_holds_a_baseline_to_the_dimensions_without_kd(tmp_path: Path) -> None:
    """The baseline searches neither alpha nor temperature: a baseline row without alpha is
    whole, and one with alpha comes from another search."""
    cfg = _cfg()
    check_consistent(cfg, _rows(_cells("baseline", "b1", 8, 0.8)), tmp_path)
    with_alpha = _cells("baseline", "b2", 8, 0.8)
    with_alpha["alpha"] = "0.5"
    with pytest.raises(ReportError, match=r"line 2: the trial searched alpha, which config.yaml "
                                          r"does not"):
        check_consistent(cfg, _rows(with_alpha), tmp_path)


def test_check_consistent_compares_the_teacher_with_run_json(tmp_path: Path) -> None:
    cfg = _cfg()
    rows = _rows(_cells("distill", "d1", 16, 0.9))
    check_consistent(cfg, rows, tmp_path)  # no run.json: nothing to compare with
    (tmp_path / "run.json").write_text(json.dumps({"teacher": {"key": teacher_key(cfg)}}))
    check_consistent(cfg, rows, tmp_path)
    (tmp_path / "run.json").write_text("{not json")  # unreadable: nothing to compare with
    check_consistent(cfg, rows, tmp_path)
    other = _cfg(teacher={"epochs": 3})
    (tmp_path / "run.json").write_text(json.dumps({"teacher": {"key": teacher_key(other)}}))
    with pytest.raises(ReportError, match="dataset or teacher settings differ") as info:
        check_consistent(cfg, rows, tmp_path)
    assert teacher_key(other) in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- select_settings
def test_select_settings_picks_the_best_trial_of_each_kind_per_width() -> None:
    cfg = _cfg()
    rows = _rows(_cells("distill", "d8a", 8, 0.90, lr=0.01),
                 _cells("distill", "d8b", 8, 0.93, lr=0.02, alpha=0.3),
                 _cells("distill", "d16", 16, 0.95, lr=0.03),
                 # the highest val_acc, but stopped early: a full-budget trial ranks above it
                 _cells("distill", "d16x", 16, 0.99, early=1, epochs=3),
                 _cells("distill", "d32", 32, None, diverged=1),  # no finished trial at 32
                 _cells("baseline", "b8", 8, 0.91, lr=0.04),
                 _cells("baseline", "b16", 16, 0.92, lr=0.05))
    chosen = select_settings(cfg, rows)
    got = [(s.kind, s.width, s.trial_id, s.tuned, s.best) for s in chosen.settings]
    assert got == [("distilled", 8, "d8b", True, False), ("baseline", 8, "b8", True, False),
                   ("distilled", 16, "d16", True, True), ("baseline", 16, "b16", True, True)]
    d8 = chosen.settings[0]
    assert d8.settings == {"lr": 0.02, "alpha": 0.3, "width": 8}
    assert (d8.val_acc, d8.search_epochs) == (0.93, 10)
    assert chosen.settings[1].settings == {"lr": 0.04, "width": 8}  # no alpha for a baseline
    assert chosen.baseline_tuned and chosen.baseline_note == ""


def test_a_width_without_a_finished_baseline_gets_the_distilled_setting_untuned() -> None:
    cfg = _cfg()
    rows = _rows(_cells("distill", "d8", 8, 0.90, lr=0.02), _cells("distill", "d16", 16, 0.95),
                 _cells("baseline", "b16", 16, 0.92),
                 _cells("baseline", "b8", 8, None, status="ERROR"))
    chosen = select_settings(cfg, rows)
    untuned = [s for s in chosen.settings if not s.tuned]
    assert len(untuned) == 1
    u = untuned[0]
    assert (u.kind, u.width, u.trial_id, u.val_acc, u.search_epochs, u.best) == (
        "baseline", 8, None, None, None, False)
    assert u.settings == {"lr": 0.02, "width": 8}  # the distilled values, less alpha
    assert training_config(cfg, u, 0).training.alpha == 1.0


def test_without_a_baseline_search_every_baseline_is_untuned_and_the_note_says_why() -> None:
    cfg = _cfg(search={"baseline": False, "space": {"lr": LR, "alpha": ALPHA, "width": WIDTHS}})
    rows = _rows(_cells("distill", "d8", 8, 0.90), _cells("distill", "d16", 16, 0.95),
                 _cells("baseline", "b8", 8, 0.99))  # ignored: the search had no baseline
    chosen = select_settings(cfg, rows)
    assert not chosen.baseline_tuned
    assert chosen.baseline_note == "the baseline was not tuned (search.baseline is false)"
    baselines = [s for s in chosen.settings if s.kind == "baseline"]
    assert [(s.width, s.tuned, s.best) for s in baselines] == [(8, False, False),
                                                               (16, False, True)]
    # a baseline search that ran but finished nothing is named apart
    failed = _rows(_cells("distill", "d8", 8, 0.9), _cells("baseline", "b8", 8, None,
                                                           status="ERROR"))
    assert select_settings(_cfg(), failed).baseline_note == (
        "the baseline was not tuned (no baseline trial finished)")


def test_max_widths_keeps_the_best_widths_and_the_best_baselines() -> None:
    cfg = _cfg(report={"max_widths": 1})
    rows = _rows(_cells("distill", "d8", 8, 0.90), _cells("distill", "d16", 16, 0.95),
                 _cells("distill", "d32", 32, 0.93),
                 _cells("baseline", "b8", 8, 0.97), _cells("baseline", "b32", 32, 0.80))
    widths = sorted({s.width for s in select_settings(cfg, rows).settings})
    assert widths == [8, 16]  # 16: the best distilled width; 8: the best baseline's


def test_select_settings_refuses_a_search_without_a_finished_distillation_trial() -> None:
    rows = _rows(_cells("distill", "d8", 8, None, diverged=1), _cells("baseline", "b8", 8, 0.9))
    with pytest.raises(ReportError, match="no distillation trial finished in trials.csv"):
        select_settings(_cfg(), rows)


def test_a_config_that_does_not_search_width_uses_its_fixed_width() -> None:
    cfg = config_from_dict({"student": {"width": 24},
                            "search": {"space": {"lr": LR}}})
    cells = [{"phase": p, "trial_id": t, "status": "TERMINATED", "stopped_early": "0",
              "diverged": "0", "epochs": "10", "val_acc": a, "lr": "0.01"}
             for p, t, a in (("distill", "d1", "0.9"), ("baseline", "b1", "0.8"))]
    chosen = select_settings(cfg, _rows(*cells))
    assert [(s.kind, s.width, s.settings) for s in chosen.settings] == [
        ("distilled", 24, {"lr": 0.01}), ("baseline", 24, {"lr": 0.01})]


# --------------------------------------------------------------------------- training_config
def test_training_config_sets_the_settings_values_the_seed_and_alpha() -> None:
    cfg = _cfg(training={"alpha": 0.3, "lr": 0.005, "epochs": 7, "seed": 9})
    rows = _rows(_cells("distill", "d16", 16, 0.95, lr=0.02, alpha=0.6),
                 _cells("baseline", "b16", 16, 0.92, lr=0.04))
    distilled, baseline = select_settings(cfg, rows).settings
    c = training_config(cfg, distilled, 3)
    assert (c.student.width, c.training.lr, c.training.alpha, c.training.seed,
            c.training.epochs) == (16, 0.02, 0.6, 3, 7)
    b = training_config(cfg, baseline, 4)
    assert (b.student.width, b.training.lr, b.training.alpha, b.training.seed) == (
        16, 0.04, 1.0, 4)
    assert cfg.training.seed == 9 and cfg.student.width == 20  # the config itself is untouched


# --------------------------------------------------------------------------- fingerprints
def test_teacher_files_are_hashed_by_content_and_a_gone_file_keeps_its_record(
        tmp_path: Path) -> None:
    assert teacher_files(_cfg()) == {}  # no teacher file set
    checkpoint = tmp_path / "teacher.pt"
    checkpoint.write_bytes(b"weights of a teacher")
    cfg = _cfg(teacher={"checkpoint": str(checkpoint)})
    sha = hashlib.sha256(b"weights of a teacher").hexdigest()
    assert teacher_files(cfg) == {"checkpoint": sha}
    assert teacher_files(cfg, {"checkpoint": "recorded"}) == {"checkpoint": sha}  # file first
    gone = _cfg(teacher={"checkpoint": str(tmp_path / "gone.pt")})
    assert teacher_files(gone, {"checkpoint": "recorded"}) == {"checkpoint": "recorded"}
    assert teacher_files(gone) == {"checkpoint": "unreadable"}
    logits = _cfg(teacher={"logits": str(tmp_path / "gone.npy")})
    assert teacher_files(logits, {"logits": "abc"}) == {"logits": "abc"}


def test_training_fingerprint_changes_with_what_a_retraining_depends_on_alone() -> None:
    cfg = _cfg()
    base = training_fingerprint(cfg)
    assert len(base) == 16 and base == training_fingerprint(_cfg())
    # the search and the report do not change a retrained model
    assert training_fingerprint(_cfg(search={"num_samples": 99, "space": {"lr": LR}},
                                     report={"seeds": 7}, name="other")) == base
    for changed in (_cfg(training={"batch_size": 64}), _cfg(teacher={"epochs": 2}),
                    _cfg(dataset={"split_seed": 1}), _cfg(student={"width": 8}),
                    _cfg(training={"fast_step": "off"})):
        assert training_fingerprint(changed) != base


def test_training_fingerprint_hashes_unset_newer_settings_as_before_they_existed() -> None:
    """final.json rows of an older kdsearch stay reusable: fast_step "auto" and loss "kd" (the
    defaults), unset loss weights, and unset teacher and student kwargs and files are left out
    of what is hashed."""
    cfg = _cfg()
    d = config_to_dict(cfg)
    for key in ("fast_step", "loss", "dkd_alpha", "dkd_beta", "dkd_warmup", "ls_weight"):
        del d["training"][key]
    for section, key in (("teacher", "kwargs"), ("teacher", "checkpoint"),
                         ("teacher", "logits"), ("student", "kwargs")):
        del d[section][key]
    older = json.dumps({k: d[k] for k in ("dataset", "teacher", "student", "training")},
                       sort_keys=True, default=str)
    assert training_fingerprint(cfg) == hashlib.sha256(older.encode()).hexdigest()[:16]


def test_training_fingerprint_knows_a_teacher_file_by_content_not_by_path(tmp_path: Path
                                                                          ) -> None:
    a, b, c = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    a.write_bytes(b"one teacher")
    b.write_bytes(b"one teacher")
    c.write_bytes(b"another teacher")
    cfg_a, cfg_b, cfg_c = (_cfg(teacher={"checkpoint": str(p)}) for p in (a, b, c))
    fa, fb, fc = (training_fingerprint(x, teacher_files(x)) for x in (cfg_a, cfg_b, cfg_c))
    assert fa == fb and fa != fc
    assert fa != training_fingerprint(_cfg())  # a checkpoint is not the trained teacher


def test_a_setting_spec_holds_everything_but_the_seeds() -> None:
    cfg = _cfg()
    setting = select_settings(cfg, _rows(_cells("distill", "d16", 16, 0.95))).settings[0]
    spec = setting.spec("f" * 16)
    assert spec == {"kind": "distilled", "width": 16, "tuned": True,
                    "settings": {"lr": 0.01, "alpha": 0.5, "width": 16}, "config": "f" * 16}
    # a trial of the same values with another id and accuracy is the same retraining
    other = dataclasses.replace(setting, trial_id="zzz", val_acc=0.5)
    assert other.spec("f" * 16) == spec


# --------------------------------------------------------------------------- several losses
def _loss_cells(loss: str, trial_id: str, width: int, val_acc: float) -> dict[str, str]:
    return {**_cells("distill", trial_id, width, val_acc), "loss": loss}


@pytest.mark.parametrize("losses, extras", [
    (["kd", "dkd"], [(8, "kd")]),  # dkd is best at width 8; kd's best there is retrained too
    (["dkd", "ls_kd"], []),  # no kd to compare with: nothing extra to retrain
])
def test_each_losss_best_is_retrained_beside_the_widths_own_when_kd_is_searched(
        losses: list[str], extras: list[tuple[int, str]]) -> None:
    space = {"loss": {"distribution": "choice", "values": losses}, "lr": LR,
             "width": {"distribution": "choice", "values": [8]}}
    cfg = _cfg(search={"space": space})
    rows = _rows(_loss_cells(losses[0], "a0000001", 8, 0.90),
                 _loss_cells(losses[1], "b0000001", 8, 0.95),
                 _cells("baseline", "c0000001", 8, 0.92, alpha=None))
    settings = select_settings(cfg, rows).settings
    best = [s for s in settings if s.kind == "distilled" and not s.extra]
    assert [s.trial_id for s in best] == ["b0000001"]
    assert [(s.width, s.settings["loss"]) for s in settings if s.extra] == extras
