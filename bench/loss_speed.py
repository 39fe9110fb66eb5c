"""Seconds per epoch of each distillation loss, the MLP fast path against autograd, side by side.

The width-20 MLP student on MNIST's 55,000 training examples (the default MNIST teacher's logits
cached once, outside the timing), batch 128, T = 4, alpha = 0.3, every other TrainingConfig
default, one thread. For each loss (kd, dkd, ls_kd) `fit(..., epochs=1)` runs with
`training.fast_step` auto (the fast path: for kd the whole step written out; for dkd and ls_kd
the MLP's forward and backward written out and the loss's gradient through autograd) and off
(autograd and torch.optim), interleaved repeat by repeat; each time is the best of --repeats.

  .venv/bin/python bench/loss_speed.py [--data-dir DIR] [--repeats 5]

The data folder holds MNIST/raw/*.gz (torchvision layout); it defaults to $KDSEARCH_DATA_DIR,
else ../shared/datasets beside the repository (copied to a temporary folder).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from kdsearch.config import (DatasetConfig, ExperimentConfig, TeacherConfig, TrainingConfig,
                             default_cache_dir)
from kdsearch.data import load_dataset
from kdsearch.distill import fit
from kdsearch.models import mlp_student
from kdsearch.teacher import get_teacher

REPO = Path(__file__).resolve().parents[1]
LOSSES = ("kd", "dkd", "ls_kd")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get(
        "KDSEARCH_DATA_DIR", REPO.parent / "shared" / "datasets")))
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for f in (args.data_dir / "MNIST" / "raw").glob("*.gz"):
            shutil.copy(f, raw / f.name)
        cfg = ExperimentConfig(dataset=DatasetConfig(name="mnist"),
                               teacher=TeacherConfig(model="mlp_teacher"))
        data = load_dataset(cfg.dataset, data_dir=Path(tmp), cache_dir=Path(tmp))
        logits = get_teacher(cfg, data, cache_dir=default_cache_dir()).train_logits
        best: dict[tuple[str, str], float] = {}
        accs: dict[tuple[str, str], float] = {}
        for r in range(args.repeats):
            for loss in LOSSES:
                for fast in ("auto", "off"):
                    torch.manual_seed(0)
                    model = mlp_student(data.input_shape, data.num_classes, width=20)
                    training = TrainingConfig(loss=loss, fast_step=fast, epochs=1,
                                              dkd_warmup=0 if loss == "dkd" else None)
                    t0 = time.perf_counter()
                    history = fit(model, data, training, teacher_logits=logits)
                    seconds = time.perf_counter() - t0
                    key = (loss, fast)
                    best[key] = min(best.get(key, seconds), seconds)
                    accs[key] = history[-1]["val_acc"]
            print(f"repeat {r + 1} of {args.repeats} done", flush=True)
    print(f"\nseconds per epoch, best of {args.repeats} (MNIST, width 20, batch 128, 1 thread):")
    print(f"{'loss':>6} {'fast path':>10} {'autograd':>9} {'autograd/fast':>14} {'val acc':>8}")
    for loss in LOSSES:
        fast, slow = best[(loss, "auto")], best[(loss, "off")]
        print(f"{loss:>6} {fast:10.3f} {slow:9.3f} {slow / fast:14.2f} "
              f"{accs[(loss, 'auto')]:8.4f}")


if __name__ == "__main__":
    main()
