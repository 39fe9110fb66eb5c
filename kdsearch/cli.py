"""`kdsearch` subcommands: thin wrappers over the Python API, one function each.

Bad input ends in one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from kdsearch import logs
from kdsearch.errors import UserError
from kdsearch.version import __version__

if TYPE_CHECKING:
    from kdsearch.search_result import SearchResult

EXIT_USAGE = 2


class UsageError(UserError):
    """A user mistake found outside the config (a path, a results folder): exit 2, one line."""


def _device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible; use --device cpu")
    return choice


def _acc(x: float | None) -> str:
    return "n/a (logits from a file)" if x is None else f"{x:.4f}"


def cmd_train(args: argparse.Namespace) -> int:
    """One distillation run without Ray: the way to try a setting before searching."""
    from kdsearch.config import default_cache_dir, default_data_dir, load_config
    from kdsearch.spaces import find

    cfg = load_config(find(args.config), args.set)  # bad input fails here, before torch loads
    from kdsearch.builders import build_student, check_inputs, code_folders
    from kdsearch.data import load_dataset
    from kdsearch.distill import Diverged, train_student
    from kdsearch.metrics import EPOCH, TRAIN_LOSS, VAL_ACC, VAL_LOSS
    from kdsearch.models import count_parameters
    from kdsearch.teacher import get_teacher

    device = _device(args.device)
    cache_dir = default_cache_dir(cfg)
    data = load_dataset(cfg.dataset, data_dir=default_data_dir(cfg), cache_dir=cache_dir,
                        device=device, folders=code_folders(cfg))
    check_inputs(cfg, [cfg.student.width], data.train.x, data.num_classes)
    tr = cfg.training
    teacher = None
    if tr.alpha < 1.0:
        teacher = get_teacher(cfg, data, cache_dir=cache_dir)
        source = "trained now" if teacher.trained_now else f"cached, {teacher.key}"
        print(f"teacher {cfg.teacher.model}: val_acc {_acc(teacher.val_acc)} ({source})")
    n_params = count_parameters(build_student(cfg, data.input_shape, data.num_classes,
                                              width=cfg.student.width))
    print(f"student {cfg.student.model} width {cfg.student.width} ({n_params:,} parameters) on "
          f"{cfg.dataset.name}: {len(data.train):,} train / {len(data.val):,} val, {device}; "
          f"T={tr.temperature:g} alpha={tr.alpha:g} lr={tr.lr:g} batch={tr.batch_size}")

    def report(m: dict[str, float], _state: object) -> None:
        if args.level > logging.INFO:  # -q: no line per epoch
            return
        print(f"epoch {int(m[EPOCH]):3d}/{tr.epochs}  train_loss {m[TRAIN_LOSS]:.4f}  "
              f"val_loss {m[VAL_LOSS]:.4f}  val_acc {m[VAL_ACC]:.4f}  "
              f"({m['epoch_seconds']:.2f} s)", flush=True)

    try:
        _, history = train_student(cfg, data, teacher=teacher, report=report)
    except Diverged as e:
        print(f"kdsearch: training diverged: {e}", file=sys.stderr)
        return 1
    print(f"final val_acc {history[-1][VAL_ACC]:.4f}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from kdsearch.config import check_searchable, load_config
    from kdsearch.spaces import find

    space = find(args.space)  # a file, or the name of a shipped space
    # bad input fails here, before torch and Ray load
    check_searchable(load_config(space, args.set), str(space))
    from kdsearch.search import callbacks_named, run_search

    callbacks = callbacks_named(args.callback, [space.resolve().parent, Path.cwd()])

    try:
        result = run_search(space, overrides=args.set, address=args.address,
                            results_dir=args.results_dir, storage_path=args.storage_path,
                            force=args.force, report=not args.no_report, callbacks=callbacks)
    except KeyboardInterrupt:
        return 130  # run_search has printed the `kdsearch resume` command
    _print_result(result)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from kdsearch.search import callbacks_named, resume_search

    callbacks = callbacks_named(args.callback, [Path.cwd()])

    try:
        result = resume_search(args.results, address=args.address, report=not args.no_report,
                               callbacks=callbacks)
    except KeyboardInterrupt:
        return 130  # resume_search has printed the `kdsearch resume` command
    _print_result(result)
    return 0


def _print_result(result: "SearchResult") -> None:
    """The search's best settings, then the report's first line: the answer."""
    import json

    from kdsearch.summary import SUMMARY_JSON

    print(result.summary_line())
    if result.report_path is not None:
        summary = json.loads(result.report_path.with_name(SUMMARY_JSON).read_text())
        print(summary["answer_text"])
    else:  # --no-report
        print(f"no report written (--no-report); write it with: kdsearch report "
              f"{result.results_dir}")


def cmd_report(args: argparse.Namespace) -> int:
    from kdsearch.search import report_search

    try:
        out = report_search(args.results, retrain=not args.no_retrain,
                            in_process=args.in_process, address=args.address,
                            device=_device(args.device))
    except KeyboardInterrupt:
        return 130  # report_search has said what to do
    print(f"report: {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """A trained student written as ONNX or a torch.export program, checked on the test split."""
    from kdsearch.export import export_student

    done = export_student(args.results, width=args.width, kind=args.kind, seed=args.seed,
                          format=args.format, out=args.out, quantize=args.quantize)
    shape = "x".join(map(str, done.input_shape))
    print(f"wrote {done.path} ({done.format}: {done.kind} width {done.width}, seed "
          f"{done.seed}; input batch x {shape}, any batch size)")
    print(f"checked on the test split: largest logit difference from torch "
          f"{done.max_abs_diff:.1e}; test accuracy {100 * done.test_acc:.2f}% in torch, "
          f"{100 * done.exported_acc:.2f}% exported")
    if done.int8_path is not None:
        print(f"wrote {done.int8_path} (int8, ONNX Runtime's static quantization)")
        for q in done.quantized:
            print(f"  {q.kind} width {q.width}: {100 * q.float_acc:.2f}% float, "
                  f"{100 * q.int8_acc:.2f}% int8 ({100 * (q.int8_acc - q.float_acc):+.2f} "
                  f"points)")
    return 0


def cmd_latency(args: argparse.Namespace) -> int:
    """The saved students timed on this machine; the report's latency columns and plot
    rewritten."""
    from kdsearch.latency import measure
    from kdsearch.report import write_report

    record = measure(args.results, device=args.device, threads=args.threads)
    for t in record.timings:
        print(f"{t.kind:9} width {t.width:>5}: {t.batch1_ms:.3f} ms an example, "
              f"{t.throughput(record.batch):,.0f} examples/s at batch {record.batch}")
    print(f"report: {write_report(args.results)}")
    return 0


def cmd_spaces(args: argparse.Namespace) -> int:
    """The shipped search spaces, a line each: the name `kdsearch run NAME` takes, and what it
    searches."""
    from kdsearch.spaces import shipped, summary

    for name, path in shipped().items():
        print(f"{name:<20} {summary(path)}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """A shipped space copied into the current folder, to be edited and run."""
    from kdsearch.spaces import copy_out

    target = copy_out(args.name, Path.cwd())
    print(f"wrote {target}; edit it, then: kdsearch run {target.name}")
    return 0


def _add_verbosity(parser: argparse.ArgumentParser, dest: str) -> None:
    """-q and -v, before the subcommand (`dest` "first_level") or after it ("level")."""
    level = parser.add_mutually_exclusive_group()
    level.add_argument("-q", "--quiet", dest=dest, action="store_const", const=logging.WARNING,
                       default=None, help="print warnings and errors only")
    level.add_argument("-v", "--verbose", dest=dest, action="store_const",
                       const=logging.DEBUG, help="print kdsearch's debugging messages too")


def _add_train(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `kdsearch train`: one distillation run without Ray."""
    t = add("train", help="one distillation run without Ray (try a setting)")
    t.add_argument("config", help="config / search-space YAML (its search section is ignored)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value, e.g. --set training.temperature=8")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    t.set_defaults(func=cmd_train)


