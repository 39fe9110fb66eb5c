"""The searchers and schedulers: one of each per group of trials that is tuned on its own.

Both searches, the distillation search and the baseline (the student alone, alpha = 1), run in
one Tuner. Each kind of student is tuned on its own. With `search.per_width`, each width of it
is tuned on its own too. When several losses are searched (`search.space.loss`), so is each
loss of the distilled student. Such a group of trials is an *arm*. Arms are named "distill",
"baseline", "distill:w16" per width, and "distill:dkd" or "distill:dkd:w16" per loss. One
searcher over all losses would spend its trials on the loss that looks best early. An arm per
loss gives each loss an equal budget and its own searcher, so the report compares equally tuned
losses.

An arm has its own Optuna sampler (TPE, or random search), seeded from `search.seed` and its
name. It also has its own trial budget and its own ASHA (or FIFO) scheduler, so a trial is
stopped early only by comparison with trials of its own arm. `PhaseSearcher` and
`PhaseScheduler` route each trial to its arm's searcher and scheduler. Ray Tune's saved state of
a search names these two classes, so renaming them would stop such a search from resuming.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from kdsearch.config import Dimension, ExperimentConfig, SearchConfig, losses_of, max_epochs
from kdsearch.metrics import EPOCH, VAL_ACC
from kdsearch.optuna_space import optuna_space
from kdsearch.ray_workarounds import restored_trial_configs
from kdsearch.results import (config_of_kind, dimensions, kind_of_config, loss_searched,
                              per_width, searched_widths, trial_budget)
from kdsearch.tables import DISTILLED, PHASE

TPE_STARTUP_TRIALS = 10  # Optuna's TPESampler's n_startup_trials, kept when it is not set


class PhaseSearcher(Searcher):
    """Both searches in one Tuner: a searcher per arm (a kind of student, or a kind and a width
    with search.per_width), each with its own budget and the values it fixes.

    Suggestions alternate so that the arms advance side by side (the arm furthest behind
    its budget goes next); every trial's config names its kind, and results go back to
    the searcher that suggested it. One Tuner starts the trial actors once for both
    kinds, and the cores are shared to the end, instead of idling through the tail and
    start-up between two Tuners.
    """

    def __init__(self, searchers: dict[str, Any], budgets: dict[str, int],
                 fixed: dict[str, dict[str, Any]]) -> None:
        super().__init__(metric=VAL_ACC, mode="max")
        self.searchers = searchers
        self.budgets = budgets
        self.fixed = fixed
        self.suggested = {a: 0 for a in searchers}
        self.arm_of: dict[str, str] = {}  # trial id -> its arm

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        open_ = sorted((self.suggested[a] / self.budgets[a], i, a)
                       for i, a in enumerate(self.searchers)
                       if self.suggested[a] < self.budgets[a])
        if not open_:
            return Searcher.FINISHED
        for _, _, arm in open_:
            searcher = self.searchers[arm]
            # an arm with nothing left to search (only its width) trains its fixed values
            config = searcher.suggest(trial_id) if searcher is not None else {}
            if isinstance(config, dict):
                self.suggested[arm] += 1
                self.arm_of[trial_id] = arm
                return {**config, **self.fixed[arm]}
        return None

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        searcher = self.searchers.get(self.arm_of.get(trial_id, ""))
        if searcher is not None:
            searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        searcher = self.searchers.get(self.arm_of.pop(trial_id, ""))
        if searcher is not None:
            searcher.on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:  # Ray's own experiment state, as Tune does
            self.__dict__.update(pickle.load(f))
        self._match(restored_trial_configs(Path(checkpoint_path)))

    def _match(self, configs: dict[str, dict[str, Any]] | None) -> None:
        """Count each arm's trials from the experiment state that Tune restores with.

        Tune saves the experiment state first and this searcher's state after it. A kill
        between the two leaves a searcher that has not seen the newest trial. It would suggest
        one trial more than the budget, for example 13 trials of 12."""
        if configs is None:
            return
        counts = dict.fromkeys(self.suggested, 0)
        for config in configs.values():
            arm = next((a for a, fixed in self.fixed.items()
                        if all(config.get(k) == v for k, v in fixed.items())), None)
            if arm is not None:
                counts[arm] += 1
        self.suggested = counts
        # a trial that the experiment never had is not coming back. A trial that this searcher
        # never suggested has no Optuna trial to report to, so its results go nowhere.
        self.arm_of = {t: a for t, a in self.arm_of.items() if t in configs}


class PhaseScheduler(FIFOScheduler):
    """A scheduler per arm (ASHA or FIFO): trials are stopped early only by comparison
    with trials of their own kind (and width, with search.per_width), as if each ran
    alone."""

    def __init__(self, schedulers: dict[str, Any], per_width: bool, per_loss: bool = False
                 ) -> None:
        super().__init__()
        self.schedulers = schedulers
        self.per_width = per_width
        self.per_loss = per_loss
        self._supports_buffered_results = all(
            s.supports_buffered_results for s in schedulers.values())

    def _of(self, trial: Any) -> Any:
        loss = trial.config.get("loss") if getattr(self, "per_loss", False) else None
        return self.schedulers[arm_name(kind_of_config(trial.config),
                                        trial.config.get("width") if self.per_width else None,
                                        loss)]

    def set_search_properties(self, metric: str | None, mode: str | None,
                              **spec: Any) -> bool:
        return all([s.set_search_properties(metric, mode, **spec)
                    for s in self.schedulers.values()])

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"{p}: {s.debug_string()}" for p, s in self.schedulers.items())


def _arm_seed(seed: int, arm: str) -> int:
    """A sampler seed per arm, below 2**32 (Optuna's limit), from search.seed and the arm."""
    return int(hashlib.sha256(f"{seed}:{arm}".encode()).hexdigest()[:8], 16)


def searcher_seed(seed: int, arm: str, per_width: bool) -> int:
    """Each arm draws its own sequence from search.seed. With one searcher over all widths the
    distilled arm takes search.seed itself (as Optuna's own seed would), and the baseline its
    own: the same seed would give its first draws the distilled arm's random numbers."""
    return _arm_seed(seed, arm) if per_width or arm != arm_name(DISTILLED, None) else seed


def arm_name(kind: str, width: Any, loss: str | None = None) -> str:
    """An arm's name: its kind as the `phase` column names it, its loss when several are
    searched, and its width with search.per_width ("distill", "baseline:w16",
    "distill:dkd:w16")."""
    name = PHASE[kind] if loss is None else f"{PHASE[kind]}:{loss}"
    return name if width is None else f"{name}:w{width}"


def arm_specs(cfg: ExperimentConfig, kinds: list[str]
              ) -> dict[str, tuple[tuple[Dimension, ...], int, dict[str, Any]]]:
    """arm -> (its searched dimensions, its trial budget, the values it fixes).

    An arm is a kind of student; with search.per_width, a kind and one width, the kind's budget
    split evenly over the widths (the first widths take the remainder).
    """
    out: dict[str, tuple[tuple[Dimension, ...], int, dict[str, Any]]] = {}
    for kind in kinds:
        budget = trial_budget(cfg, kind)
        losses = losses_of(cfg) if kind == DISTILLED and loss_searched(cfg) else (None,)
        widths = searched_widths(cfg) if per_width(cfg) else [None]
        groups = [(loss, w) for loss in losses for w in widths]
        for i, (loss, w) in enumerate(groups):
            share = budget // len(groups) + (i < budget % len(groups))
            fixed = {**({} if w is None else {"width": w}),
                     **({} if loss is None else {"loss": loss}), **config_of_kind(kind)}
            dims = tuple(d for d in dimensions(cfg, kind, loss) if d.name not in fixed)
            if share:
                out[arm_name(kind, w, loss)] = (dims, share, fixed)
    return out


def unsearched_note(cfg: ExperimentConfig, kinds: list[str]) -> str | None:
    """What to tell a user whose budget leaves some arm (a loss or a width) without a trial."""
    short = []
    for kind in kinds:
        losses = losses_of(cfg) if kind == DISTILLED and loss_searched(cfg) else [None]
        widths = searched_widths(cfg) if per_width(cfg) else [None]
        groups = len(losses) * len(widths)
        if trial_budget(cfg, kind) < groups:
            what = " × ".join(f"{n} {name}" for n, name in
                              ((len(losses), "losses"), (len(widths), "widths")) if n > 1)
            short.append(f"{trial_budget(cfg, kind)} {kind} trials for {what}")
    if not short:
        return None
    return (f"note: {'; '.join(short)}: only the first get a trial; raise "
            f"search.num_samples (and search.baseline_num_samples) to tune them all")


def random_search_note(cfg: ExperimentConfig, kinds: list[str]) -> str | None:
    """What to tell a user whose TPE budget never gets past TPE's random start-up trials."""
    s = cfg.search
    startup = s.startup_trials or TPE_STARTUP_TRIALS
    budgets = [n for dims, n, _ in arm_specs(cfg, kinds).values() if dims]  # arms with a searcher
    if s.algorithm != "tpe" or not budgets or min(budgets) > startup:
        return None
    least = min(budgets)
    per = " per width" if per_width(cfg) else ""
    return (f"note: TPE draws its first {startup} trials{per} at random, and this search has "
            f"as few as {least}{per}: random search with {s.scheduler.upper()} there (raise "
            f"search.num_samples, or lower search.startup_trials, for TPE's own suggestions)")


def sampler(search: SearchConfig, seed: int) -> Any:
    """The seeded Optuna sampler of one searcher: TPE, whose first `search.startup_trials`
    (Optuna's 10 when null) are drawn at random, or random search, for comparisons."""
    if search.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=search.startup_trials or TPE_STARTUP_TRIALS)


def make_search(cfg: ExperimentConfig, kinds: list[str]) -> tuple[PhaseSearcher, PhaseScheduler]:
    """A new search's searcher and scheduler: an arm each for every kind (and width)."""
    s = cfg.search
    searchers, schedulers = {}, {}
    specs = arm_specs(cfg, kinds)
    for arm, (dims, _, _) in specs.items():
        # seeded: TPE, or random search (Optuna's RandomSampler) for comparisons
        seed = searcher_seed(s.seed, arm, per_width(cfg))
        searchers[arm] = OptunaSearch(optuna_space(dims), metric=VAL_ACC, mode="max",
                                      sampler=sampler(s, seed)) if dims else None
        schedulers[arm] = (ASHAScheduler(time_attr=EPOCH, max_t=max_epochs(cfg),
                                         grace_period=s.grace_period,
                                         reduction_factor=s.reduction_factor)
                           if s.scheduler == "asha" else FIFOScheduler())
    searcher = PhaseSearcher(searchers, {a: v[1] for a, v in specs.items()},
                             {a: v[2] for a, v in specs.items()})
    return searcher, PhaseScheduler(schedulers, per_width(cfg), loss_searched(cfg))
