"""kdsearch.optuna_space: each kind of searched dimension as the Optuna distribution that draws
the same values."""

from __future__ import annotations

import warnings

import optuna.distributions as od

from kdsearch.config import config_from_dict
from kdsearch.optuna_space import optuna_space
from kdsearch.results import searched_widths


def _space(space: dict) -> tuple:
    return config_from_dict({"search": {"space": space}}).search.space


def test_each_distribution_kind_maps_to_its_optuna_distribution() -> None:
    got = optuna_space(_space({
        "lr": {"distribution": "loguniform", "low": 1e-4, "high": 1e-1},
        "alpha": {"distribution": "uniform", "low": 0, "high": 1},
        "batch_size": {"distribution": "int", "low": 16, "high": 128},
        "width": {"distribution": "int", "low": 8, "high": 64, "step": 8},
        "temperature": {"distribution": "choice", "values": [1, 4, 8]},
    }))
    assert list(got) == ["lr", "alpha", "batch_size", "width", "temperature"]  # in file order
    assert got["lr"] == od.FloatDistribution(1e-4, 1e-1, log=True)
    assert got["alpha"] == od.FloatDistribution(0.0, 1.0, log=False)
    assert got["batch_size"] == od.IntDistribution(16, 128, step=1)  # no step: every integer
    assert got["width"] == od.IntDistribution(8, 64, step=8)
    assert got["temperature"] == od.CategoricalDistribution([1.0, 4.0, 8.0])


def test_the_bounds_have_the_dimensions_own_kind() -> None:
    got = optuna_space(_space({"epochs": {"distribution": "int", "low": 2, "high": 10},
                               "weight_decay": {"distribution": "uniform", "low": 0,
                                                "high": 1}}))
    assert isinstance(got["epochs"], od.IntDistribution)
    assert type(got["epochs"].low) is int and type(got["epochs"].high) is int
    assert isinstance(got["weight_decay"], od.FloatDistribution)
    assert type(got["weight_decay"].low) is float


def test_choices_keep_their_values_and_order() -> None:
    got = optuna_space(_space({"width": {"distribution": "choice", "values": [64, 8, 32]},
                               "batch_size": {"distribution": "choice", "values": [128]}}))
    assert got["width"].choices == (64, 8, 32)
    assert got["batch_size"].choices == (128,)
    assert all(type(c) is int for c in got["width"].choices)


def test_an_int_range_draws_the_widths_the_search_counts() -> None:
    # a step that does not divide the range: Optuna stops at the last value reached
    space = {"width": {"distribution": "int", "low": 8, "high": 60, "step": 8}}
    cfg = config_from_dict({"search": {"space": space}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna says it narrows [8, 60] to [8, 56]
        width = optuna_space(cfg.search.space)["width"]
    drawn = list(range(width.low, width.high + 1, width.step))
    assert drawn == searched_widths(cfg) == [8, 16, 24, 32, 40, 48, 56]


def test_no_dimensions_make_an_empty_space() -> None:
    assert optuna_space(()) == {}
