"""kd_loss against hand-computed values, and fit(): seeded, resumable, reporting each epoch."""

from __future__ import annotations

import copy
import dataclasses
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdsearch.config import DatasetConfig, TrainingConfig
from kdsearch.data import Dataset, load_dataset
from kdsearch.distill import (EPOCH, TRAIN_LOSS, VAL_ACC, VAL_LOSS, Diverged, FitState,
                              FusedAdam, _analytic_mlp_step, evaluate, fit, kd_loss,
                              make_optimizer, predict, random_shift)
from kdsearch.models import build_student, build_teacher

# --------------------------------------------------------------------------- kd_loss


def _logits(seed: int, n: int = 16, k: int = 10, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) \
        * scale


def _numpy_kd(s: np.ndarray, t: np.ndarray, y: np.ndarray, temperature: float,
              alpha: float) -> float:
    """Hinton et al.'s loss written out: alpha * CE + (1 - alpha) * T^2 * KL(p_t || p_s)."""
    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    ce = -log_softmax(s)[np.arange(len(y)), y].mean()
    log_ps, log_pt = log_softmax(s / temperature), log_softmax(t / temperature)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=1).mean()
    return float(alpha * ce + (1 - alpha) * temperature ** 2 * kl)


def test_alpha_one_is_cross_entropy() -> None:
    s, t = _logits(0), _logits(1)
    y = torch.arange(16) % 10
    expected = F.cross_entropy(s, y)
    assert torch.equal(kd_loss(s, t, y, temperature=4.0, alpha=1.0), expected)
    assert torch.equal(kd_loss(s, None, y, temperature=4.0, alpha=1.0), expected)


def test_hand_computed_value() -> None:
    # two classes, one example: student [0, 0], teacher [2 ln 3, 0] at T = 2 -> p_t = (3/4, 1/4)
    s = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[2 * np.log(3.0), 0.0]], dtype=torch.float64)
    y = torch.tensor([1])
    kl = 0.75 * np.log(0.75 / 0.5) + 0.25 * np.log(0.25 / 0.5)
    ce = np.log(2.0)
    loss = kd_loss(s, t, y, temperature=2.0, alpha=0.25)
    assert loss.item() == pytest.approx(0.25 * ce + 0.75 * 4.0 * kl, rel=1e-12)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 20.0])
def test_identical_logits_have_no_soft_loss(temperature: float) -> None:
    s = _logits(2)
    y = torch.arange(16) % 10
    assert kd_loss(s, s.clone(), y, temperature=temperature, alpha=0.0).item() == \
        pytest.approx(0.0, abs=1e-12)
    assert kd_loss(s, s.clone(), y, temperature=temperature, alpha=0.4).item() == \
        pytest.approx(0.4 * F.cross_entropy(s, y).item(), rel=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 3.0, 10.0, 50.0])
def test_soft_gradient_closed_form(temperature: float) -> None:
    # d/dz_s of T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), batch mean, is
    # T * (softmax(z_s/T) - softmax(z_t/T)) / batch
    s, t = _logits(3).requires_grad_(), _logits(4)
    y = torch.zeros(16, dtype=torch.long)
    kd_loss(s, t, y, temperature=temperature, alpha=0.0).backward()
    expected = temperature * (torch.softmax(s.detach() / temperature, 1)
                              - torch.softmax(t / temperature, 1)) / len(s)
    torch.testing.assert_close(s.grad, expected, rtol=1e-10, atol=1e-12)


def test_t_squared_keeps_the_gradient_scale_at_high_temperature() -> None:
    # Hinton et al., sec. 2.1: for large T the soft gradient tends to (z_s - z_t) / (K * batch)
    # for zero-mean logits, the same at every T thanks to the T^2 factor (without it: / T^2)
    s, t = _logits(5, scale=1.0), _logits(6, scale=1.0)
    s, t = s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    y = torch.zeros(16, dtype=torch.long)
    limit = (s - t) / (10 * len(s))
    for temperature in (10.0, 100.0, 1000.0):
        z = s.clone().requires_grad_()
        kd_loss(z, t, y, temperature=temperature, alpha=0.0).backward()
        assert z.grad is not None
        # the distance to the limit shrinks as 1/T (about 0.6/T for these logits)
        assert ((z.grad - limit).norm() / limit.norm()).item() < 1.0 / temperature
        assert (z.grad.norm() / limit.norm()).item() == pytest.approx(1.0, abs=1.0 / temperature)


