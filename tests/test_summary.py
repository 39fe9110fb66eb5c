"""kdsearch.summary: a comparison written to summary.json and read back, what the search cost
from its trials, and summary.csv's columns and rows."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import pytest

from kdsearch.answer import Target
from kdsearch.config import ExperimentConfig, config_from_dict, dump_config
from kdsearch.final_record import FinalRecord
from kdsearch.stats import decide, mean_std
from kdsearch.summary import (CSV_FIELDS, Comparison, Context, compare_best, compare_widths,
                              search_cost, summarize, summary_csv)
from kdsearch.tables import BASELINE, DISTILLED, ERROR, RUNNING, TERMINATED, TrialRow

# what a side's front keeps that summary.json does not read back (its bound and latency)
NOT_READ_BACK = {f"{kind}_{name}" for kind in (DISTILLED, BASELINE)
                 for name in ("lower", "meets", "seeds_to_show", "test_examples_to_show",
                              "latency_ms", "batch_latency_ms")}


def _cfg(**search: object) -> ExperimentConfig:
    return config_from_dict({"search": {"num_samples": 6, **search, "space": {
        "lr": {"distribution": "loguniform", "low": 1e-3, "high": 1e-1},
        "width": {"distribution": "choice", "values": [8, 16]}}}})


def _row(kind: str, width: int, accs: list[float | None], best: bool, **settings: float
         ) -> dict:
    mean, std = mean_std([a for a in accs if a is not None])
    return {"kind": kind, "tuned": True, "best": best, "width": width, "params": width * 100,
            "settings": {**settings, "width": width}, "epochs": 5,
            "alpha": 0.3 if kind == DISTILLED else 1.0, "trial_id": f"{kind[0]}{width}",
            "val_acc": 0.9, "search_epochs": 5, "seeds": [0, 1, 2], "test_accs": accs,
            "mean": mean, "std": std, "diverged": sum(a is None for a in accs)}


@pytest.fixture(scope="module")
def final() -> FinalRecord:
    """Two widths retrained with 3 seeds each kind; one baseline seed of width 16 diverged."""
    return FinalRecord.from_json({
        "teacher": {"test_acc": 0.97, "val_acc": 0.97, "params": 100_000},
        "seeds": [0, 1, 2], "data": {"train": 1000, "val": 200, "test": 1000},
        "baseline_tuned": True, "rows": [
            _row(DISTILLED, 8, [0.90, 0.91, 0.905], False, lr=0.01, temperature=4.0),
            _row(BASELINE, 8, [0.88, 0.885, 0.87], False, lr=0.02),
            _row(DISTILLED, 16, [0.95, 0.951, 0.952], True, lr=0.01, temperature=2.0),
            _row(BASELINE, 16, [0.94, None, 0.945], True, lr=0.03)]})


def _context(final: FinalRecord) -> Context:
    return Context(final, Target.of({"within_teacher": 1.0}), None)


def _through_json(record: dict) -> dict:
    return json.loads(json.dumps(record, allow_nan=False))


def test_the_best_comparison_reads_back_from_its_json_record(final: FinalRecord) -> None:
    best = compare_best(_context(final))
    record = best.to_json()
    back = Comparison.from_json(_through_json(record))
    assert back.tests == best.tests and back.decision == best.decision
    assert back.compression == best.compression == 100_000 / 1600
    assert (back.width, back.params) == (16, 1600)
    assert back.side(BASELINE).accs == [0.94, 0.945]
    assert back.side(BASELINE).errors == ["diverged"]
    assert back.side(DISTILLED).settings == {"lr": 0.01, "temperature": 2.0, "width": 16,
                                             "alpha": 0.3, "epochs": 5}
    again = back.to_json()
    assert {k: v for k, v in again.items() if k not in NOT_READ_BACK} == \
        {k: v for k, v in record.items() if k not in NOT_READ_BACK}
    assert back.distilled.status == "unknown"  # the bound is not read back


def test_a_widths_comparison_keeps_its_holm_p_values_and_trial_counts(
        final: FinalRecord) -> None:
    rows = [TrialRow(DISTILLED, f"d{i}", TERMINATED, values={"lr": 0.01, "width": 8},
                     val_acc=0.9, stopped_early=i == 0) for i in range(3)]
    widths = compare_widths(_context(final), rows, _cfg())
    assert [w.width for w in widths] == [8, 16]
    narrow = widths[0]
    assert (narrow.distilled.trials, narrow.distilled.full_trials) == (3, 2)
    record = narrow.to_json()
    assert record["p_value_holm"] == narrow.tests.p_value_holm is not None
    back = Comparison.from_json(_through_json(record), family=len(widths))
    assert back.tests == narrow.tests and back.family == 2
    assert (back.distilled.trials, back.distilled.full_trials) == (3, 2)


def test_a_record_without_a_verdict_is_decided_anew(final: FinalRecord) -> None:
    widths = compare_widths(_context(final), [], _cfg())
    record = widths[0].to_json()
    for name in ("verdict", "significant", "advice", "seeds_needed", "test_examples_needed"):
        del record[name]
    assert Comparison.from_json(record, family=2).decision == decide(widths[0].tests, family=2)
    assert Comparison.from_json(record).decision == decide(widths[0].tests)


def _trial(kind: str, status: str, *, early: bool = False, diverged: bool = False,
           epochs: int = 4, seconds: float = 1.0) -> TrialRow:
    return TrialRow(kind, f"{kind}-{status}-{epochs}", status, stopped_early=early,
                    diverged=diverged, epochs=epochs, training_seconds=seconds)


def test_search_cost_counts_each_kinds_trials_and_sums_the_total() -> None:
    rows = [_trial(DISTILLED, TERMINATED, epochs=10, seconds=3.0),
            _trial(DISTILLED, TERMINATED, early=True, epochs=2),
            _trial(DISTILLED, TERMINATED, diverged=True, epochs=1),
            _trial(DISTILLED, ERROR, epochs=0, seconds=0.5),
            _trial(DISTILLED, RUNNING, epochs=3),
            _trial(BASELINE, TERMINATED, epochs=10, seconds=2.0)]
    run = {"search": {"status": "finished", "wall_seconds": 20.0},
           "hardware": {"cpus": 2, "gpus": 0}, "max_concurrent_trials": 2}
    cost = search_cost(_cfg(baseline_num_samples=3), rows, [], run)
    d, b = cost.kinds[DISTILLED], cost.kinds[BASELINE]
    assert (d.status, d.planned, d.trials) == ("finished", 6, 5)
    assert (d.full_budget, d.stopped_early, d.diverged, d.failed, d.incomplete) == \
        (1, 1, 1, 1, 1)
    assert d.trial_epochs == 10 + 2 + 1 + 0 + 3  # without progress.csv: the epochs each ran
    assert d.training_seconds == 3.0 + 1.0 + 1.0 + 0.5 + 1.0
    assert (b.planned, b.trials, b.full_budget) == (3, 1, 1)
    assert (cost.total.planned, cost.total.trials, cost.total.trial_epochs) == (9, 6, 26)
    assert cost.total.wall_seconds == d.wall_seconds == 20.0  # side by side: one wall time
    assert cost.hardware == {"cpus": 2, "gpus": 0} and cost.max_concurrent_trials == 2
    out = cost.to_json()
    assert set(out["phases"]) == {"distill", "baseline"} and "status" not in out["total"]


def test_search_cost_counts_epochs_from_progress_and_leaves_out_a_kind_not_searched() -> None:
    rows = [_trial(DISTILLED, TERMINATED, epochs=3), _trial(BASELINE, TERMINATED, epochs=7)]
    progress = [{"phase": "distill", "trial_id": "x", "epoch": str(e)} for e in (1, 2)]
    cost = search_cost(_cfg(baseline=False), rows, progress, {})
    assert cost.kinds[DISTILLED].trial_epochs == 2  # the epochs progress.csv recorded
    assert cost.kinds[DISTILLED].status == "not started"  # no run.json
    off = cost.kinds[BASELINE]
    assert (off.status, off.planned) == ("off", 0)
    assert cost.total.trials == 1  # the kind not searched is not in the total


def test_summary_csv_has_a_row_per_comparison_and_the_settings_last(
        final: FinalRecord, tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(dump_config(_cfg()))
    summary = summarize(tmp_path, final)
    text = summary_csv(summary)
    table = list(csv.DictReader(io.StringIO(text)))
    header = text.splitlines()[0].split(",")
    settings = ["distilled_lr", "distilled_temperature", "distilled_alpha", "distilled_epochs",
                "baseline_lr", "baseline_alpha", "baseline_epochs"]
    assert header == [*CSV_FIELDS, *settings]  # width has its own column: not repeated
    assert [r["comparison"] for r in table] == ["best", "width", "width"]
    assert [r["distilled_width"] for r in table] == ["16", "8", "16"]
    best = table[0]
    assert best["distilled_accs"] == "0.95;0.951;0.952"
    assert best["baseline_accs"] == "0.94;0.945"  # the diverged seed has no accuracy
    assert best["baseline_n"] == "2" and best["distilled_temperature"] == "2.0"
    assert best["p_value_holm"] == ""  # the best is its own comparison: no family
    assert table[1]["p_value_holm"] != ""
    assert float(best["difference"]) == pytest.approx(0.951 - 0.9425)
    assert best["verdict"] == summary.best.decision.verdict
    # the best pair is also width 16's pair: the same numbers, with a Holm p-value of its own
    same = ("distilled_accs", "baseline_accs", "difference", "p_value", "distilled_lr")
    assert [table[2][k] for k in same] == [best[k] for k in same]


def test_summary_csv_leaves_the_missing_side_of_a_width_blank(final: FinalRecord,
                                                              tmp_path: Path) -> None:
    # the best baseline's width is retrained even where no distillation trial finished
    rows = [dataclasses.replace(r, best=False) if r.kind == BASELINE else r for r in final.rows]
    wide = FinalRecord.from_json({**final.to_json(), "rows": [
        *[r.to_json() for r in rows], _row(BASELINE, 32, [0.96, 0.96, 0.961], True, lr=0.03)]})
    (tmp_path / "config.yaml").write_text(dump_config(_cfg()))
    table = list(csv.DictReader(io.StringIO(summary_csv(summarize(tmp_path, wide)))))
    assert [(r["comparison"], r["distilled_width"], r["baseline_width"]) for r in table] == [
        ("best", "16", "32"), ("width", "8", "8"), ("width", "16", "16"), ("width", "", "32")]
    alone = table[3]
    assert alone["distilled_accs"] == "" and alone["distilled_lr"] == ""
    assert alone["baseline_accs"] == "0.96;0.96;0.961" and alone["verdict"] == "no_comparison"
