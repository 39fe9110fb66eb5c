"""YAML -> frozen dataclasses, validated once where the input enters.

A config file holds values only: numbers, names and choices. Every check here names the file,
the key, the value and what is allowed, so a typo costs one line of reading, not a traceback.
This module imports neither torch nor ray.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdsearch.entry_points import is_entry_point
from kdsearch.fields import (LOSSES, MAX_WIDTH, VALUE_RULES, at_least, built_in_or_code, coerce,
                             gpu_share_ok, kind_name, kwargs_spec, one_of, optional_rule,
                             positive, rule, seed_spec, spec, target_spec)
from kdsearch.errors import ConfigError, show, show_key
from kdsearch.yamlfile import apply_overrides, read_yaml

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")
IMAGE_SIDE = {"digits": 8, "mnist": 28, "fashion_mnist": 28, "cifar10": 32}
TEACHER_MODELS = ("mlp_teacher", "cnn_teacher")
STUDENT_MODELS = ("mlp_student", "cnn_student", "cnn_student2")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("cosine", "constant")
FAST_STEPS = ("auto", "off")  # training.fast_step: the CPU fast path of fit (kdsearch.fast_step)
TRIAL_LOGS = ("none", "json", "all")  # search.trial_logs: Ray Tune's own per-trial outputs
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
SEARCH_ALGORITHMS = ("tpe", "random")
SCHEDULERS = ("asha", "fifo")

# A searched dimension -> the (section, key) of the config it sets in each trial.
SEARCHABLE: dict[str, tuple[str, str]] = {
    "temperature": ("training", "temperature"),
    "alpha": ("training", "alpha"),
    "lr": ("training", "lr"),
    "width": ("student", "width"),
    "batch_size": ("training", "batch_size"),
    "weight_decay": ("training", "weight_decay"),
    "epochs": ("training", "epochs"),
    "loss": ("training", "loss"),
    "dkd_alpha": ("training", "dkd_alpha"),
    "dkd_beta": ("training", "dkd_beta"),
    "dkd_warmup": ("training", "dkd_warmup"),
    "ls_weight": ("training", "ls_weight"),
}
# Each loss's own parameters (kdsearch.losses): set or searched only with that loss.
LOSS_PARAMS = {"kd": (), "dkd": ("dkd_alpha", "dkd_beta", "dkd_warmup"), "ls_kd": ("ls_weight",)}
# Dimensions that are about distillation: the baseline search drops them (alpha is fixed to 1).
KD_DIMENSIONS = ("temperature", "alpha", "loss", *(p for ps in LOSS_PARAMS.values() for p in ps))


# --------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class DatasetConfig:
    # a built-in dataset, or module:attribute naming a function of yours that returns
    # {"train": (x, y), "test": (x, y)} (optional "val", "num_classes"), used as given
    name: str = spec("digits", str, *built_in_or_code(DATASETS, "dataset function"))
    # int: that many examples. float in (0, 1): that fraction of the training set.
    # null: 5,000 for MNIST-sized sets, 15% for small ones.
    val_size: float | None = spec(None, (int, float), lambda v: 0 < v < 1 or (
        v >= 1 and float(v).is_integer()), "an integer count or a fraction in (0, 1)",
        optional=True)
    split_seed: int = seed_spec()
    # null: $KDSEARCH_DATA_DIR, else ~/.cache/kdsearch/data
    data_dir: str | None = spec(None, str, optional=True)


@dataclass(frozen=True)
class TeacherConfig:
    model: str = spec("mlp_teacher", str, *built_in_or_code(TEACHER_MODELS, "model class"))
    kwargs: dict[str, Any] = kwargs_spec("a model of yours (teacher.model = module:attribute)")
    # a state_dict of teacher.model (torch.save(model.state_dict(), path)), as a path relative
    # to the space file. It is loaded with weights_only=True, and the teacher is not trained.
    checkpoint: str | None = spec(None, str, optional=True)
    # a .npy file of the teacher's logits on the training rows (N x classes), as a path relative
    # to the space file. It is for a teacher that cannot run here. training.shift must be 0.
    logits: str | None = spec(None, str, optional=True)
    width: int | None = spec(None, int, lambda v: 1 <= v <= MAX_WIDTH,
                              f"an integer in [1, {MAX_WIDTH}] (null: the family's default width)",
                              optional=True)
    dropout: float = spec(0.5, float, lambda v: 0 <= v < 1, "a number in [0, 1)")
    epochs: int = rule("epochs", 10)
    batch_size: int = rule("batch_size", 128)
    lr: float = rule("lr", 1e-3)
    weight_decay: float = rule("weight_decay", 0.0)
    shift: int = spec(0, int, at_least(0), "an integer >= 0 (pixels of random translation)")
    seed: int = seed_spec()


@dataclass(frozen=True)
class StudentConfig:
    model: str = spec("mlp_student", str, *built_in_or_code(STUDENT_MODELS, "model factory"))
    kwargs: dict[str, Any] = kwargs_spec("make_student(width=W, **kwargs)")
    # mlp_student: units in each of the two hidden layers. cnn_*: channels of the first conv
    # (96 in the "seed 001" blog post's CNNs); the other layers scale by the same factor.
    width: int = rule("width", 20)


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = rule("epochs", 10)
    batch_size: int = rule("batch_size", 128)
    lr: float = rule("lr", 5e-3)  # peak learning rate
    # cosine: lr decays to 0 over `epochs`, step by step. With it, a width-20 MNIST student
    # reaches 0.95 val accuracy in 3 epochs. With a constant lr it takes 5 or more.
    lr_schedule: str = spec("cosine", str, *one_of(LR_SCHEDULES))
    weight_decay: float = rule("weight_decay", 0.0)
    optimizer: str = spec("adam", str, *one_of(OPTIMIZERS))
    temperature: float = rule("temperature", 4.0)  # (the base temperature of ls_kd)
    alpha: float = rule("alpha", 0.3)  # weight of the hard-label loss; 1 = no teacher
    # the distillation loss (kdsearch.losses): kd (Hinton's), dkd (decoupled KD) or ls_kd (KD of
    # standardised logits). Each loss's own weights follow. null means the loss's default.
    loss: str = spec("kd", str, *one_of(LOSSES))
    dkd_alpha: float | None = optional_rule("dkd_alpha")  # null: 1.0
    dkd_beta: float | None = optional_rule("dkd_beta")  # null: 8.0
    dkd_warmup: int | None = optional_rule("dkd_warmup")  # null: a twelfth of epochs
    ls_weight: float | None = optional_rule("ls_weight")  # null: 1.0
    shift: int = spec(0, int, at_least(0),
                       "an integer >= 0 (pixels; > 0 makes the teacher run online)")
    seed: int = seed_spec()
    # auto: the written-out MLP step and fused Adam on the CPU (kdsearch.fast_step), autograd
    # elsewhere. off: autograd and torch.optim everywhere. Both do the same arithmetic, up to
    # rounding.
    fast_step: str = spec("auto", str, *one_of(FAST_STEPS))


@dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter and its distribution."""

    name: str
    distribution: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    values: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class SearchConfig:
    space: tuple[Dimension, ...] = ()
    algorithm: str = spec("tpe", str, *one_of(SEARCH_ALGORITHMS))
    # how many of TPE's first trials are drawn at random, per searcher (per width with
    # per_width). null: Optuna's 10.
    startup_trials: int | None = spec(None, int, at_least(1), "an integer >= 1",
                                       optional=True)
    scheduler: str = spec("asha", str, *one_of(SCHEDULERS))
    num_samples: int = spec(16, int, at_least(1), "an integer >= 1")
    # null: as many at once as the resources allow
    max_concurrent_trials: int | None = spec(None, int, at_least(1), "an integer >= 1",
                                              optional=True)
    grace_period: int = spec(1, int, at_least(1), "an integer >= 1 (epochs)")
    reduction_factor: int = spec(3, int, at_least(2), "an integer >= 2")
    seed: int = seed_spec()
    cpus_per_trial: float = spec(1.0, float, positive, "a number > 0")
    # null: when the cluster has GPUs, a share of a GPU worked out from the model and data size.
    # Ray takes a share of one GPU or whole GPUs. Tune refuses 1.5.
    gpus_per_trial: float | None = spec(None, float, gpu_share_ok,
                                         "a number in [0, 1], or a whole number of GPUs",
                                         optional=True)
    # k: each trial takes 1/k of a GPU. null: as many trials a GPU as its memory and the packing
    # limit allow (see gpus_per_trial). Set this or gpus_per_trial, not both.
    trials_per_gpu: int | None = spec(None, int, lambda v: 1 <= v <= 10_000,
                                       "an integer in [1, 10000]", optional=True)
    max_failures: int = spec(1, int, at_least(0), "an integer >= 0 (retries of a crashing trial)")
    # a trial saves a checkpoint when this many seconds have passed since its last one (0: every
    # epoch). A killed search resumes unfinished trials from their last checkpoint.
    checkpoint_every_s: float = spec(2.0, float, lambda v: v >= 0, "a number >= 0 (seconds)")
    # when width is searched, each width gets an equal share of the trials and its own searcher.
    # Early stopping compares a trial only with trials of its own width. So every width is tuned
    # equally.
    per_width: bool = spec(False, bool)
    baseline: bool = spec(True, bool)  # also tune the student alone (alpha = 1)
    # Ray Tune's own per-trial outputs, in each trial's folder of the experiment. none: no
    # outputs. json: result.json and params.json, which ray.tune.ExperimentAnalysis reads. all:
    # also progress.csv, and TensorBoard events when tensorboardX is installed. true means all,
    # false means none. json cost the quickstart 5.3% of its wall time (bench/trial_logs.py).
    trial_logs: str = spec("none", (str, bool), lambda v: isinstance(v, bool) or v in TRIAL_LOGS,
                           "one of none, json, all (true: all, false: none)",
                           convert=lambda v: ("all" if v else "none") if isinstance(v, bool)
                           else v)
    # null: the same budget as the distillation search
    baseline_num_samples: int | None = spec(None, int, at_least(1), "an integer >= 1",
                                             optional=True)


