"""The CPU fast path (`kdsearch.fast_step`): the written-out MLP step and FusedAdam against
autograd and torch's Adam, `training.fast_step` switching it, and (on a GPU) the step on CUDA."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from conftest import same_weights, student
from kdsearch.config import TrainingConfig
from kdsearch.data import Dataset
from kdsearch.distill import TRAIN_LOSS, VAL_ACC, VAL_LOSS, fit, kd_loss, make_optimizer
from kdsearch.fast_step import FusedAdam, enabled, mlp_step
from kdsearch.models import build_teacher


@pytest.mark.parametrize("temperature,alpha", [(4.0, 1.0), (4.0, 0.3), (20.0, 0.0), (1.0, 0.7)])
def test_written_out_mlp_step_has_kd_loss_and_its_gradients(
        digits: Dataset, digits_teacher_logits: torch.Tensor, temperature: float,
        alpha: float) -> None:
    model = student(digits, width=12)
    ref = student(digits, width=12)
    training = TrainingConfig(alpha=alpha, temperature=temperature)
    log_targets = F.log_softmax(digits_teacher_logits / temperature, dim=1)
    # lr 0: the step leaves the weights as they were and its gradients in .grad
    optimizer = make_optimizer(model, name="sgd", lr=0.0, weight_decay=0.0)
    written_out = mlp_step(model, optimizer, digits.train.x, digits.train.y,
                           log_targets if alpha < 1 else None, training)
    assert written_out is not None
    step, take_loss = written_out
    idx = torch.randperm(len(digits.train.y), generator=torch.Generator().manual_seed(1))[:50]
    step(idx)
    loss_sum = take_loss()
    assert same_weights(model, ref)

    loss = kd_loss(ref(digits.train.x[idx]), digits_teacher_logits[idx], digits.train.y[idx],
                   temperature=temperature, alpha=alpha)
    loss.backward()
    assert loss_sum.item() / len(idx) == pytest.approx(loss.item(), rel=1e-4)  # float32
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name


def test_the_fast_path_is_taken_by_the_mlp_student_alone(digits: Dataset) -> None:
    training = TrainingConfig()
    for model, expected in [(student(digits), True),
                            (torch.nn.Sequential(student(digits)), False),
                            (student(digits, model="cnn_student", width=8), False),
                            (build_teacher("mlp_teacher", digits.input_shape, 10, width=16),
                             False)]:
        optimizer = make_optimizer(model, name="adam", lr=1e-3, weight_decay=0.0, fast=True)
        step = mlp_step(model, optimizer, digits.train.x, digits.train.y, None, training)
        assert (step is not None) == expected, type(model).__name__


@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_fit_with_the_written_out_step_matches_autograd(
        digits: Dataset, digits_teacher_logits: torch.Tensor, alpha: float) -> None:
    # the same network, once as the MLP student (written-out step) and once inside
    # nn.Sequential, which fit trains through autograd
    training = TrainingConfig(epochs=3, batch_size=64, alpha=alpha, temperature=3.0,
                              weight_decay=1e-4, seed=2)
    fast, slow = student(digits), torch.nn.Sequential(student(digits))
    through_autograd: set[str] = set()  # which took a backward pass through its first layer
    fast.fc1.weight.register_hook(lambda g: through_autograd.add("fast"))
    slow[0].fc1.weight.register_hook(lambda g: through_autograd.add("slow"))
    h_fast = fit(fast, digits, training, teacher_logits=digits_teacher_logits)
    h_slow = fit(slow, digits, training, teacher_logits=digits_teacher_logits)
    assert through_autograd == {"slow"}  # the MLP student took the written-out step
    for a, b in zip(h_fast, h_slow):
        assert a[TRAIN_LOSS] == pytest.approx(b[TRAIN_LOSS], rel=1e-4)
        assert a[VAL_LOSS] == pytest.approx(b[VAL_LOSS], rel=1e-3)
        assert abs(a[VAL_ACC] - b[VAL_ACC]) <= 2 / len(digits.val.y)
    for p, q in zip(fast.parameters(), slow.parameters()):
        assert torch.allclose(p, q, atol=1e-4)
    assert not same_weights(fast, student(digits))  # it trained


def _adam_steps(models: list[torch.nn.Module], optimizers: list, steps: range, seed: int
                ) -> None:
    """Steps `steps` of a run: every model gets the same gradients (drawn from `seed`, in the
    same tensors for FusedAdam, as the MLP step writes them; fresh ones for torch's Adam) and a
    learning rate that changes each step."""
    gen = torch.Generator().manual_seed(seed)
    for i in range(steps.stop):
        grads = [torch.randn(p.shape, generator=gen) for p in models[0].parameters()]
        if i < steps.start:
            continue
        for model, optimizer in zip(models, optimizers):
            for p, g in zip(model.parameters(), grads):
                if p.grad is None or not isinstance(optimizer, FusedAdam):
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
            optimizer.param_groups[0]["lr"] = 1e-2 / (i + 1)
            optimizer.step()


def _same_adam_state(a: dict, b: dict) -> bool:
    sa, sb = a["state"], b["state"]
    return sa.keys() == sb.keys() and all(
        torch.equal(sa[k][f], sb[k][f]) and sa[k][f].dtype == sb[k][f].dtype
        for k in sa for f in ("step", "exp_avg", "exp_avg_sq"))


def test_fused_adam_is_torch_adam_bit_for_bit(digits: Dataset) -> None:
    models = [student(digits) for _ in range(3)]
    optimizers = [torch.optim.Adam(models[0].parameters(), lr=1e-2, weight_decay=1e-3,
                                   fused=True),
                  torch.optim.Adam(models[1].parameters(), lr=1e-2, weight_decay=1e-3),
                  make_optimizer(models[2], name="adam", lr=1e-2, weight_decay=1e-3,
                                 fast=True)]
    assert isinstance(optimizers[2], FusedAdam)
    _adam_steps(models, optimizers, range(5), seed=0)
    assert same_weights(models[0], models[2])
    assert not same_weights(models[0], student(digits))  # it stepped
    fused, ours = optimizers[0].state_dict(), optimizers[2].state_dict()
    assert _same_adam_state(fused, ours)
    assert int(ours["state"][0]["step"]) == 5
    assert ours["param_groups"] == fused["param_groups"]
    for p, q in zip(models[1].parameters(), models[2].parameters()):  # unfused: to rounding
        assert torch.allclose(p, q, atol=1e-6)
    # as in torch's Adam, a parameter without a gradient does not step
    before = models[2].fc3.bias.clone()
    models[2].fc3.bias.grad = None
    optimizers[2].step()
    assert torch.equal(models[2].fc3.bias, before)
    steps = {k: int(v["step"]) for k, v in optimizers[2].state_dict()["state"].items()}
    assert steps == {0: 6, 1: 6, 2: 6, 3: 6, 4: 6, 5: 5}
    assert isinstance(make_optimizer(models[0], name="sgd", lr=0.1, weight_decay=0.0),
                      torch.optim.SGD)


def test_flattened_fused_adam_is_torch_adam_to_rounding_and_its_checkpoint_loads_in_torch(
        digits: Dataset) -> None:
    """The MLP step's layout: parameters, gradients and state as views of flat tensors, one
    kernel call a step. Adam to rounding; its checkpoint resumes in torch's Adam (each step
    count a tensor of its own there, or torch would count every step six times); a gradient
    replaced behind its back (autograd, zero_grad) takes it back to one tensor at a time."""
    models = [student(digits) for _ in range(2)]
    reference = torch.optim.Adam(models[0].parameters(), lr=1e-2, weight_decay=1e-3,
                                 fused=True)
    ours = make_optimizer(models[1], name="adam", lr=1e-2, weight_decay=1e-3, fast=True)
    assert isinstance(ours, FusedAdam)
    _adam_steps(models, [reference, ours], range(2), seed=3)  # state before flattening too
    grads = ours.flatten()
    assert grads is not None and all(p.grad is g for p, g in zip(models[1].parameters(), grads))
    storages = {p.untyped_storage().data_ptr() for p in models[1].parameters()}
    assert len(storages) == 1  # one flat tensor
    _adam_steps(models, [reference, ours], range(2, 8), seed=3)
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7)
    assert not same_weights(models[1], student(digits))
    state = ours.state_dict()
    assert [int(st["step"]) for st in state["state"].values()] == [8] * 6
    assert len({id(st["step"]) for st in state["state"].values()}) == 6

    buf = io.BytesIO()
    torch.save({"model": models[1].state_dict(), "optimizer": state}, buf)
    buf.seek(0)
    checkpoint = torch.load(buf, weights_only=True)
    resumed = student(digits, seed=5)
    resumed.load_state_dict(checkpoint["model"])
    torch_adam = torch.optim.Adam(resumed.parameters(), lr=1e-2, fused=True)
    torch_adam.load_state_dict(checkpoint["optimizer"])
    _adam_steps([models[0], resumed], [reference, torch_adam], range(8, 10), seed=3)
    assert [int(st["step"]) for st in torch_adam.state_dict()["state"].values()] == [10] * 6
    for p, q in zip(models[0].parameters(), resumed.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7)

    # fresh gradient tensors (as autograd leaves them): one tensor at a time, still Adam
    ours.zero_grad()
    _adam_steps([models[1]], [ours], range(8, 10), seed=3)  # the steps the reference took
    steps = [int(st["step"]) for st in ours.state_dict()["state"].values()]
    assert steps == [10] * 6
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7)
    # state of unequal step counts cannot be flat
    models[1].fc3.bias.grad = None
    ours.step()
    assert ours.flatten() is None


def test_fused_adam_checkpoints_load_both_ways(digits: Dataset) -> None:
    """A checkpoint of torch's Adam resumes in FusedAdam, and one of FusedAdam in torch's Adam,
    through torch.save / torch.load(weights_only=True), as a trial's checkpoint does."""
    make = {"torch": lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, fused=True),
            "ours": lambda m: FusedAdam(list(m.parameters()), lr=1e-2, weight_decay=0.0)}
    straight = student(digits)
    reference = make["torch"](straight)
    _adam_steps([straight], [reference], range(6), seed=1)
    for first, second in [("torch", "ours"), ("ours", "torch")]:
        model = student(digits)
        optimizer = make[first](model)
        _adam_steps([model], [optimizer], range(3), seed=1)
        buf = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buf)
        buf.seek(0)
        checkpoint = torch.load(buf, weights_only=True)
        resumed = student(digits, seed=5)
        optimizer = make[second](resumed)
        resumed.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        _adam_steps([resumed], [optimizer], range(3, 6), seed=1)
        assert same_weights(straight, resumed), (first, second)
        assert _same_adam_state(reference.state_dict(), optimizer.state_dict()), (first, second)

    other = torch.optim.Adam(student(digits, width=8).parameters(), lr=1e-2, fused=True)
    other.zero_grad()
    for p in other.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    other.step()
    with pytest.raises(ValueError, match="does not match the model's parameters"):
        make["ours"](student(digits)).load_state_dict(other.state_dict())


