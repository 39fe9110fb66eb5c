"""Seconds per KD epoch of the width-20 MNIST student: seed 000's loop vs `kdsearch.fit`.

Both run side by side in one process, interleaved repeat by repeat, on the same 55,000-example
training split (MNIST's 60,000 less kdsearch's 5,000 validation examples):

  seed loop  torchvision MNIST + transforms.ToTensor() + DataLoader(batch_size=32, shuffle=True),
             a forward of the 784-1200-1200-10 teacher (eval mode) every step, the seed's own loss
             (KLDivLoss on probabilities, no T^2; T = 10, alpha = 0.3), Adam(lr=1e-4); stopped
             after 55,000 examples so that it sees as many as an epoch of ours.
  kdsearch   fit() with the teacher's logits cached once (outside the timing), the data as
             in-memory tensors, the correct KD loss (T = 4, alpha = 0.3) and every other
             TrainingConfig default; the wall time of the whole fit(..., epochs=1) call, so it
             includes the optimizer's creation and the evaluation on the validation split.

Each time is the best of --repeats runs (background load only ever adds time). Run it on an
otherwise idle machine all the same: torch's threads wait for each other, so other busy processes
slow the rows many-fold, and not evenly. The accuracy is the validation accuracy of that one-epoch
run (its cosine schedule spans the one epoch; deterministic for the seed, the same every repeat).
"Epochs to 0.95" trains with every TrainingConfig default (10 epochs, cosine) and stops at the
first epoch whose validation accuracy is >= 0.95.

The teacher is kdsearch's default MNIST teacher from its cache ($KDSEARCH_CACHE_DIR, else
~/.cache/kdsearch), trained there on the first run (10 epochs, about 95 s on 2 cores) and reused
after. The timings do not depend on it; the KD accuracies do.

Measured on an idle 2-core AMD EPYC VM, torch 2.14.1, 2 threads: the seed loop 10.0 s an epoch;
fit() 0.46 s at batch 32 (22x), 0.18 s at the default 128 (56x), 0.10 s at 512 (96x); the same
student through autograd (wrapped in nn.Sequential) 0.33 s at 128 (30x).

--compile adds a row: the written-out step compiled whole by torch.compile (`compiled_mlp_step`,
an experiment that kdsearch does not ship), and how many epochs its compile time takes to pay
back. bench/RESULTS.md, item 1, has its figures and why it is not kdsearch's step.

Usage:
  .venv/bin/python bench/epoch_speed.py [--data-dir DIR] [--repeats 3] [--quick] [--compile]

The data folder holds MNIST/raw/*.gz (torchvision layout); it defaults to $KDSEARCH_DATA_DIR,
else ../shared/datasets beside the repository. The files are copied to a temporary folder,
because torchvision decompresses next to them.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.config import (DatasetConfig, ExperimentConfig, TeacherConfig, TrainingConfig,
                             default_cache_dir)
from kdsearch.data import Dataset, load_dataset
from kdsearch.distill import VAL_ACC, FitState, fit, predict
from kdsearch.models import mlp_student, mlp_teacher
from kdsearch.teacher import get_teacher

REPO = Path(__file__).resolve().parents[1]
SHAPE = (1, 28, 28)
TARGET = 0.95  # validation accuracy for "epochs to"


def copy_mnist(data_dir: Path, tmp: Path) -> Path:
    raw = data_dir / "MNIST" / "raw"
    files = sorted(f for f in raw.glob("*") if f.is_file()) if raw.is_dir() else []
    if not files:
        raise SystemExit(f"no MNIST files in {raw}; pass --data-dir or set KDSEARCH_DATA_DIR to a "
                         f"folder holding MNIST/raw/*.gz")
    (tmp / "MNIST" / "raw").mkdir(parents=True)
    for f in files:
        shutil.copy(f, tmp / "MNIST" / "raw" / f.name)
    return tmp


def seed_loop_epoch(root: Path, teacher: nn.Module, n_examples: int, fraction: float) -> float:
    """Seconds for n_examples of seed 000's KD loop (scaled up from `fraction` of them)."""
    import torchvision
    from torch.utils.data import DataLoader
    from torchvision import transforms

    batch_size, lr, temp, alpha = 32, 1e-4, 10, 0.3  # the seed's settings
    train_dataset = torchvision.datasets.MNIST(root=str(root), train=True,
                                               transform=transforms.ToTensor(), download=True)
    train_loader = DataLoader(dataset=train_dataset, batch_size=batch_size, shuffle=True)
    student_model = mlp_student(SHAPE, 10)
    hard_loss = nn.CrossEntropyLoss()
    soft_loss = nn.KLDivLoss(reduction="batchmean")
    optimizer = torch.optim.Adam(student_model.parameters(), lr=lr)
    teacher.eval()
    student_model.train()
    steps = math.ceil(fraction * n_examples / batch_size)
    start = time.perf_counter()
    for step, (data, targets) in enumerate(train_loader):  # the seed wraps this in tqdm
        if step == steps:
            break
        with torch.no_grad():
            teacher_preds = teacher(data)
        student_preds = student_model(data)
        student_loss = hard_loss(student_preds, targets)
        # the seed's loss as written: probabilities where KLDivLoss wants log-probabilities
        ditillation_loss = soft_loss(F.softmax(student_preds / temp, dim=1),
                                     F.softmax(teacher_preds / temp, dim=1))
        loss = alpha * student_loss + (1 - alpha) * ditillation_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / fraction