@dataclass(frozen=True)
class ReportConfig:
    seeds: int = spec(3, int, at_least(1), "an integer >= 1 (retrainings per setting)")
    max_widths: int = spec(6, int, at_least(1), "an integer >= 1")
    # the accuracy that the answer's student must reach. {within_teacher: P} means P points
    # below the teacher's test accuracy. {accuracy: A} means a test accuracy of A percent.
    target: dict[str, float] = target_spec()


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    dataset: DatasetConfig = DatasetConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    training: TrainingConfig = TrainingConfig()
    search: SearchConfig = SearchConfig()
    report: ReportConfig = ReportConfig()
    cache_dir: str | None = None  # null: $KDSEARCH_CACHE_DIR, else ~/.cache/kdsearch
    # the folder where a user's modules (module:attribute names) are looked for first: the
    # space file's folder. It is recorded so that resume, report and load_student find them.
    # null: the config names no module.
    code_dir: str | None = None


SECTIONS: dict[str, type] = {
    "dataset": DatasetConfig, "teacher": TeacherConfig, "student": StudentConfig,
    "training": TrainingConfig, "search": SearchConfig, "report": ReportConfig,
}
TOP_LEVEL = ("name", "cache_dir", "code_dir", *SECTIONS)


# --------------------------------------------------------------------------- parsing
def _fail(source: str, key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{source}: {key} = {show(value)} is not allowed: expected {allowed}")


def _build_section(cls: type, raw: Any, section: str, source: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _fail(source, section, raw, "a mapping of keys to values")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{source}: unknown key {section}.{show_key(key)}; allowed keys "
                              f"in {section}: {', '.join(known)}")
    values: dict[str, Any] = {}
    for name, f in known.items():
        if name not in raw:
            continue
        value = raw[name]
        meta = f.metadata
        key = f"{section}.{name}"
        if value is None:
            if meta.get("optional"):
                values[name] = None
                continue
            raise _fail(source, key, value, meta.get("allowed") or kind_name(meta["kind"]))
        ok, value = coerce(value, meta["kind"])
        allowed = meta.get("allowed") or kind_name(meta["kind"])
        if not ok:
            raise _fail(source, key, raw[name], allowed)
        check = meta.get("check")
        if check is not None and not check(value):
            raise _fail(source, key, raw[name], allowed)
        convert = meta.get("convert")
        values[name] = convert(value) if convert is not None else value
    return cls(**values)


def _check_value(source: str, key: str, dim: str, value: Any) -> Any:
    kind, check, allowed = VALUE_RULES[dim]
    ok, coerced = coerce(value, kind)
    if not ok or not check(coerced):
        raise _fail(source, key, value, allowed)
    return coerced


def _build_dimension(name: Any, raw: Any, source: str) -> Dimension:
    key = f"search.space.{show_key(name)}"
    if name not in SEARCHABLE:
        raise ConfigError(f"{source}: unknown key {key}; searchable dimensions: "
                          f"{', '.join(SEARCHABLE)}")
    if not isinstance(raw, dict):
        raise _fail(source, key, raw, "a mapping such as {distribution: uniform, low: 0, high: 1}")
    allowed_keys = ("distribution", "low", "high", "step", "values")
    for k in raw:
        if k not in allowed_keys:
            raise ConfigError(f"{source}: unknown key {key}.{show_key(k)}; allowed keys: "
                              f"{', '.join(allowed_keys)}")
    dist = raw.get("distribution")
    if dist not in DISTRIBUTIONS:
        raise _fail(source, f"{key}.distribution", dist, "one of " + ", ".join(DISTRIBUTIONS))
    integer_dim = VALUE_RULES[name][0] is int
    if dist == "choice":
        for k in ("low", "high", "step"):
            if k in raw:
                raise ConfigError(f"{source}: {key}.{k} does not go with distribution choice; "
                                  f"give values: [...]")
        values = raw.get("values")
        if not isinstance(values, list) or not values:
            raise _fail(source, f"{key}.values", values, "a non-empty list")
        checked = tuple(_check_value(source, f"{key}.values", name, v) for v in values)
        if len(set(checked)) != len(checked):
            raise _fail(source, f"{key}.values", values, "a list without repeated values")
        return Dimension(name=name, distribution=dist, values=checked)
    if "values" in raw:
        raise ConfigError(f"{source}: {key}.values goes with distribution choice only; "
                          f"give low and high for {dist}")
    if VALUE_RULES[name][0] is str:  # (the loss: a name)
        raise _fail(source, f"{key}.distribution", dist, "choice (the values are names)")
    if integer_dim and dist != "int" :
        raise _fail(source, f"{key}.distribution", dist, "int or choice (integer dimension)")
    if dist == "int" and not integer_dim:
        raise _fail(source, f"{key}.distribution", dist, "uniform, loguniform or choice")
    for k in ("low", "high"):
        if k not in raw:
            raise ConfigError(f"{source}: {key}.{k} is missing; {dist} needs low and high")
    low = _check_value(source, f"{key}.low", name, raw["low"])
    high = _check_value(source, f"{key}.high", name, raw["high"])
    if not low < high:
        raise ConfigError(f"{source}: {key}: low = {raw['low']!r} must be below high = "
                          f"{raw['high']!r}")
    if dist == "loguniform" and low <= 0:
        raise _fail(source, f"{key}.low", raw["low"], "a number > 0 for loguniform")
    step = None
    if "step" in raw:
        if dist != "int":
            raise ConfigError(f"{source}: {key}.step goes with distribution int only")
        ok, step = coerce(raw["step"], int)
        if not ok or step < 1 or step > high - low:
            raise _fail(source, f"{key}.step", raw["step"],
                        f"an integer between 1 and high - low = {high - low}")
    return Dimension(name=name, distribution=dist, low=low, high=high, step=step)


def _build_search(raw: Any, source: str) -> SearchConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _fail(source, "search", raw, "a mapping of keys to values")
    rest = {k: v for k, v in raw.items() if k != "space"}
    base = _build_section(SearchConfig, rest, "search", source)
    space_raw = raw.get("space")
    if space_raw is None:
        space_raw = {}
    if not isinstance(space_raw, dict):  # `space: 0` and `space: []` are slips, not "empty"
        raise _fail(source, "search.space", space_raw, "a mapping of dimension names to "
                    "distributions")
    dims = tuple(_build_dimension(n, d, source) for n, d in space_raw.items())
    return dataclasses.replace(base, space=dims)


def config_from_dict(raw: Any, *, source: str = "<config>") -> ExperimentConfig:
    """Return a parsed YAML mapping as a validated ExperimentConfig. Raise ConfigError if bad."""
    if raw is None:
        raise ConfigError(f"{source}: the file is empty; expected a mapping with dataset, "
                          f"teacher, student, training (and search) sections")
    if not isinstance(raw, dict):
        raise _fail(source, "<top level>", raw, "a mapping with dataset, teacher, student, "
                    "training (and search) sections")
    for key in raw:
        if key not in TOP_LEVEL:
            raise ConfigError(f"{source}: unknown key {show_key(key)}; allowed top-level "
                              f"keys: {', '.join(TOP_LEVEL)}")
    name = raw.get("name", Path(source).stem if source != "<config>" else "experiment")
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name) \
            or name.startswith(".") or len(name.encode()) > 100:  # names the results folder
        raise _fail(source, "name", name, "a name of 1 to 100 letters, digits, '-', '_' or '.', "
                    "not starting with '.'")
    cache_dir = raw.get("cache_dir")
    if cache_dir is not None and not isinstance(cache_dir, str):
        raise _fail(source, "cache_dir", cache_dir, "a path string")
    code_dir = raw.get("code_dir")
    if code_dir is not None and not isinstance(code_dir, str):
        raise _fail(source, "code_dir", code_dir, "a path string")
    sections = {s: _build_section(cls, raw.get(s), s, source)
                for s, cls in SECTIONS.items() if s != "search"}
    cfg = ExperimentConfig(name=name, cache_dir=cache_dir, code_dir=code_dir,
                           search=_build_search(raw.get("search"), source), **sections)
    _check_consistency(cfg, source)
    return cfg


