"""Config files -> ExperimentConfig: each bad value is one ConfigError naming file, key, value."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from kdsearch.config import (ConfigError, Dimension, ExperimentConfig, config_from_dict,
                             config_to_dict, dump_config, load_config, with_params)
from kdsearch.yamlfile import apply_overrides, parse_override, read_yaml


def _write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    return message


# (YAML text, the key the message must name, the value it must show)
BAD_VALUES = {
    "unknown dataset": ("dataset: {name: imagenet}", "dataset.name", "imagenet"),
    "unknown student model": ("student: {model: resnet50}", "student.model", "resnet50"),
    "unknown teacher model": ("teacher: {model: vit}", "teacher.model", "vit"),
    "unknown optimizer": ("training: {optimizer: lion}", "training.optimizer", "lion"),
    "alpha above 1": ("training: {alpha: 1.5}", "training.alpha", "1.5"),
    "alpha below 0": ("training: {alpha: -0.1}", "training.alpha", "-0.1"),
    "alpha not a number": ("training: {alpha: high}", "training.alpha", "high"),
    "alpha nan": ("training: {alpha: .nan}", "training.alpha", "nan"),
    "temperature 0": ("training: {temperature: 0}", "training.temperature", "0"),
    "temperature negative": ("training: {temperature: -2.5}", "training.temperature", "-2.5"),
    "temperature infinite": ("training: {temperature: .inf}", "training.temperature", "inf"),
    "student width 0": ("student: {width: 0}", "student.width", "0"),
    "teacher width 0": ("teacher: {width: 0}", "teacher.width", "0"),
    "width not an integer": ("student: {width: 2.5}", "student.width", "2.5"),
    "width a boolean": ("student: {width: true}", "student.width", "True"),
    "batch size 0": ("training: {batch_size: 0}", "training.batch_size", "0"),
    "lr 0": ("training: {lr: 0}", "training.lr", "0"),
    "negative split seed": ("dataset: {split_seed: -1}", "dataset.split_seed", "-1"),
    "section not a mapping": ("training: 3", "training", "3"),
    "shift too large for digits": ("training: {shift: 3}", "training.shift", "3"),
    # the teacher's shift too: 100 px blanked 99% of its training images
    "teacher shift too large": ("teacher: {shift: 100}", "teacher.shift", "100"),
    "shift too large for mnist": ("dataset: {name: mnist}\nteacher: {shift: 8}", "teacher.shift",
                                  "8"),
    # Ray takes a share of one GPU or whole GPUs: 1.5 failed inside Tune
    "gpus per trial 1.5": ("search: {gpus_per_trial: 1.5}", "search.gpus_per_trial", "1.5"),
    # float32 softened targets are uniform at such temperatures
    "temperature too high": ("training: {temperature: 1.0e+5}", "training.temperature",
                             "100000"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES), ids=list(BAD_VALUES))
def test_bad_value_names_file_key_and_value(tmp_path: Path, case: str) -> None:
    text, key, value = BAD_VALUES[case]
    message = _error(_write(tmp_path, text))
    assert key in message
    assert value in message.split(key, 1)[1]  # after the key: the path may hold digits too


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, "trainig:\n  epochs: 3\n"))
    assert "unknown key trainig" in message
    assert "training" in message  # the allowed keys are listed


@pytest.mark.parametrize("section,key", [("training", "temprature"), ("dataset", "path"),
                                         ("teacher", "widht"), ("search", "samples"),
                                         ("report", "seed")])
def test_unknown_key_in_section_is_named(tmp_path: Path, section: str, key: str) -> None:
    message = _error(_write(tmp_path, f"{section}:\n  {key}: 1\n"))
    assert f"unknown key {section}.{key}" in message


# (search.space YAML, the key the message must name, the value it must show)
BAD_SPACES: dict[str, tuple[str, str, str | None]] = {
    "unknown dimension": ("momentum: {distribution: uniform, low: 0.1, high: 0.9}",
                          "search.space.momentum", None),  # the key is the bad value
    "bad distribution": ("lr: {distribution: gaussian, low: 0.001, high: 0.1}",
                         "search.space.lr.distribution", "gaussian"),
    "low above high": ("temperature: {distribution: uniform, low: 10, high: 2}",
                       "search.space.temperature", "10"),
    "low equals high": ("alpha: {distribution: uniform, low: 0.5, high: 0.5}",
                        "search.space.alpha", "0.5"),
    "loguniform low 0": ("alpha: {distribution: loguniform, low: 0, high: 1}",
                         "search.space.alpha.low", "0"),
    "loguniform lr low 0": ("lr: {distribution: loguniform, low: 0, high: 0.1}",
                            "search.space.lr.low", "0"),
    "loguniform low negative": ("lr: {distribution: loguniform, low: -1.0e-3, high: 0.1}",
                                "search.space.lr.low", "-0.001"),
    "choice with a number": ("width: {distribution: choice, values: 8}",
                             "search.space.width.values", "8"),
    "choice with a string": ("width: {distribution: choice, values: small}",
                             "search.space.width.values", "small"),
    "choice value out of range": ("alpha: {distribution: choice, values: [0.1, 2.0]}",
                                  "search.space.alpha.values", "2.0"),
    "unknown key in a dimension": ("lr: {distribution: uniform, low: 0.1, high: 0.2, log: 1}",
                                   "search.space.lr.log", None),
    "float distribution on an integer": ("width: {distribution: uniform, low: 8, high: 64}",
                                         "search.space.width.distribution", "uniform"),
}


@pytest.mark.parametrize("case", list(BAD_SPACES), ids=list(BAD_SPACES))
def test_bad_search_space_names_file_key_and_value(tmp_path: Path, case: str) -> None:
    text, key, value = BAD_SPACES[case]
    message = _error(_write(tmp_path, f"search:\n  space:\n    {text}\n"))
    assert key in message
    if value is not None:
        assert value in message.split(key, 1)[1]


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    message = _error(tmp_path / "nope.yaml")
    assert "no such file" in message


def test_unparsable_yaml_names_the_line(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, "training:\n  epochs: [1, 2\n"))
    assert "does not parse" in message
    assert "line" in message


def test_a_key_written_twice_is_refused_and_merge_keys_still_load(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, "training:\n  lr: 3.0e-3\n  epochs: 4\n  lr: 5.0\n"))
    assert "'lr' appears twice" in message and "line 4" in message
    merged = _write(tmp_path, "base: &b {epochs: 4, lr: 1.0e-3}\n", "merge.yaml")
    merged.write_text(merged.read_text() + "training:\n  <<: *b\n  lr: 3.0e-3\n")

    assert read_yaml(merged)["training"] == {"epochs": 4, "lr": 3.0e-3}


def test_yaml_cannot_construct_objects(tmp_path: Path) -> None:
    # PyYAML's unsafe loader would run this; the safe loader refuses the tag
    marker = tmp_path / "ran"
    path = _write(tmp_path, f"name: !!python/object/apply:os.mkdir ['{marker}']\n")
    _error(path)
    assert not marker.exists()


def test_empty_file_is_rejected(tmp_path: Path) -> None:
    assert "empty" in _error(_write(tmp_path, ""))


def test_good_file_sets_values_and_keeps_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path, """
dataset: {name: mnist, val_size: 0.1}
student: {model: cnn_student, width: 24}
training: {temperature: 8, alpha: 0.5, lr: 1e-3}
search:
  space:
    lr: {distribution: loguniform, low: 1.0e-4, high: 1.0e-2}
    width: {distribution: int, low: 8, high: 64, step: 8}
    alpha: {distribution: choice, values: [0.1, 0.5]}
