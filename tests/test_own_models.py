"""A user's own dataset, pretrained teacher and student factory: named in a space file as
module:attribute (examples/own_models, copied to a temporary folder outside the repository) or
given as Python objects; every bad input refused in one line before anything is written; the
trained students handed back by load_student."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kdsearch.config import load_config
from kdsearch.errors import UserError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "own_models"

SPACE = """\
name: own
dataset:
  name: my_data:load
teacher:
  model: my_nets:SmallCNN
  kwargs: {channels: 8}
  checkpoint: teacher.pt
student:
  model: my_nets:make_student
  width: 4
training: {epochs: 6, batch_size: 32, lr: 3.0e-3, temperature: 4.0, alpha: 0.3}
search:
  space:
    temperature: {distribution: loguniform, low: 1.0, high: 20.0}
    lr: {distribution: loguniform, low: 1.0e-3, high: 1.0e-2}
    width: {distribution: choice, values: [2, 4]}
  num_samples: 2
  per_width: true
  grace_period: 2
report: {seeds: 2}
"""


def _import_from(folder: Path, name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_user_{name}_{abs(hash(folder))}",
                                                  folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train_teacher(folder: Path) -> float:
    """A small SmallCNN trained by the user's own loop and saved; its test accuracy as the user
    measures it (the user's data, the user's preprocessing, no kdsearch)."""
    my_data, my_nets = _import_from(folder, "my_data"), _import_from(folder, "my_nets")
    data = my_data.load()
    x, y = (torch.as_tensor(a) for a in data["train"])
    torch.manual_seed(0)
    model = my_nets.SmallCNN(channels=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(4):
        model.train()
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    torch.save(model.state_dict(), folder / "teacher.pt")
    model.eval()
    xt, yt = (torch.as_tensor(a) for a in data["test"])
    with torch.no_grad():
        return int((model(xt).argmax(1) == yt).sum()) / len(yt)


@pytest.fixture(autouse=True)
def _fresh_modules() -> Any:
    """Each test imports the user's modules from its own folder: none left in sys.modules."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("my_nets", "my_data", "bad", "bad_data", "nets"):
            del sys.modules[name]


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """examples/own_models copied outside the repository, with a teacher trained there."""
    folder = tmp_path_factory.mktemp("user") / "project"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("teacher.pt", "results",
                                                                    "__pycache__"))
    (folder / "space.yaml").write_text(SPACE)
    return {"folder": folder, "teacher_acc": _train_teacher(folder)}


def _space(own: dict[str, Any], tmp_path: Path, text: str = SPACE, **files: str) -> Path:
    """A copy of the user's folder with `files` (name -> source) added or replaced."""
    folder = tmp_path / "p"
    shutil.copytree(own["folder"], folder)
    (folder / "space.yaml").write_text(text)
    for name, source in files.items():
        (folder / name).write_text(textwrap.dedent(source))
    return folder / "space.yaml"


