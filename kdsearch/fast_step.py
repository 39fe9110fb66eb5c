"""The CPU fast path of `distill.fit`: the written-out MLP step and `FusedAdam`.

On a CPU, a small student's step is bound by PyTorch's cost per operator, not by arithmetic:
autograd records and replays some 230 small operators a step for the two-hidden-layer MLP
students, and `torch.optim.Adam.step` spends ~130 us in Python around a ~30 us kernel. Here:

- `mlp_step`: the step of a dropout-free two-hidden-layer MLP with its gradients written out,
  ~30 operators, activations laid out feature-major;
- `FusedAdam`: torch's fused Adam kernel without `torch.optim`'s Python around it, over one flat
  tensor in the MLP step (one kernel call a step), with Adam's state and state_dict.

`training.fast_step` switches it: `auto` (the default) takes it on the CPU; on CUDA, where no
benchmark has shown it faster, `fit` runs autograd and `torch.optim` (as `off` does anywhere).
tests/test_distill.py checks both against autograd and an independent plain-PyTorch reference.
`bench/epoch_speed.py` measures the loop against seed 000's (torchvision dataset +
DataLoader(batch_size=32) + a teacher forward every step): on 2 CPU cores an epoch of the
784-20-20-10 MNIST student takes 0.11 s at batch 128 against the seed loop's 5.1-5.4 s on
2026-11-23's late hours (48-49x; 0.15 s, 35-36x, before the step was laid out feature-major
and flat; 0.27 s through autograd), 0.08 s at batch 512.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.config import FAST_STEPS, TrainingConfig
from kdsearch.losses import Loss
from kdsearch.models import MLP


def enabled(setting: str, device: torch.device) -> bool:
    """Whether `fit` takes the fast path (`training.fast_step`): `auto` on the CPU, `off` never."""
    assert setting in FAST_STEPS, setting
    return setting == "auto" and device.type == "cpu"


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


def mlp_step(model: nn.Module, optimizer: Any, x: torch.Tensor, y: torch.Tensor,
             log_targets: torch.Tensor | None, training: TrainingConfig, *,
             epoch: Callable[[], int] = lambda: 1
             ) -> tuple[Callable[[torch.Tensor], None], Callable[[], torch.Tensor]] | None:
    """`distill.fit`'s step for a dropout-free two-hidden-layer MLP, gradients written out:
    (step(idx), take_loss()) as `distill.Steps` holds them, or None for any other model.

    This is the search's common case (the seed-000 students) and the
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
    if type(model) is not MLP or not isinstance(model.dropout, nn.Identity):
        return None
    if training.loss != "kd" and log_targets is not None and training.alpha < 1.0:
        return _mlp_step_any_loss(model, optimizer, x, y, log_targets, training, epoch)
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

    return step, take_loss


def _mlp_step_any_loss(model: nn.Module, optimizer: Any, x: torch.Tensor, y: torch.Tensor,
                       log_targets: torch.Tensor, training: TrainingConfig,
                       epoch: Callable[[], int]
                       ) -> tuple[Callable[[torch.Tensor], None], Callable[[], torch.Tensor]]:
    """`mlp_step` for a loss other than Hinton's (dkd, ls_kd): the MLP's forward and backward
    written out as there, the loss's gradient with respect to the logits (a batch x classes
    tensor) through autograd."""
    loss_fn = Loss.of(training)
    fc1, fc2, fc3 = model.fc1, model.fc2, model.fc3
    params = [fc1.weight, fc1.bias, fc2.weight, fc2.bias, fc3.weight, fc3.bias]
    x = x.flatten(1)
    flat = optimizer.flatten() if isinstance(optimizer, FusedAdam) else None
    grads = flat if flat is not None else [torch.zeros_like(p) for p in params]
    for p, grad in zip(params, grads):
        p.grad = grad
    w1, b1, w2, b2, w3, b3 = params
    b1c, b2c, b3c, w2t, w3t = b1.unsqueeze(1), b2.unsqueeze(1), b3.unsqueeze(1), w2.t(), w3.t()
    gw1, gb1, gw2, gb2, gw3, gb3 = grads
    threshold_backward = torch.ops.aten.threshold_backward
    total = torch.zeros((), dtype=x.dtype, device=x.device)
    update = optimizer.step

    def step(idx: torch.Tensor) -> None:
        with torch.no_grad():
            xb = x.index_select(0, idx)
            h1 = torch.addmm(b1c, w1, xb.t()).relu_()
            h2 = torch.addmm(b2c, w2, h1).relu_()
            z = torch.addmm(b3c, w3, h2)
        logits = z.t().requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(logits, log_targets.index_select(0, idx), y.index_select(0, idx),
                           epoch=epoch())
            (g,) = torch.autograd.grad(loss, logits)
        with torch.no_grad():
            total.add_(loss.detach(), alpha=len(idx))
            g = g.t()
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
        out = total.clone()
        total.zero_()
        return out

    return step, take_loss