def _add_run(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `kdsearch run`: a search, its final evaluation and its report."""
    r = add("run", help="run a search described by a space file")
    r.add_argument("space", help="search-space YAML, or the name of a shipped one "
                                 "(kdsearch spaces), e.g. quickstart")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value, e.g. --set search.num_samples=8")
    r.add_argument("--address", default=None,
                   help="Ray cluster to join: auto or HOST:PORT (default: $RAY_ADDRESS, else a "
                        "local Ray)")
    r.add_argument("--results-dir", default="results",
                   help="where results/<name>/ goes (default: ./results)")
    r.add_argument("--storage-path", default=None,
                   help="Ray Tune storage (a path or URI shared by the cluster); default: the "
                        "results folder")
    r.add_argument("--force", action="store_true",
                   help="replace an existing results folder of the same name")
    r.add_argument("--no-report", action="store_true", help="skip the report at the end")
    r.add_argument("--callback", action="append", default=[], metavar="MODULE:CLASS",
                   help="a ray.tune.Callback to add, made with no arguments (repeatable), "
                        "e.g. my_callbacks:Recorder; its module is found beside the space "
                        "file, in this folder, or installed")
    r.set_defaults(func=cmd_run)


def _add_resume(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `kdsearch resume`: continue an interrupted search."""
    s = add("resume", help="continue an interrupted search")
    s.add_argument("results", help="the search's results folder, e.g. results/quickstart")
    s.add_argument("--address", default=None, help="Ray cluster to join (as for run)")
    s.add_argument("--no-report", action="store_true", help="skip the report at the end")
    s.add_argument("--callback", action="append", default=[], metavar="MODULE:CLASS",
                   help="a ray.tune.Callback for the resumed run (as for run)")
    s.set_defaults(func=cmd_resume)


def _add_report(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `kdsearch report`: write a search's report again."""
    o = add("report", help="write report.md, tables and plots for a search")
    o.add_argument("results", help="the search's results folder, e.g. results/quickstart")
    o.add_argument("--no-retrain", action="store_true",
                   help="reuse the final evaluation already in the folder where the settings "
                        "are unchanged")
    o.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the final retrainings are tested (and run, with --in-process)")
    where = o.add_mutually_exclusive_group()
    where.add_argument("--address", default=None,
                       help="Ray cluster for the retrainings (as for run; default: "
                            "$RAY_ADDRESS, else a local Ray; not used with --no-retrain)")
    where.add_argument("--in-process", action="store_true",
                       help="run the retrainings one after the other in this process, without "
                            "Ray (faster for a small search on a few cores)")
    o.set_defaults(func=cmd_report)


def _add_export(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `kdsearch export`: write a trained student as ONNX or a torch.export program."""
    e = add("export", help="write a trained student as ONNX or torch.export, checked")
    e.add_argument("results", help="the search's results folder, e.g. results/quickstart")
    which = e.add_mutually_exclusive_group()
    which.add_argument("--answer", action="store_true",
                       help="the answer's student: the smallest that meets the target "
                            "(the default)")
    which.add_argument("--width", type=int, default=None, help="the student's width")
    e.add_argument("--kind", choices=("distilled", "baseline"), default=None,
                   help="distilled, or baseline for the student trained alone (default: with "
                        "--answer, the smaller of the answer's two; else distilled)")
    e.add_argument("--seed", type=int, default=None, help="which retraining (default: the "
                                                           "first saved)")
    e.add_argument("--format", choices=("onnx", "pt2"), default="onnx")
    e.add_argument("--out", default=None, help="the file to write (default: "
                                               "RESULTS/export/KIND-wWIDTH-seedSEED.FORMAT)")
    e.add_argument("--quantize", choices=("int8",), default=None,
                   help="also write the ONNX file quantized to int8, and test it")
    e.set_defaults(func=cmd_export)


def _add_latency(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `kdsearch latency`: time the saved students on this machine."""
    lt = add("latency", help="time the saved students on this machine; rewrite the report")
    lt.add_argument("results", help="the search's results folder, e.g. results/quickstart")
    lt.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    lt.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    lt.set_defaults(func=cmd_latency)


def _add_spaces(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `kdsearch spaces` and `kdsearch init`: list or copy the shipped spaces."""
    add("spaces", help="list the shipped search spaces").set_defaults(func=cmd_spaces)
    i = add("init", help="copy a shipped search space here, to edit")
    i.add_argument("name", help="a shipped space's name (kdsearch spaces), e.g. quickstart")
    i.set_defaults(func=cmd_init)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of kdsearch's command line: one subcommand per job."""
    p = argparse.ArgumentParser(prog="kdsearch", description="Search knowledge-distillation "
                                "hyperparameters with Ray Tune.")
    p.add_argument("--version", action="version", version=f"kdsearch {__version__}")
    _add_verbosity(p, "first_level")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    _add_verbosity(common, "level")

    def add(name: str, **kwargs: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    for add_command in (_add_train, _add_run, _add_resume, _add_report, _add_export,
                        _add_latency, _add_spaces):
        add_command(add)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.level = args.level or args.first_level or logging.INFO
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        # kdsearch's messages as plain lines: progress to stdout, warnings to stderr
        with logs.console(args.level):
            return func(args)
    except KeyboardInterrupt:
        print("kdsearch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout stopped reading (`kdsearch spaces | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:
        if isinstance(e, UserError):
            # one line even when a message quotes user text with a line break in it
            print(f"kdsearch: error: {' '.join(str(e).splitlines())}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(e, OSError) and e.strerror and not os.environ.get("KDSEARCH_DEBUG"):
            # the file system said no (a folder where a file goes, a full disk, no permission):
            # the file and the reason, not a traceback
            where = f"{e.filename}: " if e.filename else ""
            print(f"kdsearch: error: {where}{e.strerror}; fix that path or its permissions and "
                  f"run the command again", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    raise SystemExit(main())