def _refused(space: Path, *overrides: str) -> str:
    """The one-line message `load_inputs` refuses the space with (data, teacher, students checked,
    no Ray)."""
    from kdsearch.inputs import load_inputs

    cfg = load_config(space, overrides)
    with pytest.raises(UserError) as e:
        load_inputs(cfg)
    message = str(e.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- bad input
def test_a_module_that_does_not_import_names_the_import_error(own: dict, tmp_path: Path) -> None:
    space = _space(own, tmp_path, **{"my_nets.py": "import not_a_module_anywhere\n"})
    m = _refused(space)
    # the students are checked first (before a teacher is loaded or trained)
    assert m.startswith("student.model = 'my_nets:make_student'") and "does not import" in m
    assert "No module named 'not_a_module_anywhere'" in m


def test_a_missing_or_uncallable_attribute_is_named(own: dict, tmp_path: Path) -> None:
    space = _space(own, tmp_path, SPACE.replace("my_nets:make_student", "my_nets:make_pupil"))
    m = _refused(space)
    assert "has no attribute 'make_pupil'" in m and "make_student" in m  # what it has
    space2 = _space(own, tmp_path / "b", SPACE.replace("my_data:load", "my_data:MEAN"))
    assert "my_data:MEAN is not a class or a function to call (it is float" in _refused(space2)


def test_a_factory_that_raises_or_returns_no_module(own: dict, tmp_path: Path) -> None:
    bad = """
        def make_student(width):
            raise ValueError("widths must be even")
        def make_int(width):
            return 3
    """
    space = _space(own, tmp_path, SPACE.replace("my_nets:make_student", "bad:make_student"),
                   **{"bad.py": bad})
    assert "calling it with (width=2) raised ValueError: widths must be even" in _refused(space)
    space = _space(own, tmp_path / "b", SPACE.replace("my_nets:make_student", "bad:make_int"),
                   **{"bad.py": bad})
    assert "returned int, not a torch.nn.Module" in _refused(space)


@pytest.mark.parametrize("returned, expected", [
    ("[1, 2]", "returned list; expected a dict"),
    ("{'train': (x, y)}", "expected 'train' and 'test'"),
    ("{'train': (x, y), 'test': (x, y, y)}", "['test'] is tuple of length 3; expected a pair"),
    ("{'train': (x.astype('int64'), y), 'test': (x, y)}", "['train'] x is ndarray of shape "
     "(100, 1, 8, 8) and dtype int64; expected floats"),
    ("{'train': (x, y.astype('float32')), 'test': (x, y)}", "['train'] y is ndarray of shape "
     "(100,) and dtype float32; expected integer class indices"),
    ("{'train': (x, y[:50]), 'test': (x, y)}", "['train'] has 100 inputs and 50 labels"),
    ("{'train': (x, y), 'test': (x[:, :, :4], y)}", "['test'] x has examples of shape (1, 4, 8)"),
    ("{'train': (x, y), 'test': (x, y), 'num_classes': 5}", "['train'] y[5] = 5 is not a class "
     "index in [0, 5) (num_classes = 5)"),
    ("{'train': (x, y - 1), 'test': (x, y)}", "['train'] y[0] = -1 is not a class index"),
])
def test_a_dataset_function_that_returns_the_wrong_thing_says_what_came_back(
        own: dict, tmp_path: Path, returned: str, expected: str) -> None:
    data = f"""
        import numpy as np
        def load():
            x = np.zeros((100, 1, 8, 8), dtype=np.float32)
            y = np.arange(100) % 10
            return {returned}
    """
    space = _space(own, tmp_path, SPACE.replace("my_data:load", "bad_data:load"),
                   **{"bad_data.py": data})
    m = _refused(space)
    assert m.startswith("dataset.name = 'bad_data:load': ") and expected in m, m


def test_a_checkpoint_that_does_not_fit_names_the_first_mismatch(own: dict, tmp_path: Path
                                                                 ) -> None:
    space = _space(own, tmp_path)
    state = torch.load(space.parent / "teacher.pt", weights_only=True)
    torch.save({**state, "head.weight": torch.zeros(10, 3)}, space.parent / "shape.pt")
    m = _refused(space, "teacher.checkpoint=shape.pt")
    assert "'head.weight' has shape (10, 3); the state_dict of teacher.model = " \
           "'my_nets:SmallCNN' has (10, 16)" in m
    torch.save({k: v for k, v in state.items() if k != "features.0.bias"},
               space.parent / "missing.pt")
    assert "has no 'features.0.bias'" in _refused(space, "teacher.checkpoint=missing.pt")
    # a checkpoint of another width: the first key whose shape differs
    assert "'features.0.weight' has shape (8, 1, 3, 3)" in _refused(
        space, "teacher.kwargs={channels: 4}")
    assert "gone.pt': cannot be read (no such file)" in _refused(
        space, "teacher.checkpoint=gone.pt")


def test_a_planted_pickle_as_checkpoint_is_refused_not_run(own: dict, tmp_path: Path) -> None:
    space = _space(own, tmp_path)
    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    with open(space.parent / "teacher.pt", "wb") as f:
        pickle.dump({"w": Boom()}, f)
    m = _refused(space)
    assert "does not load with torch.load(weights_only=True)" in m
    assert not marker.exists()


def test_outputs_that_are_not_one_logit_per_class_are_refused(own: dict, tmp_path: Path) -> None:
    nets = """
        from torch import nn
        def wide(width):
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 12))
        def teacher():
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 7))
    """
    space = _space(own, tmp_path, SPACE.replace("my_nets:make_student", "nets:wide"),
                   **{"nets.py": nets})
    assert "student.model = 'nets:wide' at width 2: its output on two training examples is " \
           "(2, 12); expected (2, 10)" in _refused(space)
    text = SPACE.replace("model: my_nets:SmallCNN\n  kwargs: {channels: 8}\n  checkpoint: "
                         "teacher.pt", "model: nets:teacher\n  epochs: 1")
    space = _space(own, tmp_path / "b", text, **{"nets.py": nets})
    assert "teacher.model = 'nets:teacher': its output on two training examples is (2, 7)" \
        in _refused(space)


BAD_CODE = {
    "a factory without width": ({"bad.py": "def make(channels=4):\n    return None\n"},
                                ("my_nets:make_student", "bad:make"), (),
                                "got an unexpected keyword argument 'width'"),
    "a checkpoint of the wrong shape": ({}, ("kwargs: {channels: 8}", "kwargs: {channels: 4}"),
                                        (), "'features.0.weight' has shape (8, 1, 3, 3)"),
    "a module that does not exist": ({}, ("my_nets:make_student", "nowhere:make"), (),
                                     "does not import"),
    "labels out of range": ({"bad_data.py": "from my_data import load as mine\n"
                             "def load():\n    d = mine()\n    d['num_classes'] = 5\n"
                             "    return d\n"}, ("my_data:load", "bad_data:load"), (),
                            "is not a class index in [0, 5)"),
}


@pytest.mark.parametrize("case", list(BAD_CODE))
def test_bad_user_code_is_refused_before_ray_starts_and_writes_nothing(
        own: dict, tmp_path: Path, case: str) -> None:
    """`kdsearch run` on each kind of bad code: one line, exit 2, no Ray started, and nothing
    written: no results folder, nothing in the teacher cache (no lock file either)."""
    files, (old, new), _, expected = BAD_CODE[case]
    space = _space(own, tmp_path, SPACE.replace(old, new), **files)
    out, cache = tmp_path / "results", tmp_path / "cache"
    env = {**os.environ, "KDSEARCH_CACHE_DIR": str(cache)}
    p = subprocess.run([sys.executable, "-m", "kdsearch", "run", str(space), "--results-dir",
                        str(out)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert expected in p.stderr, p.stderr
    assert "ray:" not in p.stdout  # "ray: starting a local Ray" comes after the checks
    assert not out.exists()
    assert [f for f in cache.rglob("*") if f.is_file()] == []


# --------------------------------------------------------------------------- teacher.logits
def test_teacher_logits_from_a_file_line_up_with_the_training_rows(own: dict, tmp_path: Path
                                                                   ) -> None:
    from kdsearch.distill import predict
    from kdsearch.inputs import load_inputs

    space = _space(own, tmp_path)
    cfg = load_config(space)
    inputs = load_inputs(cfg)
    data, loaded = inputs.data, inputs.teacher
    # the user's teacher, run by the user on the training rows as given (before any val split)
    my_data = _import_from(space.parent, "my_data")
    x = torch.as_tensor(my_data.load()["train"][0])
    np.save(space.parent / "train_logits.npy", predict(loaded.model, x).numpy())
    text = SPACE.replace("checkpoint: teacher.pt", "logits: train_logits.npy")
    cfg2 = load_config(_space(own, tmp_path / "b", text))
    shutil.copy(space.parent / "train_logits.npy", Path(cfg2.code_dir) / "train_logits.npy")
    inputs2 = load_inputs(cfg2)
    data2, from_file = inputs2.data, inputs2.teacher
    assert from_file.model is None and from_file.val_acc is None
    assert torch.equal(data2.train.y, data.train.y)
    # carved val split or not, each training example gets its own row's logits
    assert torch.allclose(from_file.train_logits, loaded.train_logits, atol=1e-5)
    np.save(Path(cfg2.code_dir) / "train_logits.npy", np.zeros((5, 10), np.float32))
    assert "has shape (5, 10) (float32); expected (1437, 10)" in _refused(
        Path(cfg2.code_dir) / "space.yaml")
    with pytest.raises(UserError, match="training.shift = 1 is not allowed: expected 0 with "
                                        "teacher.logits"):
        load_config(Path(cfg2.code_dir) / "space.yaml", ["training.shift=1"])


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def own_search(own: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from kdsearch import run_search

    out = tmp_path_factory.mktemp("own-results")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDSEARCH_CACHE_DIR", str(out / "cache"))
        mp.chdir(out)  # not the user's folder: the space file's folder is where modules are
        result = run_search(own["folder"] / "space.yaml", results_dir=out)
    return {**own, "result": result, "dir": out / "own"}


@pytest.mark.slow  # a real Ray search
def test_the_checkpoint_teacher_is_loaded_not_trained_and_its_inputs_used_as_given(
        own_search: dict) -> None:
    s = json.loads((own_search["dir"] / "summary.json").read_text())
    # the report's teacher test accuracy is the user's own evaluation of that checkpoint
    assert s["teacher"]["test_acc"] == own_search["teacher_acc"]
    assert s["data"] == {"train": 1221, "val": 216, "test": 360}  # 15% of 1,437 as val
    assert s["teacher_model"] == "my_nets:SmallCNN"
    assert "students/index.json" in (own_search["dir"] / "report.md").read_text()


@pytest.mark.slow  # a real Ray search
def test_load_student_gives_the_users_class_with_the_index_test_accuracy(own_search: dict
                                                                         ) -> None:
    from kdsearch import load_student

    folder = own_search["dir"]
    index = json.loads((folder / "students" / "index.json").read_text())
    final = json.loads((folder / "final.json").read_text())
    assert len(index["students"]) == sum(a is not None for r in final["rows"]
                                         for a in r["test_accs"])
    data = _import_from(own_search["folder"], "my_data").load()
    x, y = (torch.as_tensor(a) for a in data["test"])
    for kind in ("distilled", "baseline"):
        model = load_student(folder, kind)
        assert type(model).__name__ == "ConvStudent"  # the user's class, from the user's module
        best = index["best"][kind]
        entry = next(e for e in index["students"] if e["kind"] == kind and e["width"] == best
                     and e["seed"] == 0)
        with torch.no_grad():
            acc = int((model(x).argmax(1) == y).sum()) / len(y)
        assert acc == entry["test_acc"]
        assert model.conv.out_channels == best
    other = load_student(folder, "baseline", width=2, seed=1)
    assert other.conv.out_channels == 2


@pytest.mark.slow  # a real Ray search
def test_students_files_refuse_a_torn_a_flipped_and_a_planted_file(own_search: dict,
                                                                   tmp_path: Path) -> None:
    from kdsearch import load_student
    from kdsearch.students import StudentError

    folder = tmp_path / "copy"
    shutil.copytree(own_search["dir"], folder, ignore=shutil.ignore_patterns("search"))
    index = json.loads((folder / "students" / "index.json").read_text())
    best = index["best"]["distilled"]
    path = folder / "students" / f"distilled-w{best}-seed0.pt"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])  # torn
    with pytest.raises(StudentError, match="does not match its sha256"):
        load_student(folder)
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 1
    path.write_bytes(bytes(flipped))
    with pytest.raises(StudentError, match="does not match its sha256"):
        load_student(folder)
    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    planted = pickle.dumps({"conv.weight": Boom()})
    path.write_bytes(planted)  # and the index made to vouch for it
    for e in index["students"]:
        if e["file"] == path.name:
            e["sha256"] = hashlib.sha256(planted).hexdigest()
    (folder / "students" / "index.json").write_text(json.dumps(index))
    with pytest.raises(StudentError, match="does not load as weights"):
        load_student(folder)
    assert not marker.exists()
    with pytest.raises(StudentError, match="no distilled student of width 99"):
        load_student(folder, width=99)


@pytest.mark.slow  # a real Ray search
def test_python_objects_take_the_place_of_the_names(own: dict, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from torch import nn

    from kdsearch import load_student, run_search

    my_data = _import_from(own["folder"], "my_data")
    my_nets = _import_from(own["folder"], "my_nets")
    data = my_data.load()
    teacher = my_nets.SmallCNN(channels=8)
    teacher.load_state_dict(torch.load(own["folder"] / "teacher.pt", weights_only=True))

    class Notebook(nn.Module):  # defined here, as in a notebook: travels by value
        def __init__(self, width: int):
            super().__init__()
            self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(),
                                    nn.Linear(width, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    def student(width: int) -> nn.Module:
        return Notebook(width)

    text = SPACE.replace("report: {seeds: 2}", "report: {seeds: 1}").replace(
        "  num_samples: 2\n", "  num_samples: 2\n  baseline: false\n")
    (tmp_path / "plain.yaml").write_text(text)
    monkeypatch.setenv("KDSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    result = run_search(tmp_path / "plain.yaml", results_dir=tmp_path,
                        dataset=lambda: data, teacher=teacher, student=student)
    folder = result.results_dir
    s = json.loads((folder / "summary.json").read_text())
    assert s["teacher"]["test_acc"] == own["teacher_acc"]
    assert s["student_model"] == "<object test_python_objects_take_the_place_of_the_names." \
                                 "<locals>.student>"
    model = load_student(folder, student=student)
    assert isinstance(model, Notebook)
    with pytest.raises(UserError, match="was a Python object given to run_search; pass it "
                                        "again"):
        load_student(folder)


def test_a_damaged_cache_entry_of_a_checkpoint_teacher_is_rebuilt_from_the_checkpoint(
        own: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kdsearch.inputs import load_inputs

    monkeypatch.setenv("KDSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    cfg = load_config(_space(own, tmp_path))
    first = load_inputs(cfg).teacher
    assert first.trained_now and first.path is not None  # computed from the checkpoint
    assert not load_inputs(cfg).teacher.trained_now  # then read from the cache
    weights = first.path / "teacher.pt"
    blob = weights.read_bytes()
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 1
    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    for damaged in (blob[: len(blob) // 2], bytes(flipped), pickle.dumps({"model": Boom()})):
        weights.write_bytes(damaged)
        again = load_inputs(cfg).teacher
        assert again.trained_now  # rebuilt, from the checkpoint: the same logits
        assert torch.equal(again.train_logits, first.train_logits)
    assert not marker.exists()
    # another checkpoint is another entry
    torch.save({k: v + 0.01 for k, v in torch.load(Path(cfg.teacher.checkpoint),
                                                   weights_only=True).items()},
               Path(cfg.code_dir) / "other.pt")
    other = load_inputs(load_config(Path(cfg.code_dir) / "space.yaml",
                                    ["teacher.checkpoint=other.pt"])).teacher
    assert other.key != first.key and other.trained_now


@pytest.mark.slow  # a real Ray search (shared by the module)
def test_a_report_without_a_teacher_model_says_so(own_search: dict, tmp_path: Path) -> None:
    """With teacher.logits there is no teacher to test: the report says so instead of numbers."""
    from kdsearch.report import write_report

    folder = tmp_path / "copy"
    shutil.copytree(own_search["dir"], folder, ignore=shutil.ignore_patterns("search"))
    final = json.loads((folder / "final.json").read_text())
    final["teacher"].update(params=None, test_acc=None, val_acc=None)
    (folder / "final.json").write_text(json.dumps(final))
    write_report(folder)
    s = json.loads((folder / "summary.json").read_text())
    assert s["headline"].endswith("; the teacher's logits came from a file (no teacher "
                                  "accuracy).")
    assert s["best"]["compression"] is None and s["best"]["gap_recovered"] is None
    assert "there is no teacher accuracy" in (folder / "report.md").read_text()


@pytest.mark.slow  # a real Ray search (shared by the module)
def test_resume_and_report_find_the_users_modules_from_anywhere(
        own_search: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """config.yaml records the space file's folder (code_dir): a resume from another folder
    imports the user's modules from there, reuses the retrainings, and keeps their students."""
    from kdsearch import load_student, resume_search

    folder = own_search["dir"]
    index_before = (folder / "students" / "index.json").read_text()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDSEARCH_CACHE_DIR", str(folder.parent / "cache"))
    again = resume_search(folder)
    assert again.best_config == own_search["result"].best_config
    final = json.loads((folder / "final.json").read_text())
    assert final["retrained"] == 0 and final["reused"] == len(final["rows"])
    assert (folder / "students" / "index.json").read_text() == index_before
    assert type(load_student(folder)).__name__ == "ConvStudent"


def test_labels_that_are_not_numbers_and_a_numpy_num_classes(own: dict, tmp_path: Path) -> None:
    data = """
        import numpy as np
        def load():
            x = np.zeros((100, 1, 8, 8), dtype=np.float32)
            y = np.array(["cat", "dog"] * 50)
            return {"train": (x, y), "test": (x, y)}
        def numpy_classes():
            x = np.random.default_rng(0).random((100, 1, 8, 8)).astype(np.float32)
            y = np.arange(100) % 10
            return {"train": (x, y), "test": (x, y), "num_classes": y.max() + 1}
    """
    space = _space(own, tmp_path, SPACE.replace("my_data:load", "bad_data:load"),
                   **{"bad_data.py": data})
    assert "['train'] y is ndarray of shape (100,) and dtype <U3; expected numbers" in \
        _refused(space)
    from kdsearch.data import load_dataset

    cfg = load_config(space, ["dataset.name=bad_data:numpy_classes"])
    ds = load_dataset(cfg.dataset, data_dir=tmp_path, cache_dir=tmp_path,
                      folders=[space.parent])
    assert ds.num_classes == 10 and ds.input_shape == (1, 8, 8)
    assert ds.mean == () and float(ds.train.x.max()) < 1.0  # as given: not normalised


def test_width_in_student_kwargs_is_refused(own: dict, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="student.kwargs has width, which kdsearch passes itself"):
        load_config(_space(own, tmp_path), ["student.kwargs={width: 3}"])


def test_kdsearch_train_checks_the_inputs_as_a_search_does(own: dict, tmp_path: Path) -> None:
    data = """
        import numpy as np
        def flat():
            x = np.random.default_rng(0).random((200, 64)).astype(np.float32)
            y = np.arange(200) % 10
            return {"train": (x, y), "test": (x, y)}
    """
    text = SPACE.replace("my_data:load", "flat_data:flat").replace(
        "model: my_nets:SmallCNN\n  kwargs: {channels: 8}\n  checkpoint: teacher.pt",
        "model: mlp_teacher\n  width: 16\n  epochs: 1")
    space = _space(own, tmp_path, text.replace("my_nets:make_student", "mlp_student"),
                   **{"flat_data.py": data})
    env = {**os.environ, "KDSEARCH_CACHE_DIR": str(tmp_path / "cache")}
    p = subprocess.run([sys.executable, "-m", "kdsearch", "train", str(space), "--set",
                        "training.shift=1"], capture_output=True, text=True, env=env,
                       cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "they need inputs of shape N x C x H x W, and flat_data:flat's are N x 64" in p.stderr
    ok = subprocess.run([sys.executable, "-m", "kdsearch", "train", str(space), "--set",
                         "training.epochs=1"], capture_output=True, text=True, env=env,
                        cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]  # flat inputs of one's own: an MLP takes them
    assert "epoch   1/1" in ok.stdout


@pytest.mark.slow  # a real Ray search
def test_an_online_teacher_of_the_users_class_runs_in_the_trials(
        own: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """training.shift > 0 runs the teacher in each trial: a teacher of the user's module is
    rebuilt there from its name (local workers do not have the space file's folder on their
    path), with the checkpoint's weights."""
    from kdsearch import run_search

    monkeypatch.setenv("KDSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    space = _space(own, tmp_path)
    result = run_search(space, results_dir=tmp_path / "results", report=False,
                        overrides=["training.shift=1", "search.num_samples=2",
                                   "search.baseline=false", "training.epochs=2",
                                   "search.grace_period=1"])
    rows = result.trials
    assert len(rows) == 2 and set(rows["status"]) == {"TERMINATED"}, rows.get("error")


@pytest.mark.slow  # a real Ray search (shared by the module)
def test_a_report_reusing_its_retrainings_needs_no_checkpoint(own_search: dict,
                                                             tmp_path: Path) -> None:
    """The folder copied where the teacher's checkpoint is not: a report that reuses every
    retraining is written; one that must retrain says in one line what is missing."""
    from kdsearch.report import make_report

    folder = tmp_path / "copy"
    shutil.copytree(own_search["dir"], folder, ignore=shutil.ignore_patterns("search"))
    config = (folder / "config.yaml").read_text()
    (folder / "config.yaml").write_text(config.replace(
        str(own_search["folder"] / "teacher.pt"), str(tmp_path / "elsewhere" / "teacher.pt")))
    before = json.loads((folder / "final.json").read_text())
    make_report(folder, retrain=False)
    after = json.loads((folder / "final.json").read_text())
    assert after["retrained"] == 0 and after["teacher"] == before["teacher"]
    with pytest.raises(UserError, match=r"teacher.checkpoint = .*elsewhere/teacher.pt': cannot "
                                        r"be read"):
        make_report(folder, retrain=True)
    assert json.loads((folder / "final.json").read_text()) == after  # nothing half-written


def test_the_students_index_is_written_when_no_student_was_saved(tmp_path: Path) -> None:
    from kdsearch.students import INDEX_FILE, write_index

    write_index(tmp_path / "students", [], {"distilled": None, "baseline": None})
    assert json.loads((tmp_path / "students" / INDEX_FILE).read_text())["students"] == []


@pytest.mark.slow  # a real Ray search (shared by the module)
def test_the_users_cnn_student_exports_to_onnx_and_pt2_and_quantizes(own_search: dict,
                                                                     tmp_path: Path) -> None:
    """The user's own student class (a CNN with BatchNorm), rebuilt from its module, exported
    both ways; onnxruntime's and torch.export's logits within 1e-4 of torch's on the test
    split; both kinds of student of that width tested in int8."""
    from kdsearch import export_student

    folder = own_search["dir"]
    onnx = export_student(folder, width=4, format="onnx", quantize="int8",
                          out=tmp_path / "cnn.onnx")
    assert onnx.max_abs_diff <= 1e-4 and onnx.input_shape == (1, 8, 8)
    assert onnx.exported_acc == onnx.test_acc
    index = json.loads((folder / "students" / "index.json").read_text())
    saved = next(e for e in index["students"] if e["kind"] == "distilled" and e["width"] == 4
                 and e["seed"] == onnx.seed)
    assert onnx.test_acc == saved["test_acc"]  # the same student the final evaluation tested
    assert [q.kind for q in onnx.quantized] == ["distilled", "baseline"]
    assert onnx.int8_path is not None and onnx.int8_path.is_file()
    pt2 = export_student(folder, width=2, kind="baseline", format="pt2",
                         out=tmp_path / "cnn.pt2")
    assert pt2.max_abs_diff <= 1e-4 and pt2.path.is_file()
