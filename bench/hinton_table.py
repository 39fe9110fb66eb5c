"""Hinton et al. (2015)'s MNIST figures, as far as a CPU allows: fixed settings, no search.

Takes `search_spaces/hinton_mnist.yaml`'s teacher (2x1200, dropout 0.5, inputs jittered by up to
2 pixels) from the cache, or trains it for --teacher-epochs, then trains students without jitter
from its cached logits (with --student-shift N: on inputs jittered by up to N pixels, the teacher
run on each jittered batch), each for --epochs epochs with --seeds seeds:

  2x800 alone (alpha = 1) and distilled at T = 20, alpha = 0.1 (the paper's 146 and 74 errors)
  2x30 alone and distilled at each T of --small-temperatures (the paper: best T 2.5-4)

and prints test errors on MNIST's 10,000 test images beside the paper's. The 2x30 temperatures
are ranked by validation accuracy (the split the search would use); test errors are printed for
all of them, but a temperature chosen by test errors would be chosen on the test set.

Usage (MNIST files in torchvision layout under $KDSEARCH_DATA_DIR):
  KDSEARCH_DATA_DIR=/tmp/kd-data .venv/bin/python bench/hinton_table.py \
      [--teacher-epochs 20] [--epochs 20] [--seeds 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "search_spaces" / "hinton_mnist.yaml"
PAPER = {"teacher": "67", "800 alone": "146", "800 T=20": "74", "30 alone": "-",
         "30": "- (best T 2.5-4)"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher-epochs", type=int, default=20,
                   help="the teacher's epochs (hinton_mnist.yaml: 60)")
    p.add_argument("--epochs", type=int, default=20, help="each student's epochs (yaml: 30)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--lr-800", type=float, default=1e-3)
    p.add_argument("--lr-30", type=float, default=5e-3)
    p.add_argument("--small-temperatures", type=float, nargs="+",
                   default=[1.0, 2.5, 4.0, 8.0, 20.0])
    p.add_argument("--student-shift", type=int, default=0,
                   help="jitter the students' inputs by up to this many pixels, as the "
                        "teacher's were (the teacher then runs on each jittered batch)")
    p.add_argument("--no-small", action="store_true", help="the 2x800 rows only")
    args = p.parse_args()

    import dataclasses

    from kdsearch.config import default_cache_dir, default_data_dir, load_config, with_params
    from kdsearch.data import load_dataset, load_test
    from kdsearch.distill import evaluate, train_student
    from kdsearch.teacher import get_teacher

    cfg = load_config(SPACE, [f"teacher.epochs={args.teacher_epochs}",
                              f"training.epochs={args.epochs}",
                              f"training.shift={args.student_shift}"])
    data_dir, cache_dir = default_data_dir(cfg), default_cache_dir(cfg)
    data = load_dataset(cfg.dataset, data_dir=data_dir, cache_dir=cache_dir)
    start = time.perf_counter()
    teacher = get_teacher(cfg, data, cache_dir=cache_dir)
    how = "trained" if teacher.trained_now else "from the cache"
    teacher_s = time.perf_counter() - start
    test = load_test(cfg.dataset, data, data_dir=data_dir, cache_dir=cache_dir)
    n_test = len(test.y)

    def errors(acc: float) -> int:
        return round((1 - acc) * n_test)

    rows: list[tuple[str, str, list[int], list[float], float]] = []
    teacher_err = errors(evaluate(teacher.model, test)[0])
    print(f"teacher 2x1200 (dropout 0.5, jitter 2 px, {args.teacher_epochs} epochs, {how} in "
          f"{teacher_s:.0f} s): {teacher_err} test errors, val acc {teacher.val_acc:.4f}",
          flush=True)

    def run(label: str, paper: str, width: int, lr: float, alpha: float, t: float) -> None:
        errs, vals = [], []
        t0 = time.perf_counter()
        for seed in range(args.seeds):
            c = with_params(cfg, {"width": width, "lr": lr, "alpha": alpha, "temperature": t})
            c = dataclasses.replace(c, training=dataclasses.replace(c.training, seed=seed))
            model, history = train_student(c, data, teacher=teacher if alpha < 1 else None)
            errs.append(errors(evaluate(model, test)[0]))
            vals.append(history[-1]["val_acc"])
        rows.append((label, paper, errs, vals, time.perf_counter() - t0))
        print(f"{label}: test errors {errs}, val acc {statistics.mean(vals):.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)

    run("2x800 alone", PAPER["800 alone"], 800, args.lr_800, 1.0, 1.0)
    run("2x800 distilled, T = 20", PAPER["800 T=20"], 800, args.lr_800, 0.1, 20.0)
    if not args.no_small:
        run("2x30 alone", PAPER["30 alone"], 30, args.lr_30, 1.0, 1.0)
        for t in args.small_temperatures:
            run(f"2x30 distilled, T = {t:g}", PAPER["30"], 30, args.lr_30, 0.1, t)

    jitter = (f", inputs jittered by up to {args.student_shift} px" if args.student_shift
              else "")
    print(f"\nMNIST test errors (of {n_test:,}); students {args.epochs} epochs{jitter}, "
          f"alpha = 0.1 when distilled, {args.seeds} seed(s); teacher {args.teacher_epochs} "
          f"epochs\n")
    print("| network | test errors (per seed) | mean | val acc | Hinton et al. 2015 |")
    print("|---|---|---:|---:|---:|")
    print(f"| teacher 2x1200, dropout, jitter | {teacher_err} | {teacher_err} | "
          f"{teacher.val_acc:.4f} | {PAPER['teacher']} |")
    for label, paper, errs, vals, _ in rows:
        print(f"| {label} | {', '.join(map(str, errs))} | {statistics.mean(errs):.1f} | "
              f"{statistics.mean(vals):.4f} | {paper} |")
    small = [r for r in rows if r[0].startswith("2x30 distilled")]
    if not small:
        return
    best = max(small, key=lambda r: statistics.mean(r[3]))
    print(f"\n2x30: best temperature by val accuracy: {best[0].split('= ')[1]} "
          f"(val {statistics.mean(best[3]):.4f}, {statistics.mean(best[2]):.1f} test errors)")


if __name__ == "__main__":
    main()
