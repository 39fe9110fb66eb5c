"""The KD loss and the training loop a search trial runs: `kd_loss`, `fit`, `evaluate`.

This module does not import Ray. `fit` hands each epoch's metrics to a `report` callback. So the
same loop runs in a Ray Tune trial, in `kdsearch train`, in the final evaluation and in a test.

Speed: the data are tensors already on the device. Batches are slices of a `randperm` order,
with no DataLoader and no Python code per example. With cached teacher logits, the teacher's
softened log-probabilities are computed once per run, not once per step. On the CPU, the MLP
students with two hidden layers take the written-out step of `fast_step`, and Adam takes its
`FusedAdam`. The autograd step below, with `torch.optim`, runs in the other cases: with
`training.fast_step: off`, for any other model, with online teaching, and on CUDA.
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
    """The training loss became NaN or infinite. The setting (often lr) cannot be used."""


class TeacherLike(Protocol):
    """What training a student needs of a teacher (`teacher.Teacher` is one)."""

    model: nn.Module  # run on each batch when training.shift augments the inputs
    train_logits: torch.Tensor  # its logits on data.train, in order, without augmentation


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
            labels: torch.Tensor, *, temperature: float, alpha: float, loss: str = "kd",
            epoch: int = 1, **weights: float) -> torch.Tensor:
    r"""Return the distillation loss of a batch, the mean over its examples (see `losses.Loss`).

    By default this is the loss of Hinton et al. (2015):

        alpha * CE(student, labels)
        + (1 - alpha) * T^2 * KL( softmax(teacher / T) || softmax(student / T) )

    It is computed from log-probabilities. `alpha` weighs the hard labels. With alpha = 1 the
    student learns alone: this is the baseline. The soft term's gradients scale as 1/T^2. The
    T^2 factor undoes this, so they stay comparable across temperatures (Hinton et al.,
    section 2). `loss` = "dkd" or "ls_kd" picks another loss, with its `weights` (dkd_alpha,
    dkd_beta, dkd_warmup, ls_weight).

    `teacher_logits` may be None only with alpha = 1. Otherwise a ValueError is raised.
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

    The images are normalised, so a zero fill is the dataset mean, not black. For shifts of 2 px
    this is close enough.
    """
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s))
    # draw on the generator's device; fit keeps it on the data's device, so no copy per step
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
    """Return the logits of `x` in eval mode, computed in chunks so a CNN on 50k images fits."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i:i + chunk]) for i in range(0, len(x), chunk)])
    model.train(was_training)
    return out


def correct_on(model: nn.Module, split: Split) -> torch.Tensor:
    """Return one bool per example of `split`, in order. It is True where the model is right."""
    return predict(model, split.x).argmax(1) == split.y


def evaluate(model: nn.Module, split: Split) -> tuple[float, float]:
    """Return (accuracy, mean cross-entropy) of `model` on `split`."""
    logits = predict(model, split.x)
    loss = F.cross_entropy(logits, split.y).item()
    # count, then divide in double precision. A float32 mean of two equal counts can differ in
    # the last bit, and the report would then show a tie as "-0.00 points".
    acc = int((logits.argmax(1) == split.y).sum().item()) / len(split.y)
    return acc, loss


Optimizer = torch.optim.Optimizer | FusedAdam


def make_optimizer(model: nn.Module, *, name: str, lr: float, weight_decay: float,
                   fast: bool = False) -> Optimizer:
    """Return the optimizer `name` ("adam" or "sgd") for the parameters of `model`.

    Adam is `fast_step.FusedAdam` when `fast` is set and its kernel supports the parameters.
    Otherwise it is torch's foreach Adam. SGD (momentum 0.9) uses torch's fused kernel on CPU
    and CUDA, and the foreach kernel elsewhere. For the 784-20-20-10 student on 2 cores, the
    fused kernel takes 30 us a step and the foreach kernel 48 us."""
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
    """Return the learning rate of optimizer step `step` (0-based) in a run of `total_steps`.

    With "constant" it is training.lr. With "cosine" it falls from training.lr to 0 at the last
    step. It depends on the step alone, with no scheduler state. So a resumed run gets the same
    learning rates as a run without a break.
    """
    if training.lr_schedule == "constant":
        return training.lr
    progress = min(step / total_steps, 1.0)
    return training.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class Steps:
    """The two functions that `fit` trains with.

    `step(idx)` takes one optimizer step on the training rows `idx`. `take_loss()` returns the
    loss summed over the rows stepped since its last call, as a 0-d tensor. `fit` reads it once
    an epoch, so there is no .item() sync per step."""

    step: Callable[[torch.Tensor], None]
    take_loss: Callable[[], torch.Tensor]


