"""The KD loss and the training loop a search trial runs: `kd_loss`, `fit`, `evaluate`.

No Ray here: `fit` hands each epoch's metrics to a `report` callback, so the same loop runs in a
Ray Tune trial, in `kdsearch train`, in the final evaluation and in a test.

Speed: the data are tensors already on the device, batches are `randperm` slices (no DataLoader,
no per-example Python), and with cached teacher logits the teacher's softened log-probabilities
are computed once per run, not once per step. The seed-000 students (two-hidden-layer MLPs) take
a written-out step, gradients by hand: ~30 operators a step instead of autograd's ~230
(`_analytic_mlp_step`); every other model takes the autograd step. Adam is `FusedAdam`, torch's
fused kernel without `torch.optim`'s Python around it, over one flat tensor in the MLP step.
`bench/epoch_speed.py` measures this loop against seed 000's (torchvision dataset +
DataLoader(batch_size=32) + a teacher forward every step): on 2 CPU cores an epoch of the
784-20-20-10 MNIST student takes 0.11 s at batch 128 against the seed loop's 5.1-5.4 s on
2026-11-23's late hours (48-49x; 0.15 s, 35-36x, before the step was laid out feature-major
and flat; 0.27 s through autograd), 0.08 s at batch 512.
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
    # counted, then divided in double precision: a float32 mean of two equal counts can differ
    # in the last bit, and the report would read a tie as "-0.00 points"
    acc = int((logits.argmax(1) == split.y).sum().item()) / len(split.y)
    return acc, loss


class FusedAdam:
    """`torch.optim.Adam(fused=True)`: the same kernel, state and state_dict, in a few lines.

    Two reasons not to use torch's class for the search's default optimizer:
    - every `torch.optim.Optimizer` method is wrapped to turn off torch.compile, and the first
      call imports `torch._dynamo`: ~1.9 s of CPU in every process that trains (each trial
      actor, the driver's final evaluation), a quarter of a quickstart search's start-up;
    - `Adam.step` spends ~130 us a call in Python (grouping tensors by device, bookkeeping)
      around a ~30 us kernel: a fifth of the written-out MLP step.
    `step` calls what `Adam.step` calls for fused parameters on one device, `_foreach_add_` on
    the step counts then `torch._fused_adam_`, on state laid out as Adam lays it out, so the
    updates are Adam's bit for bit and a checkpoint of either loads into the other
    (tests/test_distill.py checks both). The MLP step lays it all out flat first (`flatten`):
    one kernel call a step, Adam to rounding.
    """

    def __init__(self, params: list[torch.Tensor], *, lr: float, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = params
        self.param_groups = [{"params": params, "lr": lr, "betas": betas, "eps": eps,
                              "weight_decay": weight_decay, "amsgrad": False,
                              "maximize": False, "foreach": None, "capturable": False,
                              "differentiable": False, "fused": True,
                              "decoupled_weight_decay": False}]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        self._bound: list[list[torch.Tensor]] | None = None
        self._flat: list[list[torch.Tensor]] | None = None  # see flatten()
        self._flat_grads: list[torch.Tensor] = []

    @staticmethod
    def supports(params: list[torch.Tensor]) -> bool:
        """One device, CPU or CUDA, floating point: where the fused kernel runs."""
        return (hasattr(torch, "_fused_adam_") and len({p.device for p in params}) == 1
                and all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                        for p in params))

    def flatten(self) -> list[torch.Tensor] | None:
        """Lay the parameters, their gradients and Adam's state out as views of one flat tensor
        each, so that a step is one kernel call over all of them: ~11 us against ~35 us for the
        six tensors of the 784-20-20-10 student on 2 cores (the kernel's threads start once,
        not once a tensor). Returns the gradients (zeros), which the caller writes in place
        before each `step`; None, and nothing changed, where the parameters differ in device
        or dtype, or their Adam state in step count, or only some of them have state.

        The arithmetic is Adam's, element by element, but not bit for bit: the kernel's vector
        loop and its scalar tail round differently, and flat, a tensor's last few elements move
        from one to the other (~1e-8 apart). A `step` that finds a gradient replaced (by
        `zero_grad`, or autograd) goes back to one tensor at a time. A parameter given new
        storage afterwards (`.to()` another device or dtype, `load_state_dict(assign=True)`)
        is no longer the tensor this optimizer steps: as with any optimizer, move the model
        first (`fit` flattens after every move).
        """
        params = self.params
        if not params or len({(p.device, p.dtype) for p in params}) != 1:
            return None
        counts = {float(st["step"]) for st in self.state.values()}
        if len(counts) > 1 or (counts and len(self.state) != len(params)):
            return None
        like = params[0]
        n = sum(p.numel() for p in params)
        flat, grad, exp_avg, exp_avg_sq = (torch.zeros(n, dtype=like.dtype, device=like.device)
                                           for _ in range(4))
        count = torch.tensor(counts.pop() if counts else 0.0, device=like.device)
        offset = 0
        for p in params:
            part = slice(offset, offset + p.numel())
            old = self.state.get(p)
            state = {"step": count, "exp_avg": exp_avg[part].view_as(p),
                     "exp_avg_sq": exp_avg_sq[part].view_as(p)}
            if old is not None:
                state["exp_avg"].copy_(old["exp_avg"])
                state["exp_avg_sq"].copy_(old["exp_avg_sq"])
            flat[part].copy_(p.detach().flatten())
            p.data = flat[part].view_as(p)
            p.grad = grad[part].view_as(p)
            self.state[p] = state
            offset += p.numel()
        self._flat = [[flat], [grad], [exp_avg], [exp_avg_sq], [count]]
        self._flat_grads = [p.grad for p in params]
        self._bound = None
        return list(self._flat_grads)

    def _unflatten(self) -> None:
        """Back to one tensor at a time (the views stay): each parameter its own step count."""
        self._flat = None
        for state in self.state.values():
            state["step"] = state["step"].clone()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def _bind(self) -> list[list[torch.Tensor]]:
        """[params, grads, exp_avgs, exp_avg_sqs, steps] of the parameters with a gradient."""
        params = [p for p in self.params if p.grad is not None]
        for p in params:
            if p not in self.state:  # Adam's lazy state: step count on the device, fp32
                self.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                                 "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        states = [self.state[p] for p in params]
        return [params, [p.grad for p in params], [st["exp_avg"] for st in states],
                [st["exp_avg_sq"] for st in states], [st["step"] for st in states]]

    @torch.no_grad()
    def step(self) -> None:
        if self._flat is not None and any(p.grad is not g
                                          for p, g in zip(self.params, self._flat_grads)):
            self._unflatten()
        bound = self._flat
        if bound is None:
            # the lists are kept while the gradients stay the same tensors, as the MLP step
            # keeps them: building them is a tenth of that step
            bound = self._bound
            if bound is None or any(p.grad is not g for p, g in zip(self.params, bound[1])):
                bound = self._bind()
                self._bound = bound if len(bound[0]) == len(self.params) else None
        params, grads, exp_avgs, exp_avg_sqs, steps = bound
        if not params:
            return
        g = self.param_groups[0]
        beta1, beta2 = g["betas"]
        if len(steps) == 1:  # flat: one count (a foreach call of one tensor costs 4x more)
            steps[0].add_(1)
        else:
            torch._foreach_add_(steps, 1)
        torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False,
                           lr=g["lr"], beta1=beta1, beta2=beta2, weight_decay=g["weight_decay"],
                           eps=g["eps"], maximize=False, grad_scale=None, found_inf=None)

    def state_dict(self) -> dict[str, Any]:
        """As `torch.optim.Adam.state_dict` has it: state and hyperparameters by index (each
        parameter's step count a tensor of its own, flat or not)."""
        index = {p: i for i, p in enumerate(self.params)}
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return {"state": {index[p]: {**st, "step": st["step"].clone()}
                          for p, st in self.state.items()},
                "param_groups": [{**group, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """An Adam state_dict, this class's or `torch.optim.Adam`'s (fused or not)."""
        groups = state["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError("the optimizer state does not match the model's parameters "
                             f"({sum(len(g['params']) for g in groups)} saved, "
                             f"{len(self.params)} here)")
        saved = groups[0]
        if saved.get("amsgrad") or saved.get("maximize") or saved.get("decoupled_weight_decay"):
            raise ValueError("the optimizer state is not plain Adam's (amsgrad, maximize or "
                             "decoupled weight decay)")
        g = self.param_groups[0]
        for k in ("lr", "betas", "eps", "weight_decay"):
            g[k] = tuple(saved[k]) if k == "betas" else saved[k]
        self.state, self._bound, self._flat = {}, None, None
        for i, p in zip(saved["params"], self.params):
            st = state["state"].get(i)
            if not st:
                continue
            if st["exp_avg"].shape != p.shape:
                raise ValueError(f"the optimizer state does not match the model's parameters "
                                 f"(shape {tuple(st['exp_avg'].shape)} saved for one of "
                                 f"shape {tuple(p.shape)})")
            self.state[p] = {
                "step": torch.as_tensor(st["step"]).to(device=p.device, dtype=torch.float32),
                "exp_avg": st["exp_avg"].to(device=p.device, dtype=p.dtype),
                "exp_avg_sq": st["exp_avg_sq"].to(device=p.device, dtype=p.dtype)}


Optimizer = torch.optim.Optimizer | FusedAdam


def make_optimizer(model: nn.Module, *, name: str, lr: float, weight_decay: float
                   ) -> Optimizer:
    """Adam is `FusedAdam` where its kernel runs (CPU, CUDA), else torch's foreach Adam. SGD:
    torch's fused kernel on CPU and CUDA (30 us a step against foreach's 48 for the
    784-20-20-10 student on 2 cores), foreach elsewhere."""
    params = list(model.parameters())
    if name == "adam":
        if FusedAdam.supports(params):
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
                   teacher: nn.Module | None, generator: torch.Generator) -> Steps:
    """One optimizer step through autograd: any model, online teaching too."""
    alpha, temperature = training.alpha, training.temperature
    needs_teacher = alpha < 1.0
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
                    targets = F.log_softmax(teacher(xb).float() / temperature, dim=1)
        else:
            targets = None if log_targets is None else log_targets.index_select(0, idx)
        loss = _kd_from_log_targets(model(xb), targets, yb, temperature, alpha)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum.add_(loss.detach(), alpha=len(idx))

    def take_loss() -> torch.Tensor:
        total = loss_sum.clone()
        loss_sum.zero_()
        return total

    return Steps(step, take_loss)


def _analytic_mlp_step(model: nn.Module, optimizer: Optimizer, x: torch.Tensor,
                       y: torch.Tensor, log_targets: torch.Tensor | None,
                       training: TrainingConfig) -> Steps | None:
    """The same step for a dropout-free two-hidden-layer MLP, with its gradients written out.

    None for any other model. This is the search's common case (the seed-000 students) and the
    one where PyTorch's cost per operator, not arithmetic, sets the speed: autograd records and
    replays some 230 small operators a step. Written out, a step is ~30 operators:

      z = MLP(x);  dL/dz = (alpha * softmax(z) + (1 - alpha) * T * softmax(z / T) - Q) / B

    with Q = alpha * onehot(y) + (1 - alpha) * T * softmax(teacher / T), fixed per example and
    so computed once per run, like the teacher's targets; the epoch's train_loss is kd_loss's
    value, -alpha * log p(y) + (1 - alpha) * T^2 * sum p_t (log p_t - log softmax(z / T)),
    summed element by element over the epoch and reduced once.

    The activations are laid out feature-major (units x batch): a softmax over the 10 rows of
    a 10 x 128 tensor takes 1.6 us on 2 cores, over the 10 columns of a 128 x 10 one 11 us,
    and W1 @ x.T is faster than x @ W1.T (26 against 37 us). With Adam, the parameters,
    gradients and state are flat (`FusedAdam.flatten`): one kernel call a step.
    tests/test_distill.py checks the loss, the gradients and whole runs against autograd.
    """
    from kdsearch.models import MLP

    if type(model) is not MLP or not isinstance(model.dropout, nn.Identity):
        return None
    fc1, fc2, fc3 = model.fc1, model.fc2, model.fc3
    params = [fc1.weight, fc1.bias, fc2.weight, fc2.bias, fc3.weight, fc3.bias]
    alpha, temperature = training.alpha, training.temperature
    kd = log_targets is not None and alpha < 1.0
    x = x.flatten(1)
    k = fc3.out_features
    soft = (1.0 - alpha) * temperature
    with torch.no_grad():
        onehot = F.one_hot(y, k).to(x.dtype)
        if kd:
            assert log_targets is not None
            p_t = log_targets.exp()
            # per example, in one tensor so that a step gathers its rows once: Q, the loss's
            # weights on log softmax(z) and on log softmax(z / T) - log p_t, and log p_t
            table = torch.cat([onehot * alpha + p_t * soft, onehot * alpha,
                               p_t * (soft * temperature), log_targets], 1)
        else:
            table = onehot
    # the gradient tensors, written in place every step (the optimizer reads them)
    flat = optimizer.flatten() if isinstance(optimizer, FusedAdam) else None
    grads = flat if flat is not None else [torch.zeros_like(p) for p in params]
    for p, grad in zip(params, grads):
        p.grad = grad
    w1, b1, w2, b2, w3, b3 = params  # after flatten: views of its flat tensor
    b1c, b2c, b3c, w2t, w3t = b1.unsqueeze(1), b2.unsqueeze(1), b3.unsqueeze(1), w2.t(), w3.t()
    gw1, gb1, gw2, gb2, gw3, gb3 = grads
    threshold_backward = torch.ops.aten.threshold_backward
    inv_t = 1.0 / temperature
    full = training.batch_size
    # the loss's terms, summed element by element over the epoch's steps (one op a term)
    terms = torch.zeros(k, full, dtype=x.dtype, device=x.device)
    update = optimizer.step

    def step(idx: torch.Tensor) -> None:
        with torch.no_grad():
            b = len(idx)
            acc = terms if b == full else terms[:, :b]
            xb = x.index_select(0, idx)
            h1 = torch.addmm(b1c, w1, xb.t()).relu_()
            h2 = torch.addmm(b2c, w2, h1).relu_()
            z = torch.addmm(b3c, w3, h2)
            rows = table.index_select(0, idx).t()
            log_p = torch.log_softmax(z, 0)
            acc.addcmul_(rows[k:2 * k] if kd else rows, log_p)
            if kd:
                log_p_s = torch.log_softmax(z.mul_(inv_t), 0)
                # the KL term as kl_div computes it, p_t * (log p_t - log p_s) summed, not as a
                # difference of two sums: at T = 20 those are ~1000 times the KL itself
                acc.addcmul_(rows[2 * k:3 * k], torch.sub(log_p_s, rows[3 * k:]))
                g = log_p.exp_().mul_(alpha / b)
                g.add_(log_p_s.exp_(), alpha=soft / b).sub_(rows[:k], alpha=1.0 / b)
            else:
                g = log_p.exp_().sub_(rows).div_(b)
            torch.mm(g, h2.t(), out=gw3)
            torch.sum(g, 1, out=gb3)
            g2 = threshold_backward(torch.mm(w3t, g), h2, 0)
            torch.mm(g2, h1.t(), out=gw2)
            torch.sum(g2, 1, out=gb2)
            g1 = threshold_backward(torch.mm(w2t, g2), h1, 0)
            torch.mm(g1, xb, out=gw1)
            torch.sum(g1, 1, out=gb1)
        update()

    def take_loss() -> torch.Tensor:
        total = terms.sum().neg_()
        terms.zero_()
        return total

    return Steps(step, take_loss)


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
        # computed once per run: the teacher's softened log-probabilities for every example.
        # Over the rows of the class-major copy: the same numbers (bit for bit with 10
        # classes, to float rounding with others), 5x faster for 10 classes (torch's CPU
        # softmax over a short last dimension is slow: 4.6 against 0.7 ms on MNIST)
        scaled = teacher_logits.to(device).float().t().contiguous() / temperature
        log_targets = F.log_softmax(scaled, dim=0).t().contiguous()
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
    starts = list(range(0, n, bs))
    if n % bs == 1 and len(starts) > 1 and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        # BatchNorm cannot train on a batch of one example: it joins the batch before
        starts.pop()
    batches = list(zip(starts, starts[1:] + [n]))
    steps_per_epoch = len(batches)
    # the schedule spans training.epochs even when `epochs` stops the run early (a checkpoint
    # taken at epoch 2 of 4 must be the state of a straight 4-epoch run at epoch 2); it spans
    # `epochs` when that runs past training.epochs, rather than stalling at lr 0
    schedule_steps = max(training.epochs, total_epochs) * steps_per_epoch
    cosine = training.lr_schedule != "constant"
    history: list[dict[str, float]] = []
    model.train()
    steps = ((None if online else
              _analytic_mlp_step(model, optimizer, x, y, log_targets, training))
             or _autograd_step(model, optimizer, x, y, log_targets, training, teacher,
                               generator))
    while state.epoch < total_epochs:
        start = time.perf_counter()
        perm = torch.randperm(n, generator=generator).to(device)
        for step, (i, j) in enumerate(batches, start=state.epoch * steps_per_epoch):
            if cosine:
                for group in optimizer.param_groups:
                    group["lr"] = scheduled_lr(training, step, schedule_steps)
            steps.step(perm[i:j])
        train_loss = steps.take_loss().item() / n
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