""")
    cfg = load_config(path)
    assert cfg.name == "exp"  # the file's stem when the file names none
    assert cfg.dataset.name == "mnist" and cfg.dataset.val_size == 0.1
    assert cfg.student == dataclasses.replace(cfg.student, model="cnn_student", width=24)
    assert cfg.training.temperature == 8.0 and isinstance(cfg.training.temperature, float)
    assert cfg.training.lr == 1e-3  # PyYAML reads 1e-3 as a string; it is coerced
    assert cfg.training.epochs == ExperimentConfig().training.epochs
    assert cfg.search.space == (
        Dimension("lr", "loguniform", low=1e-4, high=1e-2),
        Dimension("width", "int", low=8, high=64, step=8),
        Dimension("alpha", "choice", values=(0.1, 0.5)),
    )


def test_parse_override() -> None:
    assert parse_override("search.num_samples=8") == (["search", "num_samples"], 8)
    assert parse_override("training.lr=1.0e-3") == (["training", "lr"], 1e-3)
    assert parse_override("student.model=cnn_student") == (["student", "model"], "cnn_student")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("search.num_samples")
    with pytest.raises(ConfigError, match="dotted path"):
        parse_override("search..num_samples=3")


def test_overrides_apply_and_are_validated(tmp_path: Path) -> None:
    path = _write(tmp_path, "search: {num_samples: 16}\ntraining: {alpha: 0.3}\n")
    cfg = load_config(path, ["search.num_samples=8", "training.temperature=2",
                             "student.width=7"])
    assert cfg.search.num_samples == 8
    assert cfg.training.temperature == 2.0
    assert cfg.training.alpha == 0.3
    assert cfg.student.width == 7
    with pytest.raises(ConfigError, match=r"training\.alpha = 1\.5"):
        load_config(path, ["training.alpha=1.5"])
    with pytest.raises(ConfigError, match="is not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_with_params_sets_the_searched_values() -> None:
    cfg = ExperimentConfig()
    trial = with_params(cfg, {"temperature": 7, "alpha": 0.25, "lr": 0.01, "width": 48.0,
                              "batch_size": 32, "weight_decay": 1e-4, "epochs": 3})
    assert trial.training.temperature == 7.0 and isinstance(trial.training.temperature, float)
    assert trial.training.alpha == 0.25
    assert trial.training.lr == 0.01
    assert trial.student.width == 48 and isinstance(trial.student.width, int)
    assert trial.training.batch_size == 32
    assert trial.training.weight_decay == 1e-4
    assert trial.training.epochs == 3
    assert trial.teacher == cfg.teacher and trial.dataset == cfg.dataset
    assert cfg.training.temperature == 4.0  # the fixed config is untouched


def test_config_to_dict_round_trips(tmp_path: Path) -> None:
    cfg = config_from_dict({
        "name": "round-trip",
        "cache_dir": "/tmp/somewhere",
        "dataset": {"name": "fashion_mnist", "val_size": 2000, "split_seed": 3},
        "teacher": {"model": "cnn_teacher", "width": 32, "epochs": 4, "shift": 2},
        "student": {"model": "cnn_student2", "width": 12},
        "training": {"temperature": 3, "alpha": 0.7, "optimizer": "sgd", "shift": 1},
        "search": {"space": {"temperature": {"distribution": "loguniform", "low": 1,
                                             "high": 20},
                             "epochs": {"distribution": "int", "low": 2, "high": 6, "step": 2},
                             "width": {"distribution": "choice", "values": [8, 16]}},
                   "algorithm": "random", "scheduler": "fifo", "num_samples": 5},
        "report": {"seeds": 2},
    }, source="inline")
    assert cfg != ExperimentConfig()
    assert config_from_dict(config_to_dict(cfg)) == cfg
    # and through the YAML text that is written next to every result
    path = _write(tmp_path, dump_config(cfg), "resolved.yaml")
    assert load_config(path) == cfg
    assert yaml.safe_load(path.read_text())["search"]["space"]["width"]["values"] == [8, 16]


def test_the_config_reference_loads_and_names_every_key() -> None:
    # docs/configuration.md's annotated config is the reference users copy from: it must be a
    # valid config, and a key added to the code must be documented there
    from kdsearch.config import SECTIONS, TOP_LEVEL

    docs = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    blocks = [b.split("```", 1)[0] for b in docs.split("```yaml\n")[1:]]
    reference = [b for b in blocks if b.startswith("name: ") and "\nsearch:" in b]
    assert len(reference) == 1, "docs/configuration.md has one full config example"
    raw = yaml.safe_load(reference[0])
    config_from_dict(raw, source="docs/configuration.md")
    assert set(raw) == set(TOP_LEVEL)
    for section, cls in SECTIONS.items():
        assert set(raw[section]) == {f.name for f in dataclasses.fields(cls)}, section


def test_widths_beyond_any_machine_are_refused_when_read() -> None:
    """A width of 10**12 passed validation and then overflowed torch's size arithmetic in the
    driver (a traceback, no trial to fail alone); 2**20 units is the most a config takes."""
    quickstart = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"
    assert load_config(quickstart, [f"student.width={2**20}"]).student.width == 2**20
    for override in (f"student.width={2**20 + 1}", "teacher.width=1000000000000",
                     "search.space.width.values=[8, 1000000000000]"):
        with pytest.raises(ConfigError, match=r"expected an integer in \[1, 1048576\]"):
            load_config(quickstart, [override])


def test_the_largest_value_of_a_dimension_is_one_optuna_can_suggest() -> None:
    """An int with a step stops at the last step below high (Optuna suggests 2, 4, 6 for
    low 2, high 7, step 2): ASHA's max_t and the grace-period check take 6, not 7."""
    from kdsearch.config import check_searchable, largest, max_epochs

    def cfg(**space: Any) -> Any:
        return config_from_dict({"training": {"epochs": 10, "batch_size": 32},
                                 "search": {"space": space, "grace_period": 1}})

    stepped = cfg(epochs={"distribution": "int", "low": 2, "high": 7, "step": 2})
    assert max_epochs(stepped) == 6
    assert max_epochs(cfg(epochs={"distribution": "choice", "values": [3, 9, 5]})) == 9
    assert max_epochs(cfg(lr={"distribution": "loguniform", "low": 1e-3, "high": 1e-1})) == 10
    assert largest(cfg(batch_size={"distribution": "choice", "values": [128, 1024]}),
                   "batch_size", 32) == 1024
    with pytest.raises(ConfigError, match="grace_period = 7 exceeds"):
        check_searchable(dataclasses.replace(
            stepped, search=dataclasses.replace(stepped.search, grace_period=7)), "space.yaml")
    assert config_from_dict({"search": {"gpus_per_trial": 2}}).search.gpus_per_trial == 2


