"""The KD loss and the training loop a search trial runs: `kd_loss`, `fit`, `evaluate`.

No Ray here: `fit` hands each epoch's metrics to a `report` callback, so the same loop runs in a
Ray Tune trial, in `kdsearch train`, in the final evaluation and in a test.

Speed: the data are tensors already on the device, batches are `randperm` slices (no DataLoader,
no per-example Python), and with cached teacher logits the teacher's softened log-probabilities
are computed once per run, not once per step. On the CPU the two-hidden-layer MLP students take
the written-out step of `fast_step` (and Adam its `FusedAdam`); `training.fast_step: off`, any
other model, online teaching and CUDA take the autograd step below with `torch.optim`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch import fast_step
from kdsearch.config import ExperimentConfig, TrainingConfig
from kdsearch.data import Dataset, Split
from kdsearch.fast_step import FusedAdam
from kdsearch.losses import Loss
from kdsearch.metrics import EPOCH, EPOCH_SECONDS, TRAIN_LOSS, VAL_ACC, VAL_LOSS
from kdsearch.builders import build_student

Report = Callable[[dict[str, float], "FitState"], None]


class Diverged(RuntimeError):
    """The training loss became NaN or infinite: the setting (often lr) is unusable."""


class TeacherLike(Protocol):
    """What training a student needs of a teacher (`teacher.Teacher` is one)."""

    model: nn.Module  # run on each batch when training.shift augments the inputs
    train_logits: torch.Tensor  # its logits on data.train, in order, without augmentation


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
            labels: torch.Tensor, *, temperature: float, alpha: float, loss: str = "kd",
            epoch: int = 1, **weights: float) -> torch.Tensor:
    r"""The distillation loss of a batch (`losses.Loss`); by default Hinton et al.'s (2015):

        alpha * CE(student, labels)
        + (1 - alpha) * T^2 * KL( softmax(teacher / T) || softmax(student / T) )

    the batch's mean, computed from log-probabilities. `alpha` weighs the hard labels: alpha =
    1 is the student alone, the baseline. The T^2 factor keeps the soft term's gradients, which
    scale as 1/T^2, comparable across temperatures (Hinton et al., section 2). `loss` "dkd" or
    "ls_kd", with `weights` (dkd_alpha, dkd_beta, dkd_warmup, ls_weight), takes the others.

    `teacher_logits` may be None only with alpha = 1 (a ValueError otherwise).
    """
    if temperature <= 0:
        raise ValueError(f"kd_loss: temperature must be > 0, got {temperature=}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"kd_loss: alpha must be in [0, 1], got {alpha=}")
    if teacher_logits is None and alpha < 1.0:
        raise ValueError(f"kd_loss: alpha < 1 weighs a teacher's soft targets, but "
                         f"teacher_logits is None; pass them, or alpha=1 for plain "
                         f"cross-entropy (got {alpha=})")
    fn = Loss(loss, alpha, temperature, **weights)  # type: ignore[arg-type]
    targets = fn.teacher_targets(teacher_logits) if teacher_logits is not None and \
        alpha < 1.0 else None
    return fn(student_logits, targets, labels, epoch=epoch)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels in x and y, zero-filled (Hinton's jitter).

    Images are normalised, so zero fill is the dataset mean, not black: close enough for 2 px.
    """
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s))
    # drawn where the generator lives (fit keeps it on the data's device: no copy per step)
    dy = torch.randint(0, 2 * s + 1, (n,), generator=generator, device=generator.device)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=generator, device=generator.device)
    dy, dx = dy.to(x.device), dx.to(x.device)
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])  # n x h
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])  # n x w
    idx = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]]  # n x h x w x c
    return out.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, chunk: int = 8192) -> torch.Tensor:
    """Logits for `x` in eval mode, in chunks so a CNN on 50k images fits in memory."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i:i + chunk]) for i in range(0, len(x), chunk)])
    model.train(was_training)
    return out


def correct_on(model: nn.Module, split: Split) -> torch.Tensor:
    """Which examples of `split` the model classifies right: a bool per example, in order."""
    return predict(model, split.x).argmax(1) == split.y


def evaluate(model: nn.Module, split: Split) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` on `split`."""
    logits = predict(model, split.x)
    loss = F.cross_entropy(logits, split.y).item()
    # counted, then divided in double precision: a float32 mean of two equal counts can differ
    # in the last bit, and the report would read a tie as "-0.00 points"
    acc = int((logits.argmax(1) == split.y).sum().item()) / len(split.y)
    return acc, loss


