"""The saved students (`kdsearch.students`): weights written with their sha256, index.json the
only list of them, and a file that does not match its sha256 refused in one line."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import same_weights, student
from kdsearch.config import config_from_dict, dump_config
from kdsearch.data import Dataset
from kdsearch.students import (INDEX_FILE, STUDENTS_DIR, StudentEntry, StudentError,
                               kept_entries, load_student, read_entries, read_index, save_state,
                               write_index)


def _entry(data: Dataset, folder: Path, kind: str, width: int, seed: int, test_acc: float
           ) -> StudentEntry:
    """A student of `width` with weights drawn from `seed`, saved in `folder`."""
    model = student(data, seed=seed + 100 * width + (kind == "baseline"), width=width)
    name, sha = save_state(folder, kind, width, seed, model.state_dict())
    return StudentEntry(kind=kind, width=width, seed=seed, test_acc=test_acc, file=name,
                        sha256=sha, model="mlp_student", kwargs={},
                        input_shape=list(data.input_shape), num_classes=data.num_classes)


def _results(tmp_path: Path) -> Path:
    """A results folder with the config.yaml load_student rebuilds the models from."""
    results = tmp_path / "run"
    results.mkdir()
    (results / "config.yaml").write_text(dump_config(config_from_dict({"name": "run"})))
    return results


def test_save_state_writes_the_weights_and_returns_their_sha256(tmp_path: Path,
                                                                digits: Dataset) -> None:
    model = student(digits, seed=3)
    folder = tmp_path / "students"  # made on first use
    name, sha = save_state(folder, "distilled", 16, 3, model.state_dict())
    assert name == "distilled-w16-seed3.pt"
    blob = (folder / name).read_bytes()
    assert hashlib.sha256(blob).hexdigest() == sha
    state = torch.load(folder / name, weights_only=True)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert list(folder.iterdir()) == [folder / name]  # no temporary file left


def test_write_index_lists_the_students_in_order_and_removes_every_other_file(
        tmp_path: Path, digits: Dataset) -> None:
    folder = tmp_path / "students"
    b = _entry(digits, folder, "baseline", 8, 0, 0.8)
    d16 = _entry(digits, folder, "distilled", 16, 1, 0.9)
    d8 = _entry(digits, folder, "distilled", 8, 0, 0.85)
    stale = _entry(digits, folder, "distilled", 32, 0, 0.7)  # of an earlier evaluation
    (folder / "notes.txt").write_text("not a student")
    write_index(folder, [b, d16, d8], {"distilled": 16, "baseline": 8})
    assert not (folder / stale.file).exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [b.file, d16.file, d8.file, INDEX_FILE, "notes.txt"])  # only *.pt files are removed
    index = json.loads((folder / INDEX_FILE).read_text())
    assert index["format"] == 1 and index["best"] == {"distilled": 16, "baseline": 8}
    assert [(e["kind"], e["width"]) for e in index["students"]] == [
        ("distilled", 8), ("distilled", 16), ("baseline", 8)]
    assert read_entries(tmp_path) == [d8, d16, b]


def test_read_index_refuses_a_missing_or_damaged_index_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / STUDENTS_DIR / INDEX_FILE
    with pytest.raises(StudentError, match="index.json: not found; the students are saved"):
        read_index(tmp_path)
    path.parent.mkdir()
    for text, message in (("{torn", "unreadable"), ("[]", "not a students index"),
                          ('{"students": [{"kind": "distilled"}]}', "not a students index"),
                          ('{"students": "none"}', "not a students index")):
        path.write_text(text)
        with pytest.raises(StudentError, match=message) as info:
            read_index(tmp_path)
        assert "\n" not in str(info.value) and f"kdsearch report {tmp_path}" in str(info.value)


def test_read_entries_refuses_an_entry_of_another_shape(tmp_path: Path) -> None:
    path = tmp_path / STUDENTS_DIR / INDEX_FILE
    path.parent.mkdir()
    path.write_text(json.dumps({"students": []}))
    assert read_entries(tmp_path) == []
    path.write_text(json.dumps({"students": [{"kind": "distilled", "width": 8, "seed": 0,
                                              "file": "a.pt", "sha256": "0", "colour": 1}]}))
    with pytest.raises(StudentError, match="not a students index"):
        read_entries(tmp_path)


def test_kept_entries_are_the_wanted_students_whose_file_is_whole(tmp_path: Path,
                                                                  digits: Dataset) -> None:
    folder = tmp_path / "students"
    assert kept_entries(folder, [("distilled", 8, 0)]) == []  # no index
    whole = _entry(digits, folder, "distilled", 8, 0, 0.9)
    flipped = _entry(digits, folder, "distilled", 8, 1, 0.9)
    gone = _entry(digits, folder, "baseline", 8, 0, 0.8)
    unwanted = _entry(digits, folder, "distilled", 16, 0, 0.9)
    write_index(folder, [whole, flipped, gone, unwanted], {"distilled": 8, "baseline": 8})
    blob = bytearray((folder / flipped.file).read_bytes())
    blob[len(blob) // 2] ^= 0x01
    (folder / flipped.file).write_bytes(bytes(blob))
    (folder / gone.file).unlink()
    wanted = [("distilled", 8, 0), ("distilled", 8, 1), ("baseline", 8, 0)]
    assert kept_entries(folder, wanted) == [whole]
    (folder / INDEX_FILE).write_text("{torn")
    assert kept_entries(folder, wanted) == []


def test_load_student_rebuilds_the_saved_weights_in_eval_mode(tmp_path: Path,
                                                              digits: Dataset) -> None:
    results = _results(tmp_path)
    folder = results / STUDENTS_DIR
    entries = [_entry(digits, folder, "distilled", 8, 0, 0.80),
               _entry(digits, folder, "distilled", 16, 1, 0.90),
               _entry(digits, folder, "distilled", 16, 0, 0.90),
               _entry(digits, folder, "baseline", 8, 0, 0.85)]
    write_index(folder, entries, {"distilled": 16, "baseline": 8})
    model = load_student(results)  # the best distilled width, its first seed
    assert not model.training
    assert same_weights(model, student(digits, seed=0 + 100 * 16, width=16))
    assert same_weights(load_student(results, width=16, seed=1),
                        student(digits, seed=1 + 100 * 16, width=16))
    assert same_weights(load_student(results, "baseline"), student(digits, seed=801, width=8))


def test_without_a_best_width_load_student_takes_the_most_accurate(tmp_path: Path,
                                                                   digits: Dataset) -> None:
    results = _results(tmp_path)
    folder = results / STUDENTS_DIR
    entries = [_entry(digits, folder, "distilled", 8, 0, 0.95),
               _entry(digits, folder, "distilled", 16, 0, 0.90)]
    write_index(folder, entries, {"distilled": None, "baseline": None})
    assert same_weights(load_student(results), student(digits, seed=800, width=8))


def test_load_student_refuses_a_flipped_byte_in_one_line(tmp_path: Path,
                                                         digits: Dataset) -> None:
    results = _results(tmp_path)
    folder = results / STUDENTS_DIR
    entry = _entry(digits, folder, "distilled", 16, 0, 0.9)
    write_index(folder, [entry], {"distilled": 16, "baseline": None})
    path = folder / entry.file
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0x40
    path.write_bytes(bytes(blob))
    with pytest.raises(StudentError) as info:
        load_student(results)
    message = str(info.value)
    assert message == (f"{path}: does not match its sha256 in index.json (truncated or "
                       f"modified); run `kdsearch report {results}` to retrain it")
    path.write_bytes(bytes(blob[:100]))  # torn
    with pytest.raises(StudentError, match="does not match its sha256"):
        load_student(results)
    path.unlink()
    with pytest.raises(StudentError, match="cannot be read") as info:
        load_student(results)
    assert "\n" not in str(info.value)


def test_load_student_refuses_a_file_that_matches_its_sha256_but_not_the_model(
        tmp_path: Path, digits: Dataset) -> None:
    """A replaced file whose index entry was edited to match: never unpickled as code, and
    weights of another shape are named."""
    results = _results(tmp_path)
    folder = results / STUDENTS_DIR
    entry = _entry(digits, folder, "distilled", 16, 0, 0.9)
    other = _entry(digits, folder, "distilled", 32, 0, 0.9)
    wrong_shape = dataclasses.replace(entry, file=other.file, sha256=other.sha256)
    write_index(folder, [wrong_shape], {"distilled": 16, "baseline": None})
    with pytest.raises(StudentError, match=r"does not fit student.model = 'mlp_student' at "
                                           r"width 16") as info:
        load_student(results)
    assert "\n" not in str(info.value)
    (folder / "distilled-w16-seed0.pt").write_bytes(b"not a torch file")
    not_weights = dataclasses.replace(
        entry, sha256=hashlib.sha256(b"not a torch file").hexdigest())
    write_index(folder, [not_weights], {"distilled": 16, "baseline": None})
    with pytest.raises(StudentError, match="does not load as weights"):
        load_student(results)


def test_load_student_names_what_was_saved_when_the_asked_for_one_was_not(
        tmp_path: Path, digits: Dataset) -> None:
    results = _results(tmp_path)
    folder = results / STUDENTS_DIR
    write_index(folder, [_entry(digits, folder, "distilled", 16, 0, 0.9),
                         _entry(digits, folder, "distilled", 16, 2, 0.9)],
                {"distilled": 16, "baseline": None})
    with pytest.raises(StudentError, match=r"no distilled student of width 8 \(saved: width 16 "
                                           r"seed 0, width 16 seed 2\)"):
        load_student(results, width=8)
    with pytest.raises(StudentError, match=r"of width 16 and seed 1 \("):
        load_student(results, seed=1)
    with pytest.raises(StudentError, match=r"no baseline student of width None \(saved: none\)"):
        load_student(results, "baseline")
    with pytest.raises(StudentError, match="kind = 'teacher'; expected 'distilled' or"):
        load_student(results, "teacher")


@pytest.mark.parametrize("edit", [
    lambda e: e.pop("input_shape"),  # what load_student rebuilds the model with
    lambda e: e.update(file="../elsewhere.pt"),  # a file outside students/
    lambda e: e.update(width="16"),
    lambda e: e.update(kind="teacher"),
])
def test_an_index_entry_of_the_wrong_shape_is_one_line_not_a_traceback(
        tmp_path: Path, edit: Any) -> None:
    from kdsearch.students import StudentError, read_entries

    folder = tmp_path / "students"
    write_index(folder, [StudentEntry("distilled", 16, 0, 0.9, "x.pt", "0" * 64, "mlp_student",
                                      {}, [1, 8, 8], 10)], {"distilled": 16, "baseline": None})
    index = json.loads((folder / "index.json").read_text())
    edit(index["students"][0])
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(StudentError, match="not a students index") as info:
        read_entries(tmp_path)
    assert "\n" not in str(info.value)