def ours_epoch(data: Dataset, logits: torch.Tensor, batch_size: int, *, autograd: bool = False
               ) -> tuple[float, float]:
    """(seconds, val accuracy) of one kdsearch epoch at `batch_size`, everything else default.

    autograd: the same student wrapped in nn.Sequential, which `fit` trains through autograd
    (the step every model other than the plain MLP student takes) instead of the written-out
    MLP step.
    """
    torch.manual_seed(0)
    model: nn.Module = mlp_student(SHAPE, 10)
    if autograd:
        model = nn.Sequential(model)
    start = time.perf_counter()
    history = fit(model, data, TrainingConfig(batch_size=batch_size, epochs=1),
                  teacher_logits=logits)
    return time.perf_counter() - start, history[-1][VAL_ACC]


def compiled_mlp_step(model: nn.Module, optimizer: object, x: torch.Tensor, y: torch.Tensor,
                      log_targets: torch.Tensor | None, training: TrainingConfig):
    """The written-out MLP step (`kdsearch.fast_step.mlp_step`), compiled whole by
    torch.compile (inductor): forward, the hand-written gradients and Adam's update in one graph,
    so inductor can fuse the ~30 small operators around the matmuls into a few C++ loops.

    An experiment, not kdsearch's step: it keeps its own Adam state (Adam's arithmetic, as
    torch's fused kernel does it), takes alpha and T as constants (a new trial would compile
    again) and the learning rate as a tensor, which fit's cosine schedule writes every step.
    """
    from kdsearch.models import MLP

    assert type(model) is MLP and log_targets is not None
    params = [p.detach() for p in (model.fc1.weight, model.fc1.bias, model.fc2.weight,
                                   model.fc2.bias, model.fc3.weight, model.fc3.bias)]
    alpha, temp, k = training.alpha, training.temperature, model.fc3.out_features
    soft = (1.0 - alpha) * temp
    x = x.flatten(1)
    onehot = F.one_hot(y, k).to(x.dtype)
    p_t = log_targets.exp()
    table = torch.cat([onehot * alpha + p_t * soft, onehot * alpha, p_t * (soft * temp),
                       log_targets], 1)
    exp_avg = [torch.zeros_like(p) for p in params]
    exp_avg_sq = [torch.zeros_like(p) for p in params]
    count = torch.zeros(())
    lr = torch.zeros(())
    (beta1, beta2), eps, wd = (0.9, 0.999), 1e-8, training.weight_decay

    def whole_step(w1, b1, w2, b2, w3, b3, exp_avg, exp_avg_sq, count, lr, x, table, idx,
                   loss_sum):
        xb = x.index_select(0, idx)
        h1 = torch.addmm(b1, xb, w1.t()).relu()
        h2 = torch.addmm(b2, h1, w2.t()).relu()
        z = torch.addmm(b3, h2, w3.t())
        rows = table.index_select(0, idx)
        log_p = torch.log_softmax(z, 1)
        log_p_s = torch.log_softmax(z * (1.0 / temp), 1)
        loss_sum.add_(-(rows[:, k:2 * k] * log_p).sum()
                      + (rows[:, 2 * k:3 * k] * (rows[:, 3 * k:] - log_p_s)).sum())
        g = (log_p.exp() * alpha + log_p_s.exp() * soft - rows[:, :k]) / idx.shape[0]
        g2 = (g @ w3) * (h2 > 0)
        g1 = (g2 @ w2) * (h1 > 0)
        grads = (g1.t() @ xb, g1.sum(0), g2.t() @ h1, g2.sum(0), g.t() @ h2, g.sum(0))
        count.add_(1)
        step_size = lr / (1 - beta1 ** count)
        root_bc2 = (1 - beta2 ** count).sqrt()
        for p, grad, m, v in zip((w1, b1, w2, b2, w3, b3), grads, exp_avg, exp_avg_sq):
            if wd:
                grad = grad + wd * p
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            p.sub_(step_size * m / (v.sqrt() / root_bc2 + eps))

    from torch._inductor import config as inductor_config

    # compile in this process: inductor's pool of compile workers would still be busy on the
    # 2 cores while the next rows are timed
    inductor_config.compile_threads = 1
    compiled = torch.compile(whole_step, dynamic=False)
    group = optimizer.param_groups[0]  # type: ignore[attr-defined]
    loss_sum = torch.zeros(())

    def step(idx: torch.Tensor) -> None:
        with torch.no_grad():
            lr.fill_(group["lr"])
            compiled(*params, exp_avg, exp_avg_sq, count, lr, x, table, idx, loss_sum)

    def take_loss() -> torch.Tensor:
        total = loss_sum.clone()
        loss_sum.zero_()
        return total

    return step, take_loss


