"""The teacher cache: trained once per setting, keyed by content, checked, safe to load, locked."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from kdsearch.config import ExperimentConfig, config_from_dict
from kdsearch.data import Dataset, load_dataset
from kdsearch.teacher import data_sha256, get_teacher, teacher_key


def _cfg(**teacher: Any) -> ExperimentConfig:
    return config_from_dict({"dataset": {"name": "digits"},
                             "teacher": {"width": 64, "epochs": 2, **teacher}})


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    tmp = tmp_path_factory.mktemp("digits")
    return load_dataset(_cfg().dataset, data_dir=tmp, cache_dir=tmp)


class _Collect(logging.Handler):
    def __init__(self, out: list[str]) -> None:
        super().__init__()
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        self.out.append(record.getMessage())


def _get(cfg: ExperimentConfig, data: Dataset, cache: Path, log: list[str] | None = None):
    """get_teacher, with what it logs (kdsearch.teacher's records) appended to `log`."""
    handler = _Collect(log if log is not None else [])
    logger = logging.getLogger("kdsearch.teacher")
    logger.addHandler(handler)
    try:
        return get_teacher(cfg, data, cache_dir=cache)
    finally:
        logger.removeHandler(handler)


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_miss_then_hit(digits: Dataset, tmp_path: Path) -> None:
    cfg, log = _cfg(), []
    first = _get(cfg, digits, tmp_path, log)
    assert first.trained_now
    assert first.path == tmp_path / "teachers" / f"{teacher_key(cfg)}-{data_sha256(digits)[:12]}"
    assert {"teacher.pt", "manifest.json"} <= {p.name for p in first.path.iterdir()}
    assert first.train_logits.shape == (len(digits.train), 10)
    assert first.val_acc > 0.3  # two epochs of a 64-wide MLP on digits; chance is 0.1
    second = _get(cfg, digits, tmp_path, log)
    assert not second.trained_now
    assert torch.equal(second.train_logits, first.train_logits)
    assert second.val_acc == first.val_acc
    assert _same_state(second.model, first.model)
    assert not second.model.training
    assert log == []
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["key"] == first.key and manifest["settings"]["teacher"]["width"] == 64


CHANGES = {
    "dataset name": {"dataset": {"name": "mnist"}},
    "split_seed": {"dataset": {"split_seed": 1}},
    "val_size": {"dataset": {"val_size": 100}},
    "teacher model": {"teacher": {"model": "cnn_teacher"}},
    "teacher width": {"teacher": {"width": 65}},
    "teacher epochs": {"teacher": {"epochs": 3}},
    "teacher lr": {"teacher": {"lr": 2e-3}},
    "teacher seed": {"teacher": {"seed": 1}},
    "teacher shift": {"teacher": {"shift": 1}},
    "teacher dropout": {"teacher": {"dropout": 0.2}},
    "teacher batch_size": {"teacher": {"batch_size": 32}},
    "teacher weight_decay": {"teacher": {"weight_decay": 1e-4}},
}


def _changed(change: dict[str, dict[str, Any]]) -> ExperimentConfig:
    cfg = _cfg()
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **kv)
                                       for section, kv in change.items()})


@pytest.mark.parametrize("change", list(CHANGES), ids=list(CHANGES))
def test_key_changes_with_what_makes_the_teacher(change: str) -> None:
    assert teacher_key(_changed(CHANGES[change])) != teacher_key(_cfg())


def test_a_cnn_teachers_key_ignores_the_dropout_it_does_not_have() -> None:
    cnn = _changed({"teacher": {"model": "cnn_teacher"}})
    other = dataclasses.replace(cnn, teacher=dataclasses.replace(cnn.teacher, dropout=0.1))
    assert teacher_key(other) == teacher_key(cnn)
    assert teacher_key(_changed({"teacher": {"dropout": 0.1}})) != teacher_key(_cfg())  # MLP


def test_key_ignores_the_student_training_and_search() -> None:
    cfg = _cfg()
    other = dataclasses.replace(
        cfg, name="other", student=dataclasses.replace(cfg.student, width=99),
        training=dataclasses.replace(cfg.training, temperature=9.0, alpha=0.9, lr=0.1),
        search=dataclasses.replace(cfg.search, num_samples=3),
        dataset=dataclasses.replace(cfg.dataset, data_dir="/elsewhere"))
    assert teacher_key(other) == teacher_key(cfg)


