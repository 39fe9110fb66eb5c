"""A trained student exported for deployment, checked and, on request, quantized.

`export_student` writes one saved student (students/) as an ONNX file (`torch.onnx.export`) or a
`torch.export` program (.pt2), with its input shape and a dynamic batch dimension. It then runs
the file on the test split (onnxruntime for ONNX) and compares its logits with torch's: the
largest difference is returned, and one past `TOLERANCE` is an error. `quantize="int8"`
quantizes the ONNX file with onnxruntime's static quantization (calibrated on training
examples) and tests it, the distilled and the baseline student of that width alike, so that an
accuracy loss of one kind under quantization shows.

onnx, onnxscript and onnxruntime are an optional extra: `pip install "kdsearch[export]"`.
Nothing is written until the export has passed its check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from kdsearch import files
from kdsearch.builders import code_folders
from kdsearch.config import default_cache_dir, default_data_dir
from kdsearch.data import Dataset, Split, load_dataset, load_test
from kdsearch.distill import predict
from kdsearch.errors import UserError, one_line
from kdsearch.results import read_config
from kdsearch.search_result import read_answer
from kdsearch.students import StudentEntry, load_student, read_entries
from kdsearch.tables import BASELINE, DISTILLED, KINDS

log = logging.getLogger(__name__)

FORMATS = ("onnx", "pt2")
TOLERANCE = 1e-4  # the largest difference of a logit allowed between torch and the export
CALIBRATION_EXAMPLES = 512  # training examples static quantization is calibrated on
EXPORT_DIR = "export"  # in the results folder, the default place of an exported student
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


class ExportError(UserError, ValueError):
    """A student that cannot be exported as asked: the message says why and what to do."""


@dataclass(frozen=True)
class Quantized:
    """A student's test accuracy as a float model and quantized to int8 (ONNX Runtime)."""

    kind: str
    width: int
    float_acc: float
    int8_acc: float


@dataclass(frozen=True)
class Exported:
    """What `export_student` wrote and what its check found."""

    path: Path
    format: str
    kind: str
    width: int
    seed: int
    input_shape: tuple[int, ...]
    max_abs_diff: float  # the largest difference of a logit, torch against the export
    test_acc: float  # the student's test accuracy in torch
    exported_acc: float  # the exported file's, on the same examples
    int8_path: Path | None = None
    quantized: list[Quantized] = dataclasses.field(default_factory=list)


# --------------------------------------------------------------------------- choosing
def _check_packages(fmt: str, quantize: str | None) -> None:
    """The optional packages the export needs are installed, or an ExportError."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize {quantize}: expected int8")
    if quantize and fmt != "onnx":
        raise ExportError("--quantize int8 goes with --format onnx (ONNX Runtime quantizes)")
    if fmt == "onnx":
        missing = [p for p in ONNX_PACKAGES if not _installed(p)]
        if missing:
            raise ExportError(f"--format onnx needs {', '.join(ONNX_PACKAGES)}; not installed "
                              f"here: {', '.join(missing)}; pip install \"kdsearch[export]\"")


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # (ValueError: a module set to None in sys.modules)
        return False


def choose(results: Path, entries: list[StudentEntry], *, kind: str | None, width: int | None,
           seed: int | None) -> StudentEntry:
    """The saved student to export: `width` (None: the answer's), of `kind` (None: with the
    answer, the smaller of its two students, the distilled one on a tie; else distilled), its
    first seed or `seed`."""
    if kind is not None and kind not in KINDS:
        raise ExportError(f"--kind {kind}: expected {DISTILLED} or {BASELINE}")
    if width is None:
        answer = read_answer(results)
        if answer is None:
            raise ExportError(f"{results}: no answer to export (no summary.json with one); "
                              f"write the report (kdsearch report {results}) or pass --width")
        picks = [p for p in (answer.distilled, answer.baseline)
                 if p is not None and (kind is None or p.kind == kind)]
        if not picks:
            raise ExportError(f"{results}: no {kind or 'student'} width meets the target, so "
                              f"there is no answer to export; pass --width W")
        pick = min(picks, key=lambda p: p.params)  # (stable: distilled first on a tie)
        kind, width = pick.kind, pick.width
    kind = kind or DISTILLED
    mine = [e for e in entries if e.kind == kind and e.width == width
            and (seed is None or e.seed == seed)]
    if not mine:
        have = sorted({e.width for e in entries if e.kind == kind})
        raise ExportError(f"{results}: no saved {kind} student of width {width}"
                          f"{'' if seed is None else f' and seed {seed}'}; saved widths: "
                          f"{', '.join(map(str, have)) or 'none'}")
    return min(mine, key=lambda e: e.seed)


# --------------------------------------------------------------------------- the data
def _splits(results: Path, dataset: Any) -> tuple[Dataset, Split]:
    """The folder's training data (for calibration) and its test split, on the CPU."""
    cfg = read_config(results)
    cache = default_cache_dir(cfg)
    data = load_dataset(cfg.dataset, data_dir=default_data_dir(cfg), cache_dir=cache,
                        folders=code_folders(cfg), source=dataset)
    test = load_test(cfg.dataset, data, data_dir=default_data_dir(cfg), cache_dir=cache,
                     folders=code_folders(cfg), source=dataset)
    return data, test


