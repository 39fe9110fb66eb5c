"""kdsearch: search the hyperparameters of knowledge distillation with Ray Tune.

The Python API, the same functions the CLI (`kdsearch ...`) calls:

- `run_search`: the search, its baseline, the final evaluation and the report;
- `resume_search`: continue an interrupted search;
- `report_search`: retrain the best settings of a results folder and write its report;
- `load_student`: a trained student of a results folder, rebuilt;
- `export_student`: a trained student written as ONNX or torch.export, checked;
- `load_config`: a space file as an `ExperimentConfig`;
- `SearchResult`: what `run_search` and `resume_search` return.

kdsearch's messages go to the logger "kdsearch". Importing kdsearch imports neither Ray nor
torch: each entry point loads its module on first use. Type checkers see the real signatures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdsearch.version import __version__

if TYPE_CHECKING:
    from kdsearch.config import ExperimentConfig, load_config
    from kdsearch.export import export_student
    from kdsearch.search_result import SearchResult
    from kdsearch.search import report_search, resume_search, run_search
    from kdsearch.students import load_student

__all__ = ["__version__", "ExperimentConfig", "SearchResult", "export_student", "load_config",
           "load_student", "report_search", "resume_search", "run_search"]

# name -> the module that defines it, imported when the name is first used
_WHERE = {"ExperimentConfig": "kdsearch.config", "load_config": "kdsearch.config",
          "SearchResult": "kdsearch.search_result", "run_search": "kdsearch.search",
          "resume_search": "kdsearch.search", "report_search": "kdsearch.search",
          "load_student": "kdsearch.students", "export_student": "kdsearch.export"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'kdsearch' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_WHERE[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