def test_the_same_count_written_as_a_float_is_the_same_teacher() -> None:
    def cfg(val_size: Any) -> ExperimentConfig:
        return config_from_dict({"dataset": {"name": "mnist", "val_size": val_size}})

    assert cfg(5000.0).dataset.val_size == 5000 and type(cfg(5000.0).dataset.val_size) is int
    assert teacher_key(cfg(5000.0)) == teacher_key(cfg(5000)) == teacher_key(cfg("5e3"))
    assert cfg(0.1).dataset.val_size == 0.1  # a fraction stays a fraction
    assert teacher_key(cfg(0.1)) != teacher_key(cfg(5000))
    # the default count written out is the default split, and the same teacher
    assert teacher_key(cfg(5000)) == teacher_key(cfg(None))
    assert teacher_key(cfg(4999)) != teacher_key(cfg(None))


def test_the_default_val_size_written_out_is_the_same_teacher_on_digits(digits: Dataset
                                                                         ) -> None:
    from kdsearch.data import TRAIN_SIZES, default_val_size

    n = len(digits.train) + len(digits.val)
    assert n == TRAIN_SIZES["digits"] and len(digits.val) == default_val_size(n)

    def cfg(val_size: Any) -> ExperimentConfig:
        return config_from_dict({"dataset": {"name": "digits", "val_size": val_size}})

    assert teacher_key(cfg(len(digits.val))) == teacher_key(cfg(0.15)) == teacher_key(cfg(None))
    assert teacher_key(cfg(0.2)) != teacher_key(cfg(None))


def test_a_changed_setting_misses_the_cache(digits: Dataset, tmp_path: Path) -> None:
    first = _get(_cfg(), digits, tmp_path)
    other = _get(_cfg(seed=1), digits, tmp_path)
    assert first.trained_now and other.trained_now
    assert other.path != first.path
    assert not torch.equal(other.train_logits, first.train_logits)
    assert not _get(_cfg(seed=1), digits, tmp_path).trained_now
    assert not _get(_cfg(), digits, tmp_path).trained_now


def test_other_data_gets_an_entry_of_its_own_and_switching_back_rebuilds_nothing(
        digits: Dataset, tmp_path: Path) -> None:
    """Same settings, other examples (a subset, the rows in another order): cached logits
    line up with their own examples only, so each dataset has its own entry, side by side.
    Switching back and forth trains nothing again and says nothing."""
    from kdsearch.data import Split

    cfg = _cfg()
    perm = torch.randperm(len(digits.train), generator=torch.Generator().manual_seed(0))
    shuffled = dataclasses.replace(digits, train=Split(digits.train.x[perm],
                                                       digits.train.y[perm]))
    log: list[str] = []
    first, second = _get(cfg, digits, tmp_path, log), _get(cfg, shuffled, tmp_path, log)
    assert first.trained_now and second.trained_now and first.path != second.path
    assert first.key == second.key  # the settings' key: the same teacher, other data
    with torch.no_grad():
        assert torch.allclose(second.train_logits, second.model(shuffled.train.x), atol=1e-5)
    for data, entry in ((digits, first), (shuffled, second), (digits, first)):
        again = _get(cfg, data, tmp_path, log)
        assert not again.trained_now and again.path == entry.path
        assert torch.equal(again.train_logits, entry.train_logits)
    assert log == []


def test_an_entry_from_before_entries_were_kept_per_data_serves_its_own_data(
        digits: Dataset, tmp_path: Path) -> None:
    """`teachers/<key>` (no data in the name): used for the data its manifest names, or, with
    no data named, taken as it is and stamped; not used for other data."""
    from kdsearch.data import Split

    cfg = _cfg()
    first = _get(cfg, digits, tmp_path)
    assert first.path is not None
    older = tmp_path / "teachers" / teacher_key(cfg)
    first.path.rename(older)
    manifest = json.loads((older / "manifest.json").read_text())
    stamp = manifest.pop("data_sha256")
    (older / "manifest.json").write_text(json.dumps(manifest))
    log: list[str] = []
    again = _get(cfg, digits, tmp_path, log)
    assert not again.trained_now and again.path == older and log == []
    assert json.loads((older / "manifest.json").read_text())["data_sha256"] == stamp
    reversed_rows = dataclasses.replace(digits, train=Split(digits.train.x.flip(0),
                                                            digits.train.y.flip(0)))
    other = _get(cfg, reversed_rows, tmp_path, log)
    assert other.trained_now and other.path != older and log == []


