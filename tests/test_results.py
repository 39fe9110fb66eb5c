"""The results folder (`kdsearch.results`): the ranking of trials."""

from __future__ import annotations

import itertools

from kdsearch.results import best_trial
from kdsearch.tables import TrialRow


def test_the_best_trial_does_not_depend_on_the_order_trials_ended_in() -> None:
    """Equal val_acc (a small val split moves in steps of 1/n) is broken by the lower val_loss,
    then the smaller student, whatever the row order of trials.csv."""
    def row(trial_id: str, width: int, acc: str, loss: str, params: int, early: int = 0
            ) -> dict[str, str]:
        return {"phase": "distill", "trial_id": trial_id, "status": "TERMINATED",
                "stopped_early": str(early), "diverged": "0", "width": str(width),
                "val_acc": acc, "val_loss": loss, "params": str(params)}

    rows = [row("a0000001", 64, "0.9861", "0.070", 8970),
            row("a0000002", 16, "0.9861", "0.050", 1530),
            row("a0000003", 32, "0.9861", "0.050", 3530),
            row("a0000004", 8, "0.9907", "0.020", 700, early=1)]  # stopped early: ranked last
    for order in itertools.permutations(rows):
        settings, best = best_trial([TrialRow.from_csv(r) for r in order], "distilled",
                                    ["width"])
        assert settings == {"width": 16} and best.trial_id == "a0000002"