def compiled_epoch(data: Dataset, logits: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """`ours_epoch` with `compiled_mlp_step` in place of kdsearch's written-out step."""
    import kdsearch.fast_step as fast_step

    kept = fast_step.mlp_step
    fast_step.mlp_step = compiled_mlp_step  # type: ignore[assignment]
    try:
        return ours_epoch(data, logits, batch_size)
    finally:
        fast_step.mlp_step = kept


class _Reached(Exception):
    pass


def epochs_to(data: Dataset, training: TrainingConfig, logits: torch.Tensor | None
              ) -> tuple[int | None, list[float]]:
    """(first epoch whose val accuracy is >= TARGET, or None; the accuracies on the way)."""
    accs: list[float] = []

    def report(metrics: dict[str, float], state: FitState) -> None:
        accs.append(metrics[VAL_ACC])
        if metrics[VAL_ACC] >= TARGET:
            raise _Reached  # what an early-stopping scheduler does to a trial

    torch.manual_seed(training.seed)
    try:
        fit(mlp_student(SHAPE, 10), data, training, teacher_logits=logits, report=report)
    except _Reached:
        return len(accs), accs
    return None, accs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_dir = os.environ.get("KDSEARCH_DATA_DIR") or str(REPO.parent / "shared" / "datasets")
    p.add_argument("--data-dir", type=Path, default=Path(default_dir),
                   help="folder holding MNIST/raw/*.gz (default: $KDSEARCH_DATA_DIR, else "
                        "../shared/datasets beside the repository)")
    p.add_argument("--repeats", type=int, help="best of this many runs per row (default 3)")
    p.add_argument("--seed-fraction", type=float,
                   help="time this fraction of the seed loop's epoch and scale it up (default 1)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--teacher-epochs", type=int,
                   help="train a teacher for this many epochs here instead of taking the cached "
                        "default one (0: random weights)")
    p.add_argument("--max-epochs", type=int, default=TrainingConfig().epochs,
                   help="training.epochs for 'epochs to 0.95' (the cosine schedule spans them)")
    p.add_argument("--compile", action="store_true",
                   help="add a row: the written-out step compiled by torch.compile (inductor; "
                        "needs a C++ compiler), with its compile time")
    p.add_argument("--quick", action="store_true",
                   help="defaults of --repeats 1 --seed-fraction 0.25: a rough table in a third "
                        "of the time")
    args = p.parse_args()
    for name, full, quick in [("repeats", 3, 1), ("seed_fraction", 1.0, 0.25)]:
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if not 0 < args.seed_fraction <= 1:
        raise SystemExit(f"--seed-fraction must be in (0, 1], got {args.seed_fraction}")

    default_bs = TrainingConfig().batch_size
    sizes = sorted(set(args.batch_sizes) | {default_bs})
    with tempfile.TemporaryDirectory(prefix="kdsearch-bench-") as tmp:
        root = copy_mnist(args.data_dir, Path(tmp))
        data = load_dataset(DatasetConfig(name="mnist"), data_dir=root, cache_dir=Path(tmp))
        n = len(data.train)

        start = time.perf_counter()
        if args.teacher_epochs is None:
            cfg = ExperimentConfig(dataset=DatasetConfig(name="mnist"))
            cached = get_teacher(cfg, data, cache_dir=default_cache_dir(cfg))
            teacher, val_acc = cached.model, cached.val_acc
            how = "trained and cached" if cached.trained_now else "from the cache"
            teacher_note = (f"kdsearch's default ({cfg.teacher.epochs} epochs), {how} in "
                            f"{time.perf_counter() - start:.0f} s, val acc {val_acc:.4f}")
        else:
            torch.manual_seed(0)
            teacher, tc = mlp_teacher(SHAPE, 10), TeacherConfig()
            teacher_note = "random weights"
            if args.teacher_epochs > 0:
                h = fit(teacher, data, TrainingConfig(alpha=1.0, epochs=args.teacher_epochs,
                                                      lr=tc.lr, batch_size=tc.batch_size))
                teacher_note = (f"trained here for {args.teacher_epochs} epoch(s) in "
                                f"{time.perf_counter() - start:.0f} s, val acc "
                                f"{h[-1][VAL_ACC]:.4f}")
        teacher.eval()
        logits = predict(teacher, data.train.x)  # the cache: once, outside every timing

        ours_epoch(data, logits, default_bs)  # warm-up: first-call allocations, thread pool
        compile_first = compiled_epoch(data, logits, default_bs)[0] if args.compile else 0.0
        seed_times: list[float] = []
        ours: dict[int, list[tuple[float, float]]] = {bs: [] for bs in sizes}
        autograd: list[tuple[float, float]] = []
        compiled: list[tuple[float, float]] = []
        for _ in range(args.repeats):  # interleaved, so background load hits every row alike
            seed_times.append(seed_loop_epoch(root, teacher, n, args.seed_fraction))
            for bs in sizes:
                ours[bs].append(ours_epoch(data, logits, bs))
            autograd.append(ours_epoch(data, logits, default_bs, autograd=True))
            if args.compile:
                compiled.append(compiled_epoch(data, logits, default_bs))

        base = TrainingConfig()
        reach = {label: epochs_to(data, training, lg) for label, training, lg in [
            (f"alpha=1 (no teacher), batch {default_bs}",
             TrainingConfig(alpha=1.0, epochs=args.max_epochs), None),
            (f"KD alpha={base.alpha:g} T={base.temperature:g}, batch {default_bs}",
             TrainingConfig(epochs=args.max_epochs), logits),
        ]}

    seed = min(seed_times)
    scaled = "" if args.seed_fraction == 1 else f" ({args.seed_fraction:g} of it, scaled up)"
    print(f"One KD epoch of the 784-20-20-10 student on MNIST ({n:,} training examples), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; best of {args.repeats}.")
    print(f"Teacher 784-1200-1200-10: {teacher_note}.")
    print("Seed loop: its own loss (KLDivLoss on probabilities), a teacher forward every step.\n")
    print(f"{'loop':<34} {'batch':>5} {'s/epoch':>8} {'speedup':>8} {'val acc':>8}")
    print(f"{'seed 000 (DataLoader + teacher fwd)':<34} {32:>5} {seed:>8.3f} {1:>7.1f}x "
          f"{'-':>8}{scaled}")
    for bs in sizes:
        t = min(s for s, _ in ours[bs])
        acc = ours[bs][0][1]
        mark = "  (default)" if bs == default_bs else ""
        print(f"{'kdsearch fit (cached logits)':<34} {bs:>5} {t:>8.3f} {seed / t:>7.1f}x "
              f"{acc:>8.4f}{mark}")
    t = min(s for s, _ in autograd)
    print(f"{'  the same through autograd':<34} {default_bs:>5} {t:>8.3f} {seed / t:>7.1f}x "
          f"{autograd[0][1]:>8.4f}  (the step of CNNs and online teaching)")
    if compiled:
        t = min(s for s, _ in compiled)
        ours_t = min(s for s, _ in ours[default_bs])
        first = compile_first - t
        even = f"{first / (ours_t - t):.0f} epochs" if ours_t > t else "never"
        print(f"{'  the same under torch.compile':<34} {default_bs:>5} {t:>8.3f} {seed / t:>7.1f}x "
              f"{compiled[0][1]:>8.4f}  (compiling: {first:.1f} s more on the first call; "
              f"pays for itself after {even})")
    print(f"\nEpochs to val acc {TARGET} at the TrainingConfig defaults (lr {base.lr:g} "
          f"{base.lr_schedule} over {args.max_epochs} epochs, seed {base.seed}):")
    for label, (epochs, accs) in reach.items():
        got = f"{epochs}" if epochs is not None else f"not within {args.max_epochs}"
        print(f"  {label:<32} {got:>3}   val acc by epoch: {' '.join(f'{a:.4f}' for a in accs)}")
    if args.teacher_epochs is not None:
        print("  (KD learns from the teacher trained here, not kdsearch's default one)")


if __name__ == "__main__":
    main()
