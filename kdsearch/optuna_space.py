"""A search space as Optuna's distributions: what each searched dimension can take, for the
samplers, for optuna.db's studies and for the importances."""

from __future__ import annotations

from typing import Any

import optuna.distributions as od

from kdsearch.config import Dimension


def optuna_space(dims: tuple[Dimension, ...]) -> dict[str, Any]:
    """The Optuna distributions of `dims`."""
    space: dict[str, Any] = {}
    for d in dims:
        if d.distribution == "choice":
            space[d.name] = od.CategoricalDistribution(list(d.values or ()))
        elif d.distribution == "int":
            space[d.name] = od.IntDistribution(int(d.low), int(d.high), step=int(d.step or 1))
        else:
            space[d.name] = od.FloatDistribution(float(d.low), float(d.high),
                                                 log=d.distribution == "loguniform")
    return space