def test_a_checkpoint_teachers_data_switched_back_and_forth_reuses_two_entries(
        digits: Dataset, tmp_path: Path) -> None:
    """A teacher loaded from teacher.checkpoint, for a subset of the data and then the whole:
    two entries, each computed once; the messages never say it was trained."""
    from kdsearch.config import config_from_dict
    from kdsearch.data import Split
    from kdsearch.models import build_teacher

    torch.manual_seed(0)
    checkpoint = tmp_path / "teacher.pt"
    torch.save(build_teacher("mlp_teacher", digits.input_shape, 10, width=32).state_dict(),
               checkpoint)
    cfg = config_from_dict({"teacher": {"width": 32, "checkpoint": str(checkpoint)}})
    half = len(digits.train) // 2
    subset = dataclasses.replace(digits, train=Split(digits.train.x[:half],
                                                     digits.train.y[:half]))
    log: list[str] = []
    made = [_get(cfg, data, tmp_path, log) for data in (subset, digits)]
    assert all(t.trained_now for t in made) and made[0].path != made[1].path
    for data, entry in ((subset, made[0]), (digits, made[1]), (subset, made[0])):
        again = _get(cfg, data, tmp_path, log)
        assert not again.trained_now and again.path == entry.path
    assert log == []
    # a corrupted entry of a checkpoint teacher: computed again from the checkpoint, and said so
    assert made[0].path is not None
    _truncate(made[0].path / "teacher.pt")
    assert _get(cfg, subset, tmp_path, log).trained_now
    assert len(log) == 1 and "computing the teacher's logits from teacher.checkpoint again" in log[0]


def test_a_cache_that_cannot_be_written_trains_in_memory_and_says_so_in_one_line(
        digits: Dataset, tmp_path: Path) -> None:
    from kdsearch.data import Split

    cfg = _cfg()
    entry = _get(cfg, digits, tmp_path).path
    assert entry is not None
    reversed_rows = dataclasses.replace(digits, train=Split(digits.train.x.flip(0),
                                                            digits.train.y.flip(0)))
    lock = tmp_path / "teachers" / f"{teacher_key(cfg)}-{data_sha256(reversed_rows)[:12]}.lock"
    lock.mkdir()  # the lock cannot be taken
    log: list[str] = []
    teacher = _get(cfg, reversed_rows, tmp_path, log)
    assert teacher.trained_now and teacher.path is None
    assert len(log) == 1, log
    assert "not writable" in log[0] and "training the teacher in memory" in log[0]
    assert not _get(cfg, digits, tmp_path).trained_now  # the other data's entry still serves


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _break_manifest(path: Path) -> None:
    (path.parent / "manifest.json").write_text("{ not json")


def _nan_accuracy(path: Path) -> None:
    manifest = json.loads((path.parent / "manifest.json").read_text())
    (path.parent / "manifest.json").write_text(json.dumps({**manifest, "val_acc": float("nan")}))


def _weights_a_folder(path: Path) -> None:
    path.unlink()
    (path / "inside").mkdir(parents=True)


def _manifest_a_folder(path: Path) -> None:
    (path.parent / "manifest.json").unlink()
    (path.parent / "manifest.json" / "inside").mkdir(parents=True)


@pytest.mark.parametrize("damage", [_truncate, _flip_a_byte, _break_manifest, _nan_accuracy,
                                    _weights_a_folder, _manifest_a_folder],
                         ids=["truncated", "flipped byte", "broken manifest", "NaN accuracy",
                              "weights a folder", "manifest a folder"])
def test_corrupted_entry_is_reported_and_rebuilt(digits: Dataset, tmp_path: Path,
                                                 damage: Any) -> None:
    cfg = _cfg()
    first = _get(cfg, digits, tmp_path)
    weights = first.path / "teacher.pt"
    damage(weights)
    log: list[str] = []
    rebuilt = _get(cfg, digits, tmp_path, log)
    assert rebuilt.trained_now
    assert len(log) == 1 and "\n" not in log[0]
    assert "corrupted" in log[0] and str(first.path) in log[0]
    assert torch.equal(rebuilt.train_logits, first.train_logits)  # seeded: the same teacher
    again = _get(cfg, digits, tmp_path, log)
    assert not again.trained_now and len(log) == 1  # the rebuilt entry is whole