def _check_consistency(cfg: ExperimentConfig, source: str) -> None:
    if cfg.search.gpus_per_trial is not None and cfg.search.trials_per_gpu is not None:
        raise ConfigError(f"{source}: search.gpus_per_trial = {cfg.search.gpus_per_trial:g} and "
                          f"search.trials_per_gpu = {cfg.search.trials_per_gpu} both set the "
                          f"GPU share; keep one")
    t = cfg.teacher
    if t.checkpoint is not None and t.logits is not None:
        raise ConfigError(f"{source}: teacher.checkpoint and teacher.logits are both set; give "
                          f"one (a checkpoint of teacher.model, or the logits of a teacher "
                          f"that cannot run here)")
    if t.logits is not None and cfg.training.shift > 0:
        raise _fail(source, "training.shift", cfg.training.shift, "0 with teacher.logits (the "
                    "logits of the unshifted training examples are all there is)")
    if "width" in cfg.student.kwargs:
        raise ConfigError(f"{source}: student.kwargs has width, which kdsearch passes itself "
                          f"(student.width, or the searched width); remove it from kwargs")
    for section in ("teacher", "student"):
        part = getattr(cfg, section)
        if part.kwargs and part.model in (*TEACHER_MODELS, *STUDENT_MODELS):
            raise ConfigError(f"{source}: {section}.kwargs goes with a model of yours "
                              f"({section}.model = module:attribute), not with the built-in "
                              f"{part.model!r}")
    _check_loss_params(cfg, source)
    # any teacher can teach any student (only the logits are shared): no family check
    side = IMAGE_SIDE.get(cfg.dataset.name)
    for key, shift in (("training.shift", cfg.training.shift),
                       ("teacher.shift", cfg.teacher.shift)):
        # a shift past a quarter of the image moves most of a digit out of the frame
        if side is not None and shift > side // 4:
            raise _fail(source, key, shift, f"at most {side // 4} pixels on the {side}x{side} "
                                            f"images of {cfg.dataset.name}")


