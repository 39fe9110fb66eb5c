"""The KD loss and the training loop a search trial runs: `kd_loss`, `fit`, `evaluate`.

No Ray here: `fit` hands each epoch's metrics to a `report` callback, so the same loop runs in a
Ray Tune trial, in `kdsearch train`, in the final evaluation and in a test.

Speed: the data are tensors already on the device, batches are `randperm` slices (no DataLoader,
no per-example Python), and with cached teacher logits the teacher's softened log-probabilities
are computed once per run, not once per step. `bench/epoch_speed.py` measures this loop against
seed 000's (torchvision dataset + DataLoader(batch_size=32) + a teacher forward every step): on
2 CPU cores an epoch of the 784-20-20-10 MNIST student takes 0.33 s at batch 128 against the seed
loop's 9.6 s (29x), 0.15 s at batch 512 (64x). What is left is mostly PyTorch's cost per operator
(about 230 of them, some 0.55 ms a step whatever the batch size), not arithmetic.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from typing import TYPE_CHECKING

from kdsearch.config import TrainingConfig
from kdsearch.data import Dataset, Split

if TYPE_CHECKING:
    from kdsearch.config import ExperimentConfig
    from kdsearch.teacher import Teacher

# Metric names, defined once: the search, the report and the CLI all read these.
EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
VAL_LOSS = "val_loss"
VAL_ACC = "val_acc"

Report = Callable[[dict[str, float], "FitState"], None]


class Diverged(RuntimeError):
    """The training loss became NaN or infinite: the setting (often lr) is unusable."""


def _kd_from_log_targets(student_logits: torch.Tensor, teacher_log_probs: torch.Tensor | None,
                         labels: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    hard = F.cross_entropy(student_logits, labels)
    if alpha >= 1.0 or teacher_log_probs is None:
        return hard
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    soft = F.kl_div(log_p_s, teacher_log_probs, reduction="batchmean", log_target=True)
    return alpha * hard + (1.0 - alpha) * temperature * temperature * soft


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
            labels: torch.Tensor, *, temperature: float, alpha: float) -> torch.Tensor:
    r"""Hinton et al. (2015), "Distilling the Knowledge in a Neural Network", eq. (KD):

        alpha * CE(student, labels)
        + (1 - alpha) * T^2 * KL( softmax(teacher / T) || softmax(student / T) )

    batch mean, computed from log-probabilities. `alpha` weighs the hard-label loss (as in both
    seeds): alpha = 1 is the plain student, the baseline. The T^2 factor keeps the soft term's
    gradients, which scale as 1/T^2, comparable across temperatures (Hinton et al., sec. 2).

    Seed 000 gets this wrong twice: it feeds *probabilities* (softmax) as KLDivLoss's input,
    which expects log-probabilities, so its "KL" is a meaningless quantity with nearly zero
    gradient at T = 10; and it drops the T^2 factor, which would shrink the soft term 100x even
    if it were right. The teacher then barely reaches the student, and the seed's distilled
    student ends *below* its plain student (89.42% vs 89.97%).
    """
    if temperature <= 0:
        raise ValueError(f"kd_loss: temperature must be > 0, got {temperature=}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"kd_loss: alpha must be in [0, 1], got {alpha=}")
    log_targets = None
    if teacher_logits is not None and alpha < 1.0:
        log_targets = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    return _kd_from_log_targets(student_logits, log_targets, labels, temperature, alpha)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels in x and y, zero-filled (Hinton's jitter).

    Images are normalised, so zero fill is the dataset mean, not black: close enough for 2 px.
    """
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s))
    dy = torch.randint(0, 2 * s + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=generator).to(x.device)
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


