"""kdsearch: search the hyperparameters of knowledge distillation with Ray Tune.

`run_search`, `resume_search`, `report_search` and `make_report` are the Python API, and
`load_student` hands back a trained student of a results folder; the CLI
(`kdsearch ...`) calls the same functions (`report_search` runs the final retrainings as Ray
tasks, `make_report` in this process). Importing kdsearch does not import Ray or torch: each
entry point loads its module on first use.
"""

from __future__ import annotations

from typing import Any

from kdsearch.version import __version__

__all__ = ["__version__", "load_config", "run_search", "resume_search", "report_search",
           "make_report", "load_student"]


def __getattr__(name: str) -> Any:
    if name == "load_config":
        from kdsearch.config import load_config
        return load_config
    if name in ("run_search", "resume_search", "report_search"):
        from kdsearch import search
        return getattr(search, name)
    if name == "load_student":
        from kdsearch.students import load_student
        return load_student
    if name == "make_report":
        from kdsearch.report import make_report
        return make_report
    raise AttributeError(f"module 'kdsearch' has no attribute {name!r}")