@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.0), (1.0, 0.5), (2.5, 0.3), (4.0, 0.9),
                                               (10.0, 0.1), (20.0, 0.0), (0.5, 0.7)])
def test_agrees_with_the_formula_on_random_logits(temperature: float, alpha: float) -> None:
    s, t = _logits(10), _logits(11)
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(12))
    got = kd_loss(s, t, y, temperature=temperature, alpha=alpha).item()
    assert got == pytest.approx(_numpy_kd(s.numpy(), t.numpy(), y.numpy(), temperature, alpha),
                                rel=1e-10)
    # and in float32, as training runs it
    got32 = kd_loss(s.float(), t.float(), y, temperature=temperature, alpha=alpha).item()
    assert got32 == pytest.approx(got, rel=1e-4)


def test_no_gradient_reaches_the_teacher() -> None:
    s, t = _logits(13).requires_grad_(), _logits(14).requires_grad_()
    kd_loss(s, t, torch.zeros(16, dtype=torch.long), temperature=4.0, alpha=0.0).backward()
    assert s.grad is not None and t.grad is None


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_bad_temperature_raises_naming_it(temperature: float) -> None:
    s = _logits(0)
    with pytest.raises(ValueError, match=f"temperature={temperature}"):
        kd_loss(s, s, torch.zeros(16, dtype=torch.long), temperature=temperature, alpha=0.5)


@pytest.mark.parametrize("alpha", [1.5, -0.1, float("nan")])
def test_bad_alpha_raises_naming_it(alpha: float) -> None:
    s = _logits(0)
    with pytest.raises(ValueError, match=f"alpha={alpha}"):
        kd_loss(s, s, torch.zeros(16, dtype=torch.long), temperature=2.0, alpha=alpha)


# --------------------------------------------------------------------------- random_shift


def test_random_shift_moves_pixels_and_keeps_shape() -> None:
    n = 400
    x = torch.zeros(n, 2, 9, 9)
    x[:, 0, 4, 4], x[:, 1, 4, 4] = 1.0, 2.0  # one bright pixel in the middle, both channels
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    offsets = set()
    for img in out:
        where = (img[0] == 1.0).nonzero()
        assert len(where) == 1 and (img[0] != 0).sum() == 1  # moved, not smeared
        dy, dx = (where[0] - 4).tolist()
        assert abs(dy) <= 2 and abs(dx) <= 2
        assert img[1, 4 + dy, 4 + dx] == 2.0  # the channels move together
        offsets.add((dy, dx))
    assert len(offsets) == 25  # every offset in [-2, 2]^2 occurs


def test_random_shift_fills_with_zero_and_follows_its_generator() -> None:
    x = torch.ones(64, 1, 6, 6)
    out = random_shift(x, 1, torch.Generator().manual_seed(1))
    assert (out == 0).any() and set(out.unique().tolist()) == {0.0, 1.0}
    assert ((out == 0).flatten(1).sum(1) <= 11).all()  # at most one row and one column
    again = random_shift(x, 1, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert random_shift(x, 0, torch.Generator()) is x


# --------------------------------------------------------------------------- fit on digits


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    tmp = tmp_path_factory.mktemp("digits")
    return load_dataset(DatasetConfig(name="digits"), data_dir=tmp, cache_dir=tmp)


def _student(data: Dataset, seed: int = 0, model: str = "mlp_student", width: int = 16):
    torch.manual_seed(seed)
    return build_student(model, data.input_shape, data.num_classes, width=width)


def _without_time(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in m.items() if k != "epoch_seconds"} for m in history]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def digits_teacher(digits: Dataset) -> torch.nn.Module:
    """A small teacher, about 0.89 val accuracy on digits."""
    torch.manual_seed(0)
    teacher = build_teacher("mlp_teacher", digits.input_shape, 10, width=64)
    fit(teacher, digits, TrainingConfig(alpha=1.0, epochs=5, batch_size=64, lr=1e-3))
    return teacher.eval()


@pytest.fixture(scope="module")
def digits_teacher_logits(digits: Dataset, digits_teacher: torch.nn.Module) -> torch.Tensor:
    return predict(digits_teacher, digits.train.x)


@pytest.mark.parametrize("model,shift", [("mlp_student", 0), ("cnn_student", 1)],
                         ids=["cached-logits", "online-teacher-shift"])
