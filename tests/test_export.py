"""Export (`kdsearch.export`, `kdsearch export`): a saved student written as ONNX or a
torch.export program, run on the test split and checked against torch; int8 quantization; and
bad requests refused in one line with nothing written. On a results folder made by hand (the
whole search's: tests/test_report.py and tests/test_own_models.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdsearch.cli import main
from kdsearch.config import dump_config, load_config
from kdsearch.data import Dataset
from kdsearch.distill import fit
from kdsearch.export import TOLERANCE, export_student
from kdsearch.models import build_student
from kdsearch.students import STUDENTS_DIR, StudentEntry, save_state, write_index
from kdsearch.summary import SUMMARY_JSON

QUICKSTART = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"


def make_folder(folder: Path, digits: Dataset, widths: tuple[int, ...] = (8, 16)) -> Path:
    """A results folder with the quickstart's config, a trained student of each kind at each
    width (2 epochs), and a summary.json whose answer is the distilled width 16."""
    from kdsearch.config import TrainingConfig

    folder.mkdir(parents=True)
    cfg = load_config(QUICKSTART)
    (folder / "config.yaml").write_text(dump_config(cfg))
    entries = []
    for kind in ("distilled", "baseline"):
        for width in widths:
            torch.manual_seed(width + (100 if kind == "baseline" else 0))  # two students
            model = build_student("mlp_student", digits.input_shape, 10, width=width)
            fit(model, digits, TrainingConfig(alpha=1.0, epochs=2, batch_size=64, lr=3e-3))
            name, sha = save_state(folder / STUDENTS_DIR, kind, width, 0, model.state_dict())
            entries.append(StudentEntry(kind, width, 0, 0.9, name, sha, "mlp_student", {},
                                        list(digits.input_shape), 10))
    write_index(folder / STUDENTS_DIR, entries, {"distilled": 16, "baseline": 16})
    pick = {"kind": "distilled", "width": 16, "params": 1482, "mean": 0.9, "settings": {}}
    (folder / SUMMARY_JSON).write_text(json.dumps({"answer_text": "hand-made", "answer": {
        "target": {"kind": "within_teacher", "value": 1.0}, "needed": 0.88,
        "distilled": pick, "baseline": None, "factor": None}}))
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, digits: Dataset) -> Path:
    return make_folder(tmp_path_factory.mktemp("export") / "hand", digits)


def test_the_answers_student_exports_to_onnx_and_matches_torch_on_the_test_split(
        folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "student.onnx"
    done = export_student(folder, format="onnx", out=out)
    assert done.path == out and out.is_file() and (done.kind, done.width) == ("distilled", 16)
    assert done.max_abs_diff <= TOLERANCE and done.exported_acc == done.test_acc
    import onnxruntime as ort  # the file stands alone: any batch size, its input named

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "input"
    assert session.run(None, {"input": torch.zeros(5, 1, 8, 8).numpy()})[0].shape == (5, 10)


def test_the_answer_exported_is_its_smaller_student_unless_a_kind_is_named(
        folder: Path, tmp_path: Path) -> None:
    """Alone, width 8 meets the target; distilled, width 16 does: --answer exports the
    student alone, the smaller; --kind distilled the distilled one."""
    other = tmp_path / "copy"
    shutil.copytree(folder, other)
    summary = json.loads((other / SUMMARY_JSON).read_text())
    summary["answer"]["baseline"] = {"kind": "baseline", "width": 8, "params": 682,
                                     "mean": 0.9, "settings": {}}
    (other / SUMMARY_JSON).write_text(json.dumps(summary))
    done = export_student(other, format="pt2")
    assert (done.kind, done.width) == ("baseline", 8)
    done = export_student(other, format="pt2", kind="distilled")
    assert (done.kind, done.width) == ("distilled", 16)


def test_a_torch_export_program_round_trips(folder: Path) -> None:
    done = export_student(folder, width=8, kind="baseline", format="pt2")
    assert done.path == folder / "export" / "baseline-w8-seed0.pt2"
    assert done.max_abs_diff <= TOLERANCE and done.int8_path is None
    program = torch.export.load(str(done.path)).module()
    assert program(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_int8_tests_both_kinds_of_the_width_quantized(folder: Path, tmp_path: Path) -> None:
    done = export_student(folder, width=16, format="onnx", quantize="int8",
                          out=tmp_path / "w16.onnx")
    assert done.int8_path == tmp_path / "w16.int8.onnx" and done.int8_path.is_file()
    assert [(q.kind, q.width) for q in done.quantized] == [("distilled", 16), ("baseline", 16)]
    for q in done.quantized:  # a small MLP keeps its accuracy in int8 within a few points
        assert 0.0 < q.int8_acc <= 1.0 and abs(q.int8_acc - q.float_acc) < 0.05
    assert done.quantized[0].float_acc == pytest.approx(done.test_acc)


def test_an_out_name_like_a_scratch_file_still_gets_the_chosen_student(
        folder: Path, tmp_path: Path) -> None:
    """--out baseline.onnx for the distilled student, with int8: the file written is the
    distilled student, not the baseline the int8 check also exports."""
    import onnxruntime as ort

    from kdsearch.students import load_student

    done = export_student(folder, width=16, kind="distilled", format="onnx", quantize="int8",
                          out=tmp_path / "baseline.onnx")
    x = torch.randn(7, 1, 8, 8)
    with torch.no_grad():
        want = load_student(folder, "distilled", 16, 0)(x).numpy()
    for path in (done.path, done.int8_path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": x.numpy()})[0]
        # float: the same logits; int8: close, and not the baseline's
        assert np.abs(got - want).max() <= (TOLERANCE if path == done.path else 0.5), path


@pytest.mark.parametrize("argv, message", [
    (["--width", "5"], "no saved distilled student of width 5; saved widths: 8, 16"),
    (["--kind", "baseline"], "no baseline width meets the target"),
    (["--format", "pt2", "--quantize", "int8"], "--quantize int8 goes with --format onnx"),
    (["--out", "/no/such/folder/x.onnx"], "its folder /no/such/folder does not exist"),
])
def test_a_bad_request_is_one_line_exit_2_and_writes_nothing(
        folder: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    before = sorted(p.name for p in folder.rglob("*"))
    assert main(["export", str(folder), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in folder.rglob("*")) == before


def test_a_folder_without_students_is_refused(tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "config.yaml").write_text(dump_config(load_config(QUICKSTART)))
    assert main(["export", str(tmp_path), "--width", "8"]) == 2
    assert "students/index.json: not found" in capsys.readouterr().err


def test_without_the_optional_packages_the_command_says_what_to_install(folder: Path) -> None:
    """onnxruntime made unimportable, as in an install without the export extra."""
    code = ("import sys; sys.modules['onnxruntime'] = None; from kdsearch.cli import main; "
            f"sys.exit(main(['export', {str(folder)!r}, '--width', '8']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("kdsearch: error: --format onnx needs onnx, onnxscript, "
                                   "onnxruntime; not installed here: onnxruntime; pip install "
                                   "\"kdsearch[export]\"")
    assert not (folder / "export" / "distilled-w8-seed0.onnx").exists()
