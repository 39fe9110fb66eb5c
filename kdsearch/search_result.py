"""What `run_search` and `resume_search` return: `SearchResult`, the best settings the search
found and, once the report is written, the answer (`Answer`). No torch, no Ray.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdsearch.results import fmt_setting
from kdsearch.summary import SUMMARY_JSON
from kdsearch.tables import TEXT_FIELDS, TRIALS_FILE


@dataclass(frozen=True)
class Pick:
    """A student the answer names: its kind and width, size, accuracy and settings."""

    kind: str  # "distilled" or "baseline" (the student alone)
    width: int
    params: int
    macs: int | None  # multiply-accumulates of one example
    mean: float  # test accuracy over the seeds
    std: float | None
    lower: float | None  # its 95% lower bound
    settings: dict[str, Any]
    latency_ms: float | None  # one example, as the report measured it

    @classmethod
    def of(cls, d: dict[str, Any] | None) -> Pick | None:
        if d is None:
            return None
        return cls(d["kind"], d["width"], d["params"], d.get("macs"), d["mean"], d.get("std"),
                   d.get("lower"), d.get("settings") or {}, d.get("latency_ms"))


@dataclass(frozen=True)
class Answer:
    """The smallest student that meets the target, distilled and alone (report.md's first
    line, `text`)."""

    text: str
    target: dict[str, Any]  # report.target, as {"kind": ..., "value": ...}
    needed: float | None  # the test accuracy the target asks for
    distilled: Pick | None  # None: no distilled width meets it
    baseline: Pick | None  # None: no width meets it alone
    factor: float | None  # baseline parameters / distilled parameters, when both meet it


def read_answer(results_dir: Path) -> Answer | None:
    """The answer of a results folder's report (summary.json), or None without one."""
    try:
        summary = json.loads((Path(results_dir) / SUMMARY_JSON).read_text())
        found = summary["answer"]
        return Answer(summary.get("answer_text", ""), found["target"], found.get("needed"),
                      Pick.of(found.get("distilled")), Pick.of(found.get("baseline")),
                      found.get("factor"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class SearchResult:
    """What a search found: the best settings of each kind, their metrics, every trial as a
    table, and the answer of its report."""

    results_dir: Path
    best_config: dict[str, Any]
    best_metrics: dict[str, Any]
    baseline_config: dict[str, Any] | None
    baseline_metrics: dict[str, Any] | None
    report_path: Path | None = None

    @property
    def trials(self) -> Any:
        """All trials (distilled and baseline) as a pandas DataFrame."""
        import pandas as pd

        table = pd.read_csv(self.results_dir / TRIALS_FILE, dtype=dict.fromkeys(TEXT_FIELDS, str))
        for column in TEXT_FIELDS & set(table.columns):  # an empty text cell is "", not NaN
            table[column] = table[column].fillna("")
        return table

    @property
    def answer(self) -> Answer | None:
        """The smallest student that meets the target (None before a report is written)."""
        return read_answer(self.results_dir)

    def summary_line(self) -> str:
        acc = self.best_metrics.get("val_acc")
        setting = ", ".join(f"{k}={fmt_setting(v)}" for k, v in self.best_config.items())
        line = f"best distilled: val_acc {float(acc):.4f} ({setting})"
        if self.baseline_metrics:
            line += f"; best baseline: val_acc {float(self.baseline_metrics['val_acc']):.4f}"
        line += f"; results in {self.results_dir}"
        if self.report_path:
            line += f"; report {self.report_path}"
        return line