def losses_of(cfg: ExperimentConfig) -> tuple[str, ...]:
    """Return the losses the search trains with: the searched `loss` values, else training.loss."""
    for d in cfg.search.space:
        if d.name == "loss" and d.values is not None:
            return tuple(d.values)
    return (cfg.training.loss,)


def _check_loss_params(cfg: ExperimentConfig, source: str) -> None:
    """Check that each loss's own parameters are set or searched only with that loss."""
    losses = losses_of(cfg)
    searched = {d.name for d in cfg.search.space}
    for loss, names in LOSS_PARAMS.items():
        if loss in losses:
            continue
        for name in names:
            value = getattr(cfg.training, name)
            where = (f"search.space.{name}" if name in searched else
                     f"training.{name} = {show(value)}" if value is not None else None)
            if where is not None:
                raise ConfigError(f"{source}: {where} goes with training.loss: {loss} (or {loss} "
                                  f"among search.space.loss.values), and the losses here are "
                                  f"{', '.join(losses)}; remove it or train with {loss}")


def check_searchable(cfg: ExperimentConfig, source: str) -> None:
    """Check what a search needs beyond a valid config.

    The space must not be empty, and ASHA's grace period must fit the epoch budget. `kdsearch
    train` runs one setting without Ray Tune and does not call this check. So it accepts a
    space file whose search part would not run, say with `--set training.epochs=3` under a
    grace period of 5."""
    if not cfg.search.space:
        raise ConfigError(f"{source}: search.space is empty; give at least one dimension "
                          f"(temperature, alpha, lr, width, ...)")
    if cfg.search.scheduler == "asha" and cfg.search.grace_period > max_epochs(cfg):
        raise ConfigError(f"{source}: search.grace_period = {cfg.search.grace_period} exceeds "
                          f"the epoch budget {max_epochs(cfg)}; lower it or raise training.epochs")