class _Payload:
    """Unpickling this runs os.mkdir(marker): what a planted teacher.pt could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.marker,))


def _plant_torch_zip(path: Path, marker: Path) -> None:
    torch.save({"model": _Payload(marker), "train_logits": torch.zeros(1)}, path)


def _plant_plain_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"model": _Payload(marker)}, protocol=2))


@pytest.mark.parametrize("plant", [_plant_torch_zip, _plant_plain_pickle],
                         ids=["torch.save zip", "plain pickle"])
def test_planted_pickle_does_not_run(digits: Dataset, tmp_path: Path, plant: Any) -> None:
    cfg = _cfg()
    entry = _get(cfg, digits, tmp_path / "cache").path
    assert entry is not None
    weights, marker = entry / "teacher.pt", tmp_path / "pwned"
    plant(weights, marker)
    # the attacker also fixes the checksum, so only the safe loader stands in the way
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (entry / "manifest.json").write_text(json.dumps(manifest))
    planted = weights.read_bytes()

    log: list[str] = []
    teacher = _get(cfg, digits, tmp_path / "cache", log)
    assert not marker.exists()
    assert teacher.trained_now and len(log) == 1 and "does not load" in log[0]
    assert weights.read_bytes() != planted  # replaced by a real teacher

    # the payload is live: an unsafe load of the planted file would have run it
    (tmp_path / "planted.pt").write_bytes(planted)
    with contextlib.suppress(Exception):  # it may fail to load once the payload has run
        torch.load(tmp_path / "planted.pt", weights_only=False)
    assert marker.is_dir()


_CONCURRENT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from kdsearch.config import config_from_dict
    from kdsearch.data import load_dataset
    from kdsearch.teacher import get_teacher

    cache, me, other = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    # long enough (about a second) that two unlocked trainings would overlap
    cfg = config_from_dict({"dataset": {"name": "digits"},
                            "teacher": {"width": 128, "epochs": 15}})
    data = load_dataset(cfg.dataset, data_dir=cache / "data", cache_dir=cache)
    (cache / me).touch()  # a barrier: both processes ask for the teacher at the same moment
    deadline = time.monotonic() + 60
    while not (cache / other).exists():
        if time.monotonic() > deadline:
            sys.exit("the other process never got ready")
        time.sleep(0.005)
    teacher = get_teacher(cfg, data, cache_dir=cache)
    print(f"trained_now={teacher.trained_now} logits_sum={teacher.train_logits.sum().item()!r}")
""")


@pytest.mark.slow
def test_two_processes_train_the_teacher_once(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT, str(tmp_path), me, other],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me, other in (("a", "b"), ("b", "a"))]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(out.strip())
    trained = sorted(o.split()[0] for o in outs)
    assert trained == ["trained_now=False", "trained_now=True"], outs
    assert outs[0].split()[1] == outs[1].split()[1]  # the same logits
    assert len(list((tmp_path / "teachers").glob("*/manifest.json"))) == 1


def test_a_file_where_the_entry_folder_goes_is_replaced(digits: Dataset, tmp_path: Path) -> None:
    cfg = _cfg()
    (tmp_path / "teachers").mkdir(parents=True)
    (tmp_path / "teachers" / teacher_key(cfg)).write_text("not a folder\n")
    built = _get(cfg, digits, tmp_path)
    assert built.trained_now and (built.path / "manifest.json").is_file()
    assert not _get(cfg, digits, tmp_path).trained_now


def test_a_cache_that_cannot_be_locked_still_serves_its_whole_entries(digits: Dataset,
                                                                       tmp_path: Path) -> None:
    """A shared read-only cache: the lock cannot be taken (here a folder where the lock file
    goes), but a whole entry is loaded, not trained again; a missing one is trained in memory."""
    cfg = _cfg()
    first = _get(cfg, digits, tmp_path)
    assert first.path is not None
    lock = tmp_path / "teachers" / f"{first.path.name}.lock"
    lock.unlink(missing_ok=True)
    lock.mkdir()
    log: list[str] = []
    again = _get(cfg, digits, tmp_path, log)
    assert not again.trained_now and again.path == first.path and log == []
    assert torch.equal(again.train_logits, first.train_logits)
    other = _cfg(epochs=1)
    (tmp_path / "teachers" / f"{teacher_key(other)}-{data_sha256(digits)[:12]}.lock").mkdir()
    fresh = _get(other, digits, tmp_path, log)
    assert fresh.trained_now and fresh.path is None
    assert len(log) == 1 and "is not writable" in log[0]