Optimizer = torch.optim.Optimizer | FusedAdam


def make_optimizer(model: nn.Module, *, name: str, lr: float, weight_decay: float,
                   fast: bool = False) -> Optimizer:
    """Adam: `fast_step.FusedAdam` with `fast` where its kernel runs, else torch's foreach
    Adam. SGD: torch's fused kernel on CPU and CUDA (30 us a step against foreach's 48 for the
    784-20-20-10 student on 2 cores), foreach elsewhere."""
    params = list(model.parameters())
    if name == "adam":
        if fast and FusedAdam.supports(params):
            return FusedAdam(params, lr=lr, weight_decay=weight_decay)
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)
    if name == "sgd":
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        kernel = {"fused": True} if fused else {"foreach": True}
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, **kernel)
    raise ValueError(f"unknown optimizer {name!r}; allowed: adam, sgd")


def scheduled_lr(training: TrainingConfig, step: int, total_steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based) in a run of `total_steps` steps.

    cosine: from training.lr down to 0 at the last step. A function of the step alone, not a
    scheduler object with state, so a resumed run gets the same learning rates as a straight one.
    """
    if training.lr_schedule == "constant":
        return training.lr
    progress = min(step / total_steps, 1.0)
    return training.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class Steps:
    """How `fit` trains: `step(idx)` takes one optimizer step on the training rows `idx`;
    `take_loss()` is the loss summed over the rows stepped since its last call (a 0-d tensor,
    read once an epoch: no .item() sync per step)."""

    step: Callable[[torch.Tensor], None]
    take_loss: Callable[[], torch.Tensor]


def _autograd_step(model: nn.Module, optimizer: Optimizer, x: torch.Tensor,
                   y: torch.Tensor, log_targets: torch.Tensor | None, training: TrainingConfig,
                   teacher: nn.Module | None, generator: torch.Generator,
                   epoch: Callable[[], int]) -> Steps:
    """One optimizer step through autograd: any model and loss, online teaching too."""
    loss_fn = Loss.of(training)
    needs_teacher = loss_fn.uses_teacher
    loss_sum = torch.zeros((), device=x.device)

    def step(idx: torch.Tensor) -> None:
        # index_select, not x[idx]: for 128 random MNIST rows advanced indexing takes twice as
        # long on CPU (84 vs 49 us), and this gather is the step's one large memory read
        xb, yb = x.index_select(0, idx), y.index_select(0, idx)
        if training.shift > 0:
            xb = random_shift(xb, training.shift, generator)
            targets = None
            if needs_teacher:
                assert teacher is not None
                with torch.no_grad():
                    targets = loss_fn.teacher_targets(teacher(xb))
        else:
            targets = None if log_targets is None else log_targets.index_select(0, idx)
        loss = loss_fn(model(xb), targets, yb, epoch=epoch())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum.add_(loss.detach(), alpha=len(idx))

    def take_loss() -> torch.Tensor:
        total = loss_sum.clone()
        loss_sum.zero_()
        return total

    return Steps(step, take_loss)


def make_steps(model: nn.Module, optimizer: Optimizer, data: Dataset, training: TrainingConfig,
               *, log_targets: torch.Tensor | None, teacher: nn.Module | None,
               generator: torch.Generator, fast: bool, epoch: Callable[[], int] = lambda: 1
               ) -> Steps:
    """How `fit` steps `model` on data.train: the written-out MLP step (`fast`, cached targets),
    else autograd. `log_targets`: the teacher's log-probabilities per training row, as the loss
    compares them (`losses.Loss.teacher_targets`); `teacher`: the module run on each shifted
    batch instead (training.shift > 0); `epoch`: the epoch under way (from 1)."""
    x, y = data.train.x, data.train.y
    written_out = (fast_step.mlp_step(model, optimizer, x, y, log_targets, training,
                                      epoch=epoch)
                   if fast and training.shift == 0 else None)
    if written_out is not None:
        return Steps(*written_out)
    return _autograd_step(model, optimizer, x, y, log_targets, training, teacher, generator,
                          epoch)


def train_epoch(steps: Steps, order: torch.Tensor, batches: list[tuple[int, int]], *,
                set_lr: Callable[[int], None] | None = None, first_step: int = 0
                ) -> torch.Tensor:
    """One epoch of optimizer steps, batch by batch of the training rows in `order`; the loss
    summed over them, a 0-d tensor on the device, not read (reading it waits for the device).
    `set_lr(step)` sets the learning rate of each step (numbered from `first_step`)."""
    for step, (i, j) in enumerate(batches, start=first_step):
        if set_lr is not None:
            set_lr(step)
        steps.step(order[i:j])
    return steps.take_loss()


def batches_of(n: int, batch_size: int, model: nn.Module) -> list[tuple[int, int]]:
    """An epoch's batches as (start, end) rows; a last batch of one example joins the one before
    when `model` has BatchNorm (it cannot train on one example)."""
    starts = list(range(0, n, batch_size))
    if n % batch_size == 1 and len(starts) > 1 and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        starts.pop()
    return list(zip(starts, starts[1:] + [n]))


@dataclass
class FitState:
    """Everything needed to continue a run exactly where it stopped (a trial's checkpoint)."""

    model: nn.Module
    optimizer: Optimizer
    generator: torch.Generator
    epoch: int  # epochs completed

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": self.generator.get_state(), "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        try:
            self.generator.set_state(state["rng"])
        except RuntimeError:
            # a checkpoint taken on another kind of device (a CPU generator's state does not
            # fit a CUDA one): the run goes on with random numbers drawn anew from its seed
            self.generator.manual_seed(self.generator.initial_seed() + self.epoch)


def fit(model: nn.Module, data: Dataset, training: TrainingConfig, *,
        teacher_logits: torch.Tensor | None = None, teacher: nn.Module | None = None,
        report: Report | None = None, resume: dict[str, Any] | None = None,
        epochs: int | None = None) -> list[dict[str, float]]:
    """Train `model` on data.train with the KD loss; evaluate on data.val after every epoch.

    The teacher comes as cached logits on data.train (`teacher_logits`, the fast path) or, when
    `training.shift` augments the inputs, as a module run on each augmented batch (`teacher`).
    With alpha = 1 no teacher is needed. Deterministic on CPU for a given `training.seed`
    (the caller seeds the model's initialisation; see `train_student`).
    """
    loss_fn = Loss.of(training)
    needs_teacher = loss_fn.uses_teacher
    online = training.shift > 0
    if needs_teacher and online and teacher is None:
        raise ValueError("fit: training.shift > 0 needs the teacher module (online teaching)")
    if needs_teacher and not online and teacher_logits is None:
        raise ValueError("fit: alpha < 1 needs teacher_logits on the training split")
    x, y = data.train.x, data.train.y
    n = len(y)
    device = x.device
    log_targets = None
    if needs_teacher and not online:
        assert teacher_logits is not None and teacher_logits.shape[0] == n
        # computed once per run: the teacher's softened log-probabilities for every example
        if loss_fn.name == "kd":
            # over the rows of the class-major copy: the same numbers (bit for bit with 10
            # classes, to float rounding with others), 5x faster for 10 classes (torch's CPU
            # softmax over a short last dimension is slow: 4.6 against 0.7 ms on MNIST)
            scaled = teacher_logits.to(device).float().t().contiguous() / loss_fn.temperature
            log_targets = F.log_softmax(scaled, dim=0).t().contiguous()
        else:
            log_targets = loss_fn.teacher_targets(teacher_logits.to(device))
    if teacher is not None:
        teacher.eval()

    # on the data's device, so that batches and shifts are drawn there: no host copy per step
    generator = torch.Generator(device=device).manual_seed(training.seed)
    fast = fast_step.enabled(training.fast_step, device)
    optimizer = make_optimizer(model, name=training.optimizer, lr=training.lr,
                               weight_decay=training.weight_decay, fast=fast)
    state = FitState(model, optimizer, generator, 0)
    if resume is not None:
        state.load_state_dict(resume)
    total_epochs = epochs if epochs is not None else training.epochs
    batches = batches_of(n, training.batch_size, model)
    steps_per_epoch = len(batches)
    # the schedule spans training.epochs even when `epochs` stops the run early (a checkpoint
    # taken at epoch 2 of 4 must be the state of a straight 4-epoch run at epoch 2); it spans
    # `epochs` when that runs past training.epochs, rather than stalling at lr 0
    schedule_steps = max(training.epochs, total_epochs) * steps_per_epoch
    cosine = training.lr_schedule != "constant"
    history: list[dict[str, float]] = []
    model.train()
    steps = make_steps(model, optimizer, data, training, log_targets=log_targets,
                       teacher=teacher, generator=generator, fast=fast,
                       epoch=lambda: state.epoch + 1)

    def set_lr(step: int) -> None:
        for group in optimizer.param_groups:
            group["lr"] = scheduled_lr(training, step, schedule_steps)

    while state.epoch < total_epochs:
        start = time.perf_counter()
        order = torch.randperm(n, generator=generator, device=device)
        loss = train_epoch(steps, order, batches, set_lr=set_lr if cosine else None,
                           first_step=state.epoch * steps_per_epoch)
        train_loss = loss.item() / n  # the epoch's one wait for the device
        state.epoch += 1
        if not math.isfinite(train_loss):
            raise Diverged(f"training loss became {train_loss} in epoch {state.epoch} "
                           f"(lr={training.lr:g}); lower the learning rate")
        val_acc, val_loss = evaluate(model, data.val)
        if not math.isfinite(val_loss):  # the epoch's last steps broke the weights
            raise Diverged(f"validation loss became {val_loss} after epoch {state.epoch} "
                           f"(lr={training.lr:g}); lower the learning rate")
        model.train()
        metrics = {EPOCH: state.epoch, TRAIN_LOSS: train_loss, VAL_LOSS: val_loss,
                   VAL_ACC: val_acc, EPOCH_SECONDS: time.perf_counter() - start}
        history.append(metrics)
        if report is not None:
            report(metrics, state)
    return history


def train_student(cfg: ExperimentConfig, data: Dataset, *, teacher: TeacherLike | None = None,
                  report: Report | None = None, resume: dict[str, Any] | None = None,
                  factory: Callable[..., nn.Module] | None = None
                  ) -> tuple[nn.Module, list[dict[str, float]]]:
    """Build the student of `cfg` (seeded; `factory`: a student factory given as an object)
    and fit it against `teacher` with cfg.training."""
    torch.manual_seed(cfg.training.seed)
    model = build_student(cfg, data.input_shape, data.num_classes, width=cfg.student.width,
                          factory=factory).to(data.train.x.device)
    kd = cfg.training.alpha < 1.0
    if kd and teacher is None:
        raise ValueError("train_student: alpha < 1 needs a teacher")
    history = fit(model, data, cfg.training,
                  teacher_logits=teacher.train_logits if kd else None,
                  teacher=teacher.model if kd and cfg.training.shift > 0 else None,
                  report=report, resume=resume)
    return model, history