def largest(cfg: ExperimentConfig, name: str, fixed: Any) -> Any:
    """Return the largest value that a searched dimension can take, or `fixed` if not searched.

    An int with a step stops at the last step at or below high, as Optuna's suggestions do."""
    for d in cfg.search.space:
        if d.name == name:
            if d.values is not None:
                return max(d.values)
            if d.distribution == "int":
                step = int(d.step or 1)
                return int(d.low) + (int(d.high) - int(d.low)) // step * step
            return d.high
    return fixed


def max_epochs(cfg: ExperimentConfig) -> int:
    """Return the most epochs any trial can run. This is ASHA's max_t."""
    return int(largest(cfg, "epochs", cfg.training.epochs))


# --------------------------------------------------------------------------- files

def load_config(path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()
                ) -> ExperimentConfig:
    """Read, override and validate a config / search-space file."""
    raw = apply_overrides(read_yaml(path), overrides)
    try:
        return _with_paths(config_from_dict(raw, source=str(path)), Path(path))
    except ConfigError as e:
        # name a value that the command line set as the user wrote it, not as the file has it
        rest = str(e).removeprefix(f"{path}: ")
        named = re.match(r"[^ :;]*", rest.removeprefix("unknown key ")).group(0)
        for text in reversed(overrides):  # the last --set of a key is the one that holds
            key = text.partition("=")[0].strip()
            if key and (named == key or named.startswith(f"{key}.") or (
                    key.startswith(f"{named}.") and (rest.startswith("unknown key ") or (
                        named.count(".") >= 1 and _dimension_of(named) is None)))):
                raise ConfigError(f"--set {show(text)}: {rest}") from None
        for text in reversed(overrides):
            # a dimension's keys are checked together (low below high, values with choice
            # only). So an error there comes from the file and the --set of that dimension.
            key = text.partition("=")[0].strip()
            if key.startswith("search.space.") and \
                    _dimension_of(named) == _dimension_of(key) is not None:
                raise ConfigError(f"{path} with --set {show(text)}: {rest}") from None
        raise