# --------------------------------------------------------------------------- YAML's booleans
def test_off_is_a_word_in_a_file_and_in_set_and_yes_no_on_off_still_set_booleans(
        tmp_path: Path) -> None:
    """YAML 1.1 reads `off` as false, so `fast_step: off` was refused as "False". Booleans are
    YAML 1.2's (true, false); a boolean field still takes yes, no, on and off."""
    path = _write(tmp_path, "training: {fast_step: off}\nsearch: {per_width: yes, baseline: off}\n"
                            "student: {model: my_nets:make, kwargs: {mode: on, strict: false}}\n")
    cfg = load_config(path)
    assert cfg.training.fast_step == "off"
    assert cfg.search.per_width is True and cfg.search.baseline is False
    assert cfg.student.kwargs == {"mode": "on", "strict": False}  # a word, as written
    assert load_config(path, ["training.fast_step=auto"]).training.fast_step == "auto"
    assert load_config(_write(tmp_path, "name: x\n", "plain.yaml"),
                       ["training.fast_step=off"]).training.fast_step == "off"
    # the resolved config reads back the same, through kdsearch's loader and PyYAML's own
    assert config_from_dict(yaml.safe_load(dump_config(cfg))).training.fast_step == "off"
    assert "fast_step = 'maybe'" in _error(_write(tmp_path, "training: {fast_step: maybe}",
                                                  "bad.yaml"))
