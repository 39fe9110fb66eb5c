"""The searchers and schedulers of a search (`kdsearch.searchers`): an arm per phase and width
(and loss), each with its own seeded sampler, budget and early stopping."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from kdsearch.searchers import (PhaseScheduler, PhaseSearcher, arm_specs, random_search_note,
                                sampler, searcher_seed, unsearched_note)
from kdsearch.config import load_config

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"
LOSSES = REPO / "examples" / "own_models" / "losses.yaml"


def test_each_phase_is_early_stopped_against_its_own_trials() -> None:
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    scheduler = PhaseScheduler({p: ASHAScheduler(time_attr="epoch", max_t=8, grace_period=1,
                                                  reduction_factor=2)
                                 for p in ("distill", "baseline")}, per_width=False)
    assert scheduler.set_search_properties("val_acc", "max")
    trials = {name: Trial("t", config={"phase": phase}, trial_id=name, stub=True)
              for name, phase in [("d1", "distill"), ("d2", "distill"), ("d3", "distill"),
                                  ("b1", "baseline")]}
    for t in trials.values():
        scheduler.on_trial_add(None, t)

    def result(name: str, acc: float) -> str:
        return scheduler.on_trial_result(None, trials[name], {"epoch": 1, "val_acc": acc})

    assert result("d1", 0.9) == result("d2", 0.95) == TrialScheduler.CONTINUE
    # a baseline trial far below the distilled ones, but first of its kind: it goes on
    assert result("b1", 0.1) == TrialScheduler.CONTINUE
    assert result("d3", 0.1) == TrialScheduler.STOP  # below the distilled trials: stopped


def test_the_phase_searcher_keeps_each_budget_and_alternates() -> None:
    import optuna
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    spaces = {"distill": {"alpha": optuna.distributions.FloatDistribution(0, 1)},
              "baseline": {"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1)}}
    searcher = PhaseSearcher({p: OptunaSearch(space, metric="val_acc", mode="max",
                                               sampler=optuna.samplers.RandomSampler(seed=0))
                               for p, space in spaces.items()}, {"distill": 4, "baseline": 2},
                              {p: {"phase": p} for p in spaces})
    configs = [searcher.suggest(f"t{i}") for i in range(6)]
    assert [c["phase"] for c in configs] == ["distill", "baseline", "distill", "distill",
                                             "baseline", "distill"]
    assert all(set(c) == {"phase", *spaces[c["phase"]]} for c in configs)
    assert searcher.suggest("t6") == Searcher.FINISHED
    for i, c in enumerate(configs):  # each result reaches the study that suggested it
        searcher.on_trial_complete(f"t{i}", {"val_acc": 0.5, "phase": c["phase"]})
    assert [len(searcher.searchers[p]._ot_study.trials) for p in spaces] == [4, 2]
    assert all(t.state.name == "COMPLETE" for p in spaces
               for t in searcher.searchers[p]._ot_study.trials)


def test_per_width_arms_split_the_budget_and_stop_within_a_width() -> None:
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    cfg = load_config(QUICKSTART, ["search.per_width=true", "search.num_samples=10",
                                   "search.baseline_num_samples=3"])
    arms = arm_specs(cfg, ["distilled", "baseline"])
    widths = [8, 16, 32, 64]
    assert [a for a in arms] == [f"distill:w{w}" for w in widths] + [
        f"baseline:w{w}" for w in widths[:3]]  # 3 baseline trials: the fourth width gets none
    assert [v[1] for v in arms.values()] == [3, 3, 2, 2, 1, 1, 1]
    assert all(v[2] == {"width": int(a.split(":w")[1]), "phase": a.split(":")[0]}
               for a, v in arms.items())
    assert {d.name for d in arms["distill:w8"][0]} == {"temperature", "alpha", "lr"}
    assert {d.name for d in arms["baseline:w8"][0]} == {"lr"}
    assert list(arm_specs(load_config(QUICKSTART, ["search.per_width=false"]), ["distilled"])) == [
        "distill"]

    scheduler = PhaseScheduler({a: ASHAScheduler(time_attr="epoch", max_t=8, grace_period=1,
                                                  reduction_factor=2) for a in arms},
                                per_width=True)
    assert scheduler.set_search_properties("val_acc", "max")
    trials = [Trial("t", config={"phase": "distill", "width": w}, trial_id=f"t{i}", stub=True)
              for i, w in enumerate([64, 64, 8])]
    for t in trials:
        scheduler.on_trial_add(None, t)
    acts = [scheduler.on_trial_result(None, t, {"epoch": 1, "val_acc": acc})
            for t, acc in zip(trials, [0.95, 0.5, 0.3])]
    # the narrow student is far below the wide ones, but compared with its own width alone
    assert acts == [TrialScheduler.CONTINUE, TrialScheduler.STOP, TrialScheduler.CONTINUE]


def test_per_width_without_a_searched_width_changes_nothing() -> None:
    cfg = load_config(QUICKSTART, ["search.per_width=true", "search.space={lr: {distribution: "
                                   "loguniform, low: 0.001, high: 0.1}}"])
    assert list(arm_specs(cfg, ["distilled", "baseline"])) == ["distill", "baseline"]


def test_tpe_draws_its_first_startup_trials_at_random_then_learns() -> None:
    # search.startup_trials reaches the sampler of every searcher: TPE draws that many trials as
    # random search does (the same seed, the same draws), then its own; null keeps Optuna's 10
    import optuna

    search = load_config(QUICKSTART).search
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    def draws(**changes: Any) -> list[float]:
        study = optuna.create_study(sampler=sampler(dataclasses.replace(search, **changes), 7),
                                    direction="maximize")
        out = []
        for _ in range(12):
            trial = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
            out.append(trial.params["x"])
            study.tell(trial, -(trial.params["x"] - 0.3) ** 2)
        return out

    random = draws(algorithm="random")
    three, default = draws(startup_trials=3), draws(startup_trials=None)
    assert three[:3] == random[:3]
    assert all(a != b for a, b in zip(three[3:], random[3:]))
    assert default[:10] == random[:10] and default[10:] != random[10:]


def test_a_search_too_small_for_tpe_says_it_is_random_search() -> None:
    def note(*sets: str) -> str | None:
        cfg = load_config(QUICKSTART, list(sets))
        return random_search_note(cfg, ["distilled", "baseline"] if cfg.search.baseline
                                   else ["distilled"])

    assert note() is None  # 48 trials over 4 widths: 12 per width, 2 of them TPE's
    assert note("search.num_samples=32") == (
        "note: TPE draws its first 10 trials per width at random, and this search has as few "
        "as 8 per width: random search with ASHA there (raise search.num_samples, or lower "
        "search.startup_trials, for TPE's own suggestions)")
    assert note("search.num_samples=32", "search.startup_trials=4") is None
    assert note("search.num_samples=32", "search.algorithm=random") is None
    # one searcher over all widths: the phase's whole budget counts
    assert note("search.num_samples=10", "search.per_width=false") is not None
    assert note("search.num_samples=11", "search.per_width=false") is None
    # either kind's searcher: the distilled or the baseline
    assert "as few as 8:" in note("search.num_samples=8", "search.per_width=false",
                                  "search.baseline_num_samples=16")
    assert "as few as 8:" in note("search.num_samples=16", "search.per_width=false",
                                  "search.baseline_num_samples=8")
    assert note("search.num_samples=16", "search.per_width=false", "search.baseline=false",
                "search.baseline_num_samples=8") is None
    # a baseline with nothing to search (width alone, per width) has no searcher to speak of
    cfg = load_config(QUICKSTART, ["search.baseline_num_samples=4"])
    no_lr = dataclasses.replace(cfg, search=dataclasses.replace(
        cfg.search, space=tuple(d for d in cfg.search.space if d.name != "lr")))
    assert random_search_note(no_lr, ["distilled", "baseline"]) is None
    assert random_search_note(cfg, ["distilled", "baseline"]) is not None


def test_a_budget_that_leaves_a_loss_or_width_without_a_trial_says_so() -> None:
    def note(space: Path, *sets: str) -> str | None:
        return unsearched_note(load_config(space, list(sets)), ["distilled", "baseline"])

    assert note(QUICKSTART) is None and note(LOSSES) is None
    assert note(QUICKSTART, "search.num_samples=3", "search.baseline_num_samples=4") == (
        "note: 3 distilled trials for 4 widths: only the first get a trial; raise "
        "search.num_samples (and search.baseline_num_samples) to tune them all")
    # 3 losses × 3 widths: 9 arms of distilled trials, 3 of baseline ones
    assert note(LOSSES, "search.num_samples=8", "search.baseline_num_samples=2") == (
        "note: 8 distilled trials for 3 losses × 3 widths; 2 baseline trials for 3 widths: "
        "only the first get a trial; raise search.num_samples (and "
        "search.baseline_num_samples) to tune them all")
    assert note(LOSSES, "search.num_samples=9", "search.per_width=false") is None
    assert note(LOSSES, "search.num_samples=2", "search.per_width=false") == (
        "note: 2 distilled trials for 3 losses: only the first get a trial; raise "
        "search.num_samples (and search.baseline_num_samples) to tune them all")


def test_each_searcher_draws_its_own_random_numbers() -> None:
    assert searcher_seed(7, "distill", False) == 7  # Optuna's own seed, as before
    one = {searcher_seed(7, arm, False) for arm in ("distill", "baseline")}
    per_width = {searcher_seed(7, arm, True)
                 for arm in ("distill:w8", "distill:w16", "baseline:w8", "baseline:w16")}
    assert len(one) == 2 and len(per_width) == 4