def names_code(cfg: ExperimentConfig) -> bool:
    """Return whether the config names a user's module (dataset, teacher or student)."""
    return any(is_entry_point(n) for n in (cfg.dataset.name, cfg.teacher.model,
                                           cfg.student.model))


def _with_paths(cfg: ExperimentConfig, path: Path) -> ExperimentConfig:
    """Return `cfg` with the space file's folder made explicit.

    code_dir is set to the folder when the file names a user's module. The teacher's files,
    given relative to the folder, become absolute paths."""
    folder = path.resolve().parent
    teacher = cfg.teacher
    for key in ("checkpoint", "logits"):
        value = getattr(teacher, key)
        if value is not None:
            teacher = dataclasses.replace(teacher, **{key: str(folder / Path(value).expanduser())})
    code_dir = cfg.code_dir or (str(folder) if names_code(cfg) else None)
    return dataclasses.replace(cfg, teacher=teacher, code_dir=code_dir)


def _dimension_of(key: str) -> str | None:
    """Return `search.space.<name>` for a key under a searched dimension, else None."""
    parts = key.split(".")
    return ".".join(parts[:3]) if len(parts) >= 3 and parts[:2] == ["search", "space"] else None


def config_to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """Return the resolved config as plain values for YAML, in the format load_config reads."""
    out: dict[str, Any] = {"name": cfg.name, "cache_dir": cfg.cache_dir}
    if cfg.code_dir is not None:
        out["code_dir"] = cfg.code_dir
    for section in SECTIONS:
        obj = getattr(cfg, section)
        d = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name != "space"}
        if section == "search":
            space: dict[str, Any] = {}
            for dim in obj.space:
                entry: dict[str, Any] = {"distribution": dim.distribution}
                if dim.values is not None:
                    entry["values"] = list(dim.values)
                else:
                    entry["low"], entry["high"] = dim.low, dim.high
                    if dim.step is not None:
                        entry["step"] = dim.step
                space[dim.name] = entry
            d = {"space": space, **d}
        out[section] = d
    return out


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def with_params(cfg: ExperimentConfig, params: dict[str, Any]) -> ExperimentConfig:
    """Return the config a trial trains: the fixed config with the trial's searched values set."""
    sections: dict[str, dict[str, Any]] = {}
    for name, value in params.items():
        section, key = SEARCHABLE[name]
        kind = VALUE_RULES[name][0]
        sections.setdefault(section, {})[key] = kind(value)
    return dataclasses.replace(cfg, **{s: dataclasses.replace(getattr(cfg, s), **kv)
                                       for s, kv in sections.items()})


def default_cache_dir(cfg: ExperimentConfig | None = None) -> Path:
    if cfg is not None and cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    env = os.environ.get("KDSEARCH_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kdsearch"


def default_data_dir(cfg: ExperimentConfig | None = None) -> Path:
    if cfg is not None and cfg.dataset.data_dir:
        return Path(cfg.dataset.data_dir).expanduser()
    env = os.environ.get("KDSEARCH_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kdsearch" / "data"
