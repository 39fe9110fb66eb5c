"""The CPU fast path of `distill.fit`: the written-out MLP step and `FusedAdam`.

On a CPU, a small student's step is bound by PyTorch's cost per operator, not by arithmetic.
For the MLP students with two hidden layers, autograd records and replays some 230 small
operators a step. `torch.optim.Adam.step` spends about 130 us in Python around a kernel of
about 30 us. This module has two parts:

- `mlp_step`: the step of a dropout-free MLP with two hidden layers, with its gradients written
  out. It takes about 30 operators, with the activations laid out feature-major.
- `FusedAdam`: torch's fused Adam kernel without `torch.optim`'s Python around it, with Adam's
  state and state_dict. In the MLP step it runs over one flat tensor: one kernel call a step.

`training.fast_step` switches the fast path on and off. With `auto` (the default), `fit` takes
it on the CPU. No benchmark has shown it faster on CUDA, so there `fit` runs autograd and
`torch.optim`, as `off` does everywhere. tests/test_distill.py checks both parts against
autograd and against an independent plain-PyTorch reference.

`bench/epoch_speed.py` measures the loop against the loop of the "seed 000" blog post (a
torchvision dataset, DataLoader(batch_size=32), and a teacher forward every step). On 2 CPU
cores, an epoch of the 784-20-20-10 MNIST student takes 0.11 s at batch 128, against 5.1-5.4 s
for that loop (48-49x). It takes 0.08 s at batch 512, and 0.27 s at batch 128 through autograd.
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
    """Return whether `fit` takes the fast path: with `auto` on the CPU, and never with `off`."""
    assert setting in FAST_STEPS, setting
    return setting == "auto" and device.type == "cpu"


class FusedAdam:
    """`torch.optim.Adam(fused=True)` in a few lines: the same kernel, state and state_dict.

    There are two reasons not to use torch's class for the search's default optimizer:

    - Every `torch.optim.Optimizer` method is wrapped to turn off torch.compile, and the first
      call imports `torch._dynamo`. This costs about 1.9 s of CPU in every process that trains
      (each trial actor, and the driver's final evaluation). That is a quarter of the start-up
      of a quickstart search.
    - `Adam.step` spends about 130 us a call in Python (grouping tensors by device,
      bookkeeping) around a kernel of about 30 us. That is a fifth of the written-out MLP step.

    `step` calls what `Adam.step` calls for fused parameters on one device: `_foreach_add_` on
    the step counts, then `torch._fused_adam_`. The state is laid out as Adam lays it out. So
    the updates are Adam's bit for bit, and a checkpoint of either class loads into the other
    (tests/test_distill.py checks both). The MLP step first lays everything out flat
    (`flatten`). A step is then one kernel call, and equal to Adam's up to rounding.
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
        """Return whether the fused kernel runs on `params`: floating point, on one CPU or CUDA
        device."""
        return (hasattr(torch, "_fused_adam_") and len({p.device for p in params}) == 1
                and all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                        for p in params))

    def flatten(self) -> list[torch.Tensor] | None:
        """Lay out the parameters, their gradients and Adam's state as views of one flat tensor
        each.

        A step is then one kernel call over all of them. For the six tensors of the
        784-20-20-10 student on 2 cores, it takes about 11 us against about 35 us, because the
        kernel's threads start once, not once a tensor. Return the gradients (zeros). The
        caller writes them in place before each `step`. Return None, and change nothing, when
        the parameters differ in device or dtype, when their Adam states differ in step count,
        or when only some of them have state.

        The arithmetic is Adam's, element by element, but not bit for bit. The kernel's vector
        loop and its scalar tail round differently. Laid out flat, a tensor's last few elements
        move from one to the other (about 1e-8 apart). A `step` that finds a gradient replaced
        (by `zero_grad`, or by autograd) goes back to one tensor at a time. A parameter given
        new storage afterwards (`.to()` another device or dtype, `load_state_dict(assign=True)`)
        is no longer the tensor this optimizer steps. So, as with any optimizer, move the model
        first. `fit` flattens after every move.
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
        """Go back to one tensor at a time. The views stay; each parameter gets its own count."""
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
        """Return [params, grads, exp_avgs, exp_avg_sqs, steps] of the parameters with a grad."""
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
            # keep the lists while the gradients stay the same tensors, as in the MLP step.
            # Building them takes a tenth of that step.
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
        """Return the state as `torch.optim.Adam.state_dict` does, by parameter index.

        Each parameter's step count is a tensor of its own, flat or not."""
        index = {p: i for i, p in enumerate(self.params)}
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return {"state": {index[p]: {**st, "step": st["step"].clone()}
                          for p, st in self.state.items()},
                "param_groups": [{**group, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load an Adam state_dict, of this class or of `torch.optim.Adam` (fused or not)."""
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


class _Layers:
    """The written-out MLP's parameters and gradients, feature-major (units x batch).

    The gradient tensors are bound to the parameters' `.grad` (with FusedAdam, views of its
    flat tensor), written in place by `backward` and read by the optimizer."""

    def __init__(self, model: nn.Module, optimizer: Any) -> None:
        fc1, fc2, fc3 = model.fc1, model.fc2, model.fc3
        params = [fc1.weight, fc1.bias, fc2.weight, fc2.bias, fc3.weight, fc3.bias]
        flat = optimizer.flatten() if isinstance(optimizer, FusedAdam) else None
        grads = flat if flat is not None else [torch.zeros_like(p) for p in params]
        for p, grad in zip(params, grads):
            p.grad = grad
        w1, b1, w2, b2, w3, b3 = params  # after flatten: views of its flat tensor
        self.w1, self.w2, self.w3 = w1, w2, w3
        self.b1c, self.b2c, self.b3c = b1.unsqueeze(1), b2.unsqueeze(1), b3.unsqueeze(1)
        self.w2t, self.w3t = w2.t(), w3.t()
        self.grads = grads
        self.classes = fc3.out_features
        self.threshold_backward = torch.ops.aten.threshold_backward

    def forward(self, xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the hidden activations and the logits of a batch, each units x batch."""
        h1 = torch.addmm(self.b1c, self.w1, xb.t()).relu_()
        h2 = torch.addmm(self.b2c, self.w2, h1).relu_()
        return h1, h2, torch.addmm(self.b3c, self.w3, h2)

    def backward(self, g: torch.Tensor, xb: torch.Tensor, h1: torch.Tensor,
                 h2: torch.Tensor) -> None:
        """Write the parameters' gradients, given the loss's gradient g on the logits."""
        gw1, gb1, gw2, gb2, gw3, gb3 = self.grads
        threshold_backward = self.threshold_backward
        torch.mm(g, h2.t(), out=gw3)
        torch.sum(g, 1, out=gb3)
        g2 = threshold_backward(torch.mm(self.w3t, g), h2, 0)
        torch.mm(g2, h1.t(), out=gw2)
        torch.sum(g2, 1, out=gb2)
        g1 = threshold_backward(torch.mm(self.w2t, g2), h1, 0)
        torch.mm(g1, xb, out=gw1)
        torch.sum(g1, 1, out=gb1)


@torch.no_grad()
def _example_table(y: torch.Tensor, log_targets: torch.Tensor | None, classes: int,
                   alpha: float, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    """Return what `mlp_step` needs of each example, one row each, so a step gathers once.

    Without a teacher: onehot(y). With one, four blocks of `classes` columns: Q, the loss's
    weights on log softmax(z) and on log softmax(z / T) - log p_t, and log p_t."""
    onehot = F.one_hot(y, classes).to(dtype)
    if log_targets is None:
        return onehot
    soft = (1.0 - alpha) * temperature
    p_t = log_targets.exp()
    return torch.cat([onehot * alpha + p_t * soft, onehot * alpha,
                      p_t * (soft * temperature), log_targets], 1)


def mlp_step(model: nn.Module, optimizer: Any, x: torch.Tensor, y: torch.Tensor,
             log_targets: torch.Tensor | None, training: TrainingConfig, *,
             epoch: Callable[[], int] = lambda: 1
             ) -> tuple[Callable[[torch.Tensor], None], Callable[[], torch.Tensor]] | None:
    """Return `distill.fit`'s step for a dropout-free MLP with two hidden layers, written out.

    The result is (step(idx), take_loss()) as `distill.Steps` holds them, or None for any other
    model. With the losses dkd and ls_kd, it is the step of `_mlp_step_any_loss`.

    This MLP is the search's common case (the 784-W-W-10 students). It is also the case where
    PyTorch's cost per operator, not arithmetic, sets the speed. Autograd records and replays
    some 230 small operators a step. Written out, a step is about 30 operators:

      z = MLP(x);  dL/dz = (alpha * softmax(z) + (1 - alpha) * T * softmax(z / T) - Q) / B

    Here Q = alpha * onehot(y) + (1 - alpha) * T * softmax(teacher / T). Q is fixed per example,
    so it is computed once per run, like the teacher's targets. The epoch's train_loss is the
    value of kd_loss,

      -alpha * log p(y) + (1 - alpha) * T^2 * sum p_t (log p_t - log softmax(z / T)),

    summed element by element over the epoch and reduced once.

    The activations are laid out feature-major (units x batch). On 2 cores, a softmax over the
    10 rows of a 10 x 128 tensor takes 1.6 us. Over the 10 columns of a 128 x 10 tensor it
    takes 11 us. W1 @ x.T is also faster than x @ W1.T (26 against 37 us). With Adam, the
    parameters, gradients and state are flat (`FusedAdam.flatten`), so a step is one kernel
    call. tests/test_distill.py checks the loss, the gradients and whole runs against autograd.
    """
    if type(model) is not MLP or not isinstance(model.dropout, nn.Identity):
        return None
    if training.loss != "kd" and log_targets is not None and training.alpha < 1.0:
        return _mlp_step_any_loss(model, optimizer, x, y, log_targets, training, epoch)
    layers = _Layers(model, optimizer)
    alpha, temperature = training.alpha, training.temperature
    kd = log_targets is not None and alpha < 1.0
    x = x.flatten(1)
    k = layers.classes
    soft = (1.0 - alpha) * temperature
    table = _example_table(y, log_targets if kd else None, k, alpha, temperature, x.dtype)
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
            h1, h2, z = layers.forward(xb)
            rows = table.index_select(0, idx).t()
            log_p = torch.log_softmax(z, 0)
            acc.addcmul_(rows[k:2 * k] if kd else rows, log_p)
            if kd:
                log_p_s = torch.log_softmax(z.mul_(inv_t), 0)
                # the KL term as kl_div computes it: the sum of p_t * (log p_t - log p_s). A
                # difference of two sums loses precision, since at T = 20 each is ~1000x the KL.
                acc.addcmul_(rows[2 * k:3 * k], torch.sub(log_p_s, rows[3 * k:]))
                g = log_p.exp_().mul_(alpha / b)
                g.add_(log_p_s.exp_(), alpha=soft / b).sub_(rows[:k], alpha=1.0 / b)
            else:
                g = log_p.exp_().sub_(rows).div_(b)
            layers.backward(g, xb, h1, h2)
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
    """Return `mlp_step`'s step for a loss other than Hinton's (dkd, ls_kd).

    The MLP's forward and backward passes are written out as in `mlp_step`. The loss's
    gradient with respect to the logits (a batch x classes tensor) comes from autograd."""
    loss_fn = Loss.of(training)
    layers = _Layers(model, optimizer)
    x = x.flatten(1)
    total = torch.zeros((), dtype=x.dtype, device=x.device)
    update = optimizer.step

    def step(idx: torch.Tensor) -> None:
        with torch.no_grad():
            xb = x.index_select(0, idx)
            h1, h2, z = layers.forward(xb)
        logits = z.t().requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(logits, log_targets.index_select(0, idx), y.index_select(0, idx),
                           epoch=epoch())
            (g,) = torch.autograd.grad(loss, logits)
        with torch.no_grad():
            total.add_(loss.detach(), alpha=len(idx))
            layers.backward(g.t(), xb, h1, h2)
        update()

    def take_loss() -> torch.Tensor:
        out = total.clone()
        total.zero_()
        return out

    return step, take_loss