def test_fit_is_deterministic_for_a_seed(digits: Dataset, digits_teacher_logits: torch.Tensor,
                                         model: str, shift: int) -> None:
    training = TrainingConfig(epochs=2, batch_size=64, alpha=0.5, shift=shift, seed=3)
    if shift:
        teacher = build_teacher("mlp_teacher", digits.input_shape, 10, width=32).eval()
        kw: dict = {"teacher": teacher}
    else:
        kw = {"teacher_logits": digits_teacher_logits}
    runs = []
    for _ in range(2):
        m = _student(digits, model=model, width=8)
        runs.append((m, fit(m, digits, training, **kw)))
    (a, ha), (b, hb) = runs
    assert _without_time(ha) == _without_time(hb)
    assert _same_weights(a, b)
    assert not _same_weights(a, _student(digits, model=model, width=8))  # it trained
    c = _student(digits, model=model, width=8)
    fit(c, digits, dataclasses.replace(training, seed=4), **kw)
    assert not _same_weights(a, c)  # training.seed orders the batches


def test_report_is_called_once_per_epoch(digits: Dataset) -> None:
    calls: list[tuple[dict[str, float], int]] = []
    model = _student(digits)
    history = fit(model, digits, TrainingConfig(epochs=3, batch_size=64, alpha=1.0),
                  report=lambda m, state: calls.append((dict(m), state.epoch)))
    assert [m[EPOCH] for m, _ in calls] == [1, 2, 3]
    assert [epoch for _, epoch in calls] == [1, 2, 3]
    assert [m for m, _ in calls] == history
    for m, _ in calls:
        assert {EPOCH, VAL_ACC, VAL_LOSS, TRAIN_LOSS} <= m.keys()
        assert 0.0 <= m[VAL_ACC] <= 1.0 and m[VAL_LOSS] > 0 and m[TRAIN_LOSS] > 0
    assert (calls[-1][0][VAL_ACC], calls[-1][0][VAL_LOSS]) == evaluate(model, digits.val)
    assert calls[-1][0][VAL_ACC] > calls[0][0][VAL_ACC]  # it learns
    assert (VAL_ACC, VAL_LOSS, TRAIN_LOSS, EPOCH) == ("val_acc", "val_loss", "train_loss",
                                                      "epoch")


def test_fit_learns_digits_from_the_teacher_alone(digits: Dataset,
                                                  digits_teacher_logits: torch.Tensor) -> None:
    # alpha = 0: the labels play no part, so scrambling them must not matter
    scrambled = dataclasses.replace(digits, train=dataclasses.replace(
        digits.train, y=torch.zeros_like(digits.train.y)))
    training = TrainingConfig(epochs=15, batch_size=64, alpha=0.0, temperature=4.0)
    history = fit(_student(digits), scrambled, training, teacher_logits=digits_teacher_logits)
    assert history[-1][VAL_ACC] > 0.8


def test_fit_online_teacher_with_shift(digits: Dataset, digits_teacher: torch.nn.Module) -> None:
    # the teacher runs on each shifted batch; the zeroed labels cannot teach
    scrambled = dataclasses.replace(digits, train=dataclasses.replace(
        digits.train, y=torch.zeros_like(digits.train.y)))
    history = fit(_student(digits), scrambled,
                  TrainingConfig(epochs=15, batch_size=64, alpha=0.0, shift=1),
                  teacher=digits_teacher)
    assert history[-1][VAL_ACC] > 0.6  # chance is 0.1: the zeroed labels cannot teach


def test_fit_refuses_kd_without_a_teacher(digits: Dataset,
                                          digits_teacher_logits: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="teacher_logits"):
        fit(_student(digits), digits, TrainingConfig(epochs=1, alpha=0.5))
    with pytest.raises(ValueError, match="teacher module"):
        fit(_student(digits), digits, TrainingConfig(epochs=1, alpha=0.5, shift=1),
            teacher_logits=digits_teacher_logits)


def test_diverged_on_a_huge_learning_rate(digits: Dataset) -> None:
    training = TrainingConfig(epochs=3, alpha=1.0, optimizer="sgd", lr=1e6)
    with pytest.raises(Diverged, match=r"lr=1e\+06") as info:
        fit(_student(digits), digits, training)
    assert "epoch 1" in str(info.value)