def _accuracy(logits: np.ndarray, y: torch.Tensor) -> float:
    return int((torch.from_numpy(logits).argmax(1) == y).sum().item()) / len(y)


# --------------------------------------------------------------------------- the formats
@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.onnx.export and ONNX Runtime's quantizer print progress and advice: kept out of
    kdsearch's output."""
    sink = io.StringIO()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        root.setLevel(level)


def _example(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.zeros(2, *shape)


def _write_onnx(model: nn.Module, shape: tuple[int, ...], path: Path) -> None:
    batch = torch.export.Dim("batch", min=1)
    with _quiet():
        # one file: the weights inside it, not beside it (a student is far below ONNX's 2 GB)
        torch.onnx.export(model, (_example(shape),), str(path), input_names=["input"],
                          output_names=["logits"], dynamic_shapes=({0: batch},),
                          external_data=False)


def _onnx_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": x[i:i + 4096].numpy()})[0]
                           for i in range(0, len(x), 4096)])


def _write_pt2(model: nn.Module, shape: tuple[int, ...], path: Path) -> None:
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (_example(shape),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


@torch.no_grad()
def _pt2_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    module = torch.export.load(str(path)).module()
    return torch.cat([module(x[i:i + 4096]) for i in range(0, len(x), 4096)]).numpy()


def _int8(source: Path, target: Path, train: Split) -> None:
    """`source` quantized to int8 by ONNX Runtime's static quantization (QDQ, per channel),
    calibrated on the first training examples."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    x = train.x[:CALIBRATION_EXAMPLES].numpy()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": x[i:i + 64]} for i in range(0, len(x), 64)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with _quiet():
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QInt8)


# --------------------------------------------------------------------------- the whole
def _out_path(results: Path, entry: StudentEntry, fmt: str, out: str | os.PathLike[str] | None
              ) -> Path:
    if out is not None:
        path = Path(out)
        if path.is_dir():
            raise ExportError(f"--out {out}: a folder; pass a file name such as "
                              f"{entry.kind}-w{entry.width}.{fmt}")
        if not path.parent.is_dir():
            raise ExportError(f"--out {out}: its folder {path.parent} does not exist")
        return path
    return results / EXPORT_DIR / f"{entry.kind}-w{entry.width}-seed{entry.seed}.{fmt}"


def _quantize_width(results: Path, entry: StudentEntry, exported: Path, train: Split,
                    test: Split, student: Callable[..., nn.Module] | None, folder: Path
                    ) -> list[Quantized]:
    """Quantize `entry` (already exported to `exported`) and the other kind's student of its
    width (its first seed) to int8 in `folder` (`<kind>.int8.onnx`); return their float and
    int8 test accuracy."""
    others = [e for e in read_entries(results) if e.width == entry.width and e.kind != entry.kind]
    chosen = {entry.kind: entry}
    if others:
        chosen[others[0].kind] = min(others, key=lambda e: e.seed)
    out = []
    for kind in KINDS:
        if kind not in chosen:
            continue
        e = chosen[kind]
        source, target = folder / f"{kind}.onnx", folder / f"{kind}.int8.onnx"
        if e is entry:
            source = exported
        else:
            model = load_student(results, e.kind, e.width, e.seed, student=student)
            _write_onnx(model, tuple(e.input_shape), source)
        _int8(source, target, train)
        out.append(Quantized(kind, e.width, _accuracy(_onnx_logits(source, test.x), test.y),
                             _accuracy(_onnx_logits(target, test.x), test.y)))
    return out


@contextlib.contextmanager
def _failing_as(what: str) -> Iterator[None]:
    """Turn a failure of the exporters or of ONNX Runtime into a one-line ExportError."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        raise ExportError(f"{what} failed: {type(e).__name__}: {one_line(e)}") from None


def export_student(results_dir: str | os.PathLike[str], *, width: int | None = None,
                   kind: str | None = None, seed: int | None = None, format: str = "onnx",
                   out: str | os.PathLike[str] | None = None, quantize: str | None = None,
                   dataset: Any = None, student: Callable[..., nn.Module] | None = None
                   ) -> Exported:
    """Export a trained student of a results folder, run the file on the test split, and
    check its outputs against torch's.

    Args:
        results_dir: the search's results folder.
        width: the student's width; None: the answer's (the smallest that meets the target).
        kind: "distilled", or "baseline" for the student trained alone; None: the answer's
            smaller student (the distilled one on a tie), or distilled with `width`.
        seed: which retraining; None: the first saved one.
        format: "onnx" (torch.onnx.export, checked with onnxruntime) or "pt2" (torch.export).
        out: the file to write; default: `<results_dir>/export/<kind>-w<width>-seed<seed>.<format>`.
        quantize: "int8": also write the ONNX file quantized by ONNX Runtime (`*.int8.onnx`)
            and test both kinds of student of that width quantized.
        dataset, student: the objects the search was given in place of the config's names.

    Returns:
        What was written, and the check's numbers.

    Raises:
        UserError: an unknown width or kind, a folder without students, a missing optional
            package, or an export whose outputs differ from torch's (one line; nothing written).
    """
    results = Path(results_dir)
    _check_packages(format, quantize)
    entry = choose(results, read_entries(results), kind=kind, width=width, seed=seed)
    path = _out_path(results, entry, format, out)
    model = load_student(results, entry.kind, entry.width, entry.seed, student=student)
    shape = tuple(entry.input_shape)
    data, test = _splits(results, dataset)
    with torch.no_grad():
        expected = predict(model, test.x).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / f"export.{format}"  # (scratch names apart from --out's)
        with _failing_as(f"{format} export of {entry.kind} width {entry.width}"):
            (_write_onnx if format == "onnx" else _write_pt2)(model, shape, staged)
            got = (_onnx_logits if format == "onnx" else _pt2_logits)(staged, test.x)
        diff = float(np.max(np.abs(got - expected))) if len(expected) else 0.0
        if not diff <= TOLERANCE:
            raise ExportError(f"the {format} export's logits differ from torch's by {diff:.2e} "
                              f"(more than {TOLERANCE:g}) on the test split; not written")
        quantized: list[Quantized] = []
        int8_path = None
        if quantize:
            with _failing_as(f"int8 quantization of width {entry.width}"):
                quantized = _quantize_width(results, entry, staged, data.train, test,
                                            student, Path(tmp))
        # checked: copied into place, each file whole or not at all (the temporary folder
        # may be on another file system)
        path.parent.mkdir(parents=True, exist_ok=True)
        files.copy(staged, path, durable=False)
        if quantize:
            int8_path = path.with_name(path.stem + ".int8.onnx")
            files.copy(Path(tmp) / f"{entry.kind}.int8.onnx", int8_path, durable=False)
    return Exported(path, format, entry.kind, entry.width, entry.seed, shape, diff,
                    _accuracy(expected, test.y), _accuracy(got, test.y), int8_path, quantized)