def test_fast_step_off_trains_through_autograd_and_torch_adam_to_the_same_model(
        digits: Dataset, digits_teacher_logits: torch.Tensor) -> None:
    """`training.fast_step: off` on the MLP student: autograd and torch.optim.Adam, the same
    arithmetic as `auto`'s written-out step and fused Adam, rounded apart."""
    trained = {}
    for setting in ("auto", "off"):
        training = TrainingConfig(epochs=3, batch_size=64, alpha=0.3, temperature=3.0,
                                  weight_decay=1e-4, seed=2, fast_step=setting)
        model = student(digits)
        backward: list[bool] = []  # a backward pass reached the first layer
        model.fc1.weight.register_hook(lambda g: backward.append(True))
        history = fit(model, digits, training, teacher_logits=digits_teacher_logits)
        trained[setting] = (model, history, bool(backward))
    (auto, h_auto, auto_backward), (off, h_off, off_backward) = trained["auto"], trained["off"]
    assert not auto_backward and off_backward
    for a, b in zip(h_auto, h_off):
        assert a[TRAIN_LOSS] == pytest.approx(b[TRAIN_LOSS], rel=1e-4)
        assert abs(a[VAL_ACC] - b[VAL_ACC]) <= 2 / len(digits.val.y)
    for p, q in zip(auto.parameters(), off.parameters()):
        assert torch.allclose(p, q, atol=1e-4)
    assert not same_weights(auto, off)  # two paths, rounded apart: not one path run twice
    # which optimizer each setting makes (fit asks for `fast` where fast_step.enabled says)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert enabled("auto", cpu) and not enabled("off", cpu)
    assert not enabled("auto", cuda) and not enabled("off", cuda)  # no benchmark on CUDA yet
    assert isinstance(make_optimizer(student(digits), name="adam", lr=1e-3, weight_decay=0.0,
                                     fast=True), FusedAdam)
    assert type(make_optimizer(student(digits), name="adam", lr=1e-3, weight_decay=0.0)) \
        is torch.optim.Adam


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_written_out_step_on_cuda_matches_autograd(
        digits: Dataset, digits_teacher_logits: torch.Tensor) -> None:
    """On CUDA, `auto` trains through autograd (no benchmark has shown the written-out step
    faster there), but the step itself runs on any device: five steps of it with fused Adam
    against five of autograd with torch's fused Adam, on the GPU."""
    data = digits.to("cuda")
    logits = digits_teacher_logits.to("cuda")
    training = TrainingConfig(alpha=0.3, temperature=4.0)
    log_targets = F.log_softmax(logits / training.temperature, dim=1)
    fast, slow = student(digits).to("cuda"), student(digits).to("cuda")
    fast_adam = make_optimizer(fast, name="adam", lr=1e-2, weight_decay=0.0, fast=True)
    slow_adam = torch.optim.Adam(slow.parameters(), lr=1e-2, fused=True)
    written_out = mlp_step(fast, fast_adam, data.train.x, data.train.y, log_targets, training)
    assert isinstance(fast_adam, FusedAdam) and written_out is not None
    step, take_loss = written_out
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(5):
        idx = torch.randperm(len(data.train), generator=generator)[:128].to("cuda")
        step(idx)
        loss = kd_loss(slow(data.train.x[idx]), logits[idx], data.train.y[idx],
                       temperature=training.temperature, alpha=training.alpha)
        slow_adam.zero_grad()
        loss.backward()
        slow_adam.step()
        losses.append(loss.item())
    assert take_loss().item() / (5 * 128) == pytest.approx(sum(losses) / 5, rel=1e-4)
    for p, q in zip(fast.parameters(), slow.parameters()):
        assert p.device.type == "cuda" and torch.allclose(p, q, rtol=1e-4, atol=1e-6)