@pytest.mark.parametrize("training", [
    TrainingConfig(epochs=4, batch_size=64, alpha=1.0, shift=1, seed=5),
    TrainingConfig(epochs=4, batch_size=100, alpha=0.3, optimizer="sgd", lr=0.05, seed=6),
    TrainingConfig(epochs=4, batch_size=64, alpha=0.3, weight_decay=1e-3, seed=7),
], ids=["adam-shift", "sgd-momentum-kd", "adam-kd-written-out-step"])
def test_resume_equals_a_straight_run(digits: Dataset, digits_teacher_logits: torch.Tensor,
                                      tmp_path: Path, training: TrainingConfig) -> None:
    checkpoint = tmp_path / "epoch2.pt"

    def save_at_2(metrics: dict[str, float], state: FitState) -> None:
        if state.epoch == 2:  # what a Tune trial does: write the checkpoint as it reports
            torch.save(state.state_dict(), checkpoint)

    straight = _student(digits)
    history = fit(straight, digits, training, teacher_logits=digits_teacher_logits,
                  report=save_at_2)
    first_two = _student(digits)
    fit(first_two, digits, training, teacher_logits=digits_teacher_logits, epochs=2)

    resumed = _student(digits, seed=99)  # other initial weights: the checkpoint must set them
    state = torch.load(checkpoint, weights_only=True)
    assert _same_weights_dict(state["model"], first_two.state_dict())
    rest = fit(resumed, digits, training, teacher_logits=digits_teacher_logits, resume=state)
    assert [m[EPOCH] for m in rest] == [3, 4]
    assert _without_time(rest) == _without_time(history[2:])
    assert _same_weights(resumed, straight)