def _autograd_step(model: nn.Module, optimizer: Optimizer, x: torch.Tensor,
                   y: torch.Tensor, log_targets: torch.Tensor | None, training: TrainingConfig,
                   teacher: nn.Module | None, generator: torch.Generator,
                   epoch: Callable[[], int]) -> Steps:
    """Return the Steps that train through autograd: any model, any loss, online teaching too."""
    loss_fn = Loss.of(training)
    needs_teacher = loss_fn.uses_teacher
    loss_sum = torch.zeros((), device=x.device)

    def step(idx: torch.Tensor) -> None:
        # index_select, not x[idx]. For 128 random MNIST rows on CPU, advanced indexing takes
        # 84 us and index_select 49 us. This gather is the step's one large memory read.
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
    """Return the Steps with which `fit` trains `model` on data.train.

    With `fast` and training.shift = 0, these are the written-out MLP step of `fast_step`, when
    it supports `model`. Otherwise they are the autograd step. The arguments:

    - `log_targets`: the teacher's log-probabilities per training row, in the form the loss
      compares them (`losses.Loss.teacher_targets`).
    - `teacher`: the module run on each shifted batch instead (when training.shift > 0).
    - `epoch`: returns the epoch under way, counted from 1."""
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
    """Run one epoch of optimizer steps over the training rows in `order`, batch by batch.

    Return the loss summed over the rows, as a 0-d tensor on the device. It is not read here,
    since reading it waits for the device. `set_lr(step)` sets the learning rate of each step,
    numbered from `first_step`."""
    for step, (i, j) in enumerate(batches, start=first_step):
        if set_lr is not None:
            set_lr(step)
        steps.step(order[i:j])
    return steps.take_loss()


def batches_of(n: int, batch_size: int, model: nn.Module) -> list[tuple[int, int]]:
    """Return an epoch's batches as (start, end) row ranges.

    When `model` has BatchNorm, a last batch of one example joins the batch before it. BatchNorm
    cannot train on one example."""
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
            # the checkpoint comes from another kind of device, and a CPU generator's state does
            # not fit a CUDA generator. The run goes on with random numbers drawn from its seed.
            self.generator.manual_seed(self.generator.initial_seed() + self.epoch)


def _teacher_targets(loss_fn: Loss, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Return the teacher's targets for every training example, as the loss takes them.

    Computed once per run. For kd, they are the teacher's log-probabilities at temperature T."""
    if loss_fn.name != "kd":
        return loss_fn.teacher_targets(teacher_logits)
    # log_softmax over the class-major copy gives the same numbers: bit for bit with 10
    # classes, up to float rounding with others. It is 5x faster for 10 classes: torch's CPU
    # softmax over a short last dimension is slow (4.6 against 0.7 ms on MNIST).
    scaled = teacher_logits.float().t().contiguous() / loss_fn.temperature
    return F.log_softmax(scaled, dim=0).t().contiguous()


def fit(model: nn.Module, data: Dataset, training: TrainingConfig, *,
        teacher_logits: torch.Tensor | None = None, teacher: nn.Module | None = None,
        report: Report | None = None, resume: dict[str, Any] | None = None,
        epochs: int | None = None) -> list[dict[str, float]]:
    """Train `model` on data.train with the KD loss; evaluate on data.val after every epoch.

    The teacher comes as cached logits on data.train (`teacher_logits`, the fast path). When
    `training.shift` augments the inputs, it comes instead as a module run on each augmented
    batch (`teacher`). With alpha = 1 no teacher is needed. On the CPU, a run is deterministic
    for a given `training.seed`. The caller seeds the model's initialisation (see
    `train_student`). Return the metrics of each epoch, in order.
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
        log_targets = _teacher_targets(loss_fn, teacher_logits.to(device))
    if teacher is not None:
        teacher.eval()

    # on the data's device, so batches and shifts are drawn there with no host copy per step
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
    # The schedule spans training.epochs even when `epochs` stops the run early. A checkpoint
    # taken at epoch 2 of 4 must equal the state of a straight 4-epoch run at epoch 2. When
    # `epochs` runs past training.epochs, the schedule spans `epochs`, so the lr never sits at 0.
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
    """Build the student of `cfg`, seeded with cfg.training.seed, and fit it against `teacher`.

    `factory` is a student factory given as an object. Return (the model, each epoch's
    metrics)."""
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