def evaluate(model: nn.Module, split: Split) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` on `split`."""
    logits = predict(model, split.x)
    loss = F.cross_entropy(logits, split.y).item()
    acc = (logits.argmax(1) == split.y).float().mean().item()
    return acc, loss


def make_optimizer(model: nn.Module, *, name: str, lr: float, weight_decay: float
                   ) -> torch.optim.Optimizer:
    params = list(model.parameters())
    # fused: the whole update in one kernel. For the 784-20-20-10 student on 2 CPU cores an Adam
    # step takes 58 us fused, 210 us foreach (SGD: 30 vs 48 us), and at batch 128 the foreach
    # step was a quarter of the training step. Other devices keep foreach.
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    kernel = {"fused": True} if fused else {"foreach": True}
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **kernel)
    if name == "sgd":
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
class FitState:
    """Everything needed to continue a run exactly where it stopped (a trial's checkpoint)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    epoch: int  # epochs completed

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": self.generator.get_state(), "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["rng"])
        self.epoch = int(state["epoch"])


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
    alpha, temperature = training.alpha, training.temperature
    needs_teacher = alpha < 1.0
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
        log_targets = F.log_softmax(teacher_logits.to(device).float() / temperature, dim=1)
    if teacher is not None:
        teacher.eval()

    generator = torch.Generator().manual_seed(training.seed)
    optimizer = make_optimizer(model, name=training.optimizer, lr=training.lr,
                               weight_decay=training.weight_decay)
    state = FitState(model, optimizer, generator, 0)
    if resume is not None:
        state.load_state_dict(resume)
    total_epochs = epochs if epochs is not None else training.epochs
    bs = training.batch_size
    steps_per_epoch = math.ceil(n / bs)
    # the schedule spans training.epochs even when `epochs` stops the run early (a checkpoint
    # taken at epoch 2 of 4 must be the state of a straight 4-epoch run at epoch 2); it spans
    # `epochs` when that runs past training.epochs, rather than stalling at lr 0
    schedule_steps = max(training.epochs, total_epochs) * steps_per_epoch
    cosine = training.lr_schedule != "constant"
    history: list[dict[str, float]] = []
    model.train()
    while state.epoch < total_epochs:
        start = time.perf_counter()
        perm = torch.randperm(n, generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        for step, i in enumerate(range(0, n, bs), start=state.epoch * steps_per_epoch):
            if cosine:
                for group in optimizer.param_groups:
                    group["lr"] = scheduled_lr(training, step, schedule_steps)
            idx = perm[i:i + bs]
            # index_select, not x[idx]: for 128 random MNIST rows advanced indexing takes twice
            # as long on CPU (84 vs 49 us), and this gather is the step's one large memory read
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            if online:
                xb = random_shift(xb, training.shift, generator)
                if needs_teacher:
                    assert teacher is not None
                    with torch.no_grad():
                        targets = F.log_softmax(teacher(xb).float() / temperature, dim=1)
                else:
                    targets = None
            else:
                targets = None if log_targets is None else log_targets.index_select(0, idx)
            loss = _kd_from_log_targets(model(xb), targets, yb, temperature, alpha)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum.add_(loss.detach(), alpha=len(idx))  # one op; no .item() sync per step
        train_loss = loss_sum.item() / n
        state.epoch += 1
        if not math.isfinite(train_loss):
            raise Diverged(f"training loss became {train_loss} in epoch {state.epoch} "
                           f"(lr={training.lr:g}); lower the learning rate")
        val_acc, val_loss = evaluate(model, data.val)
        model.train()
        metrics = {EPOCH: state.epoch, TRAIN_LOSS: train_loss, VAL_LOSS: val_loss,
                   VAL_ACC: val_acc, "epoch_seconds": time.perf_counter() - start}
        history.append(metrics)
        if report is not None:
            report(metrics, state)
    return history


def train_student(cfg: "ExperimentConfig", data: Dataset, *, teacher: "Teacher | None" = None,
                  report: Report | None = None, resume: dict[str, Any] | None = None
                  ) -> tuple[nn.Module, list[dict[str, float]]]:
    """Build the student of `cfg` (seeded) and fit it against `teacher` with cfg.training."""
    from kdsearch.models import build_student

    torch.manual_seed(cfg.training.seed)
    model = build_student(cfg.student.model, data.input_shape, data.num_classes,
                          width=cfg.student.width).to(data.train.x.device)
    kd = cfg.training.alpha < 1.0
    if kd and teacher is None:
        raise ValueError("train_student: alpha < 1 needs a teacher")
    history = fit(model, data, cfg.training,
                  teacher_logits=teacher.train_logits if kd else None,
                  teacher=teacher.model if kd and cfg.training.shift > 0 else None,
                  report=report, resume=resume)
    return model, history