def _same_weights_dict(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- fit on MNIST


@pytest.fixture(scope="module")
def mnist(datasets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return load_dataset(DatasetConfig(name="mnist"), data_dir=datasets_dir,
                        cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def mnist_student(mnist: Dataset) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """Hinton's small student (784-20-20-10) trained alone, with every default but alpha."""
    model = _student(mnist, width=20)
    return model, fit(model, mnist, TrainingConfig(alpha=1.0, epochs=5))


def test_mnist_student_reaches_95_percent(
        mnist_student: tuple[torch.nn.Module, list[dict[str, float]]]) -> None:
    _, history = mnist_student
    assert max(m[VAL_ACC] for m in history) >= 0.95, [round(m[VAL_ACC], 4) for m in history]


def test_mnist_student_learns(mnist_student: tuple[torch.nn.Module, list[dict[str, float]]]
                              ) -> None:
    _, history = mnist_student
    assert len(history) == 5
    assert history[0][VAL_ACC] > 0.9, [round(m[VAL_ACC], 4) for m in history]
    assert history[-1][TRAIN_LOSS] < history[0][TRAIN_LOSS]


def test_mnist_student_distilled_from_teacher_logits_alone(
        mnist: Dataset, mnist_student: tuple[torch.nn.Module, list[dict[str, float]]]) -> None:
    # the cheap teacher: the plain student above. With alpha = 0 and the labels zeroed, the
    # only thing that can teach the new student is the teacher's softened logits.
    teacher, history = mnist_student
    logits = predict(teacher, mnist.train.x)
    blind = dataclasses.replace(mnist, train=dataclasses.replace(
        mnist.train, y=torch.zeros_like(mnist.train.y)))
    student = _student(mnist, seed=1, width=20)
    kd = fit(student, blind, TrainingConfig(alpha=0.0, temperature=4.0, epochs=2),
             teacher_logits=logits)
    agreement = (predict(student, mnist.val.x).argmax(1)
                 == predict(teacher, mnist.val.x).argmax(1)).float().mean().item()
    assert kd[-1][VAL_ACC] > 0.9, (kd[-1][VAL_ACC], history[-1][VAL_ACC])
    assert agreement > 0.93


# --------------------------------------------------------------------------- the MLP fast path
@pytest.mark.parametrize("temperature,alpha", [(4.0, 1.0), (4.0, 0.3), (20.0, 0.0), (1.0, 0.7)])
def test_written_out_mlp_step_has_kd_loss_and_its_gradients(
        digits: Dataset, digits_teacher_logits: torch.Tensor, temperature: float,
        alpha: float) -> None:
    model = _student(digits, width=12)
    ref = _student(digits, width=12)
    training = TrainingConfig(alpha=alpha, temperature=temperature)
    log_targets = F.log_softmax(digits_teacher_logits / temperature, dim=1)
    # lr 0: the step leaves the weights as they were and its gradients in .grad
    optimizer = make_optimizer(model, name="sgd", lr=0.0, weight_decay=0.0)
    steps = _analytic_mlp_step(model, optimizer, digits.train.x, digits.train.y,
                               log_targets if alpha < 1 else None, training)
    assert steps is not None
    idx = torch.randperm(len(digits.train.y), generator=torch.Generator().manual_seed(1))[:50]
    steps.step(idx)
    loss_sum = steps.take_loss()
    assert _same_weights(model, ref)

    loss = kd_loss(ref(digits.train.x[idx]), digits_teacher_logits[idx], digits.train.y[idx],
                   temperature=temperature, alpha=alpha)
    loss.backward()
    assert loss_sum.item() / len(idx) == pytest.approx(loss.item(), rel=1e-4)  # float32
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name


def test_the_fast_path_is_taken_by_the_mlp_student_alone(digits: Dataset) -> None:
    training = TrainingConfig()
    for model, expected in [(_student(digits), True),
                            (torch.nn.Sequential(_student(digits)), False),
                            (_student(digits, model="cnn_student", width=8), False),
                            (build_teacher("mlp_teacher", digits.input_shape, 10, width=16),
                             False)]:
        optimizer = make_optimizer(model, name="adam", lr=1e-3, weight_decay=0.0)
        step = _analytic_mlp_step(model, optimizer, digits.train.x, digits.train.y, None,
                                  training)
        assert (step is not None) == expected, type(model).__name__


@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_fit_with_the_written_out_step_matches_autograd(
        digits: Dataset, digits_teacher_logits: torch.Tensor, alpha: float) -> None:
    # the same network, once as the MLP student (written-out step) and once inside
    # nn.Sequential, which fit trains through autograd
    training = TrainingConfig(epochs=3, batch_size=64, alpha=alpha, temperature=3.0,
                              weight_decay=1e-4, seed=2)
    fast, slow = _student(digits), torch.nn.Sequential(_student(digits))
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
    assert not _same_weights(fast, _student(digits))  # it trained


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
    models = [_student(digits) for _ in range(3)]
    optimizers = [torch.optim.Adam(models[0].parameters(), lr=1e-2, weight_decay=1e-3,
                                   fused=True),
                  torch.optim.Adam(models[1].parameters(), lr=1e-2, weight_decay=1e-3),
                  make_optimizer(models[2], name="adam", lr=1e-2, weight_decay=1e-3)]
    assert isinstance(optimizers[2], FusedAdam)
    _adam_steps(models, optimizers, range(5), seed=0)
    assert _same_weights(models[0], models[2])
    assert not _same_weights(models[0], _student(digits))  # it stepped
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
    models = [_student(digits) for _ in range(2)]
    reference = torch.optim.Adam(models[0].parameters(), lr=1e-2, weight_decay=1e-3,
                                 fused=True)
    ours = make_optimizer(models[1], name="adam", lr=1e-2, weight_decay=1e-3)
    assert isinstance(ours, FusedAdam)
    _adam_steps(models, [reference, ours], range(2), seed=3)  # state before flattening too
    grads = ours.flatten()
    assert grads is not None and all(p.grad is g for p, g in zip(models[1].parameters(), grads))
    storages = {p.untyped_storage().data_ptr() for p in models[1].parameters()}
    assert len(storages) == 1  # one flat tensor
    _adam_steps(models, [reference, ours], range(2, 8), seed=3)
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7)
    assert not _same_weights(models[1], _student(digits))
    state = ours.state_dict()
    assert [int(st["step"]) for st in state["state"].values()] == [8] * 6
    assert len({id(st["step"]) for st in state["state"].values()}) == 6

    buf = io.BytesIO()
    torch.save({"model": models[1].state_dict(), "optimizer": state}, buf)
    buf.seek(0)
    checkpoint = torch.load(buf, weights_only=True)
    resumed = _student(digits, seed=5)
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
    straight = _student(digits)
    reference = make["torch"](straight)
    _adam_steps([straight], [reference], range(6), seed=1)
    for first, second in [("torch", "ours"), ("ours", "torch")]:
        model = _student(digits)
        optimizer = make[first](model)
        _adam_steps([model], [optimizer], range(3), seed=1)
        buf = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buf)
        buf.seek(0)
        checkpoint = torch.load(buf, weights_only=True)
        resumed = _student(digits, seed=5)
        optimizer = make[second](resumed)
        resumed.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        _adam_steps([resumed], [optimizer], range(3, 6), seed=1)
        assert _same_weights(straight, resumed), (first, second)
        assert _same_adam_state(reference.state_dict(), optimizer.state_dict()), (first, second)

    other = torch.optim.Adam(_student(digits, width=8).parameters(), lr=1e-2, fused=True)
    other.zero_grad()
    for p in other.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    other.step()
    with pytest.raises(ValueError, match="does not match the model's parameters"):
        make["ours"](_student(digits)).load_state_dict(other.state_dict())


def test_accuracy_is_the_count_of_correct_examples_over_their_number() -> None:
    """1055 of 1077 right is 1055/1077 exactly: two sides with equal counts tie in the report
    (a float32 mean differs from it in the last bits, and read as "-0.00 points")."""
    from kdsearch.data import Split
    from kdsearch.distill import evaluate

    y = torch.arange(1077) % 10
    predicted = torch.where(torch.arange(1077) < 1055, y, (y + 1) % 10)
    split = Split(F.one_hot(predicted, 10).float(), y)
    acc, _ = evaluate(torch.nn.Identity(), split)
    assert acc == 1055 / 1077


def test_a_batchnorm_model_trains_when_the_last_batch_would_hold_one_example(
        digits: Dataset) -> None:
    """1,222 training images at batch 11 leave one over: BatchNorm cannot train on a batch of
    one, so it joins the batch before (the CNN students on digits crashed here)."""
    n = len(digits.train)
    assert n % 11 == 1
    model = build_student("cnn_student", digits.input_shape, digits.num_classes, width=8)
    history = fit(model, digits, TrainingConfig(epochs=1, batch_size=11, alpha=1.0))
    assert len(history) == 1 and 0.0 <= history[0][VAL_ACC] <= 1.0


def test_weights_broken_by_an_epochs_last_steps_count_as_diverged(digits: Dataset) -> None:
    """The epoch's summed loss was finite, but the model now gives NaN: a diverged run, not an
    epoch reported with a NaN val_loss and chance accuracy."""
    model = _student(digits)
    model.register_forward_hook(lambda m, args, out: out if m.training else out * math.nan)
    with pytest.raises(Diverged, match="validation loss became nan after epoch 1"):
        fit(model, digits, TrainingConfig(epochs=2, alpha=1.0))


def test_the_online_teacher_scores_the_same_shifted_images_as_the_student(
        digits: Dataset, digits_teacher: torch.nn.Module) -> None:
    """One batch of the whole training split: the epoch's loss is the KD loss of the student
    (before its update) and the teacher on the same shifted images, drawn as fit draws them."""
    training = TrainingConfig(epochs=1, batch_size=len(digits.train), alpha=0.3,
                              temperature=4.0, shift=1, seed=5)
    student = _student(digits)
    before = copy.deepcopy(student)
    history = fit(student, digits, training, teacher=digits_teacher)
    generator = torch.Generator().manual_seed(5)
    perm = torch.randperm(len(digits.train), generator=generator)
    shifted = random_shift(digits.train.x[perm], 1, generator)
    with torch.no_grad():
        expected = kd_loss(before(shifted), digits_teacher.eval()(shifted),
                           digits.train.y[perm], temperature=4.0, alpha=0.3).item()
        unshifted = kd_loss(before(shifted), digits_teacher(digits.train.x[perm]),
                            digits.train.y[perm], temperature=4.0, alpha=0.3).item()
    assert history[0][TRAIN_LOSS] == pytest.approx(expected, rel=1e-5)
    assert abs(unshifted - expected) > 1e-3  # (the check can tell the two apart)


def test_the_cosine_schedule_runs_from_lr_to_zero_over_the_epoch_budget(
        digits: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    import kdsearch.distill
    from kdsearch.distill import scheduled_lr

    cosine = TrainingConfig(lr=0.01, lr_schedule="cosine")
    assert [scheduled_lr(cosine, s, 100) for s in (0, 50, 100)] == pytest.approx(
        [0.01, 0.005, 0.0], abs=1e-12)
    assert scheduled_lr(TrainingConfig(lr=0.01, lr_schedule="constant"), 99, 100) == 0.01
    # fit follows it: each optimizer step of the run takes the schedule's rate for that step
    used: list[float] = []
    real = kdsearch.distill.make_optimizer

    def watched(*args: Any, **kwargs: Any) -> Any:
        optimizer = real(*args, **kwargs)
        step = optimizer.step

        def recorded() -> None:
            used.append(optimizer.param_groups[0]["lr"])
            step()
        optimizer.step = recorded
        return optimizer

    monkeypatch.setattr(kdsearch.distill, "make_optimizer", watched)
    training = TrainingConfig(epochs=2, batch_size=256, lr=0.01, alpha=1.0)
    fit(_student(digits), digits, training)
    steps = 2 * math.ceil(len(digits.train) / 256)
    assert used == pytest.approx([scheduled_lr(training, s, steps) for s in range(steps)])
