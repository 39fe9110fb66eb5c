"""kd_loss against hand-computed values, and fit(): seeded, resumable, reporting each epoch."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import same_weights, student
from kdsearch.config import DatasetConfig, TrainingConfig
from kdsearch.data import Dataset, load_dataset
from kdsearch.distill import (EPOCH, TRAIN_LOSS, VAL_ACC, VAL_LOSS, Diverged, FitState, evaluate,
                              fit, kd_loss, predict, random_shift)
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


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.999])
def test_soft_targets_weighed_without_a_teacher_are_refused(alpha: float) -> None:
    # alpha < 1 gives the teacher's soft targets weight 1 - alpha: without teacher logits the
    # loss used to come back as plain cross-entropy at full weight, silently
    s = _logits(0)
    with pytest.raises(ValueError, match=f"teacher_logits is None.*alpha={alpha}"):
        kd_loss(s, None, torch.zeros(16, dtype=torch.long), temperature=2.0, alpha=alpha)


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
def _without_time(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in m.items() if k != "epoch_seconds"} for m in history]


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
        m = student(digits, model=model, width=8)
        runs.append((m, fit(m, digits, training, **kw)))
    (a, ha), (b, hb) = runs
    assert _without_time(ha) == _without_time(hb)
    assert same_weights(a, b)
    assert not same_weights(a, student(digits, model=model, width=8))  # it trained
    c = student(digits, model=model, width=8)
    fit(c, digits, dataclasses.replace(training, seed=4), **kw)
    assert not same_weights(a, c)  # training.seed orders the batches


def test_report_is_called_once_per_epoch(digits: Dataset) -> None:
    calls: list[tuple[dict[str, float], int]] = []
    model = student(digits)
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
    history = fit(student(digits), scrambled, training, teacher_logits=digits_teacher_logits)
    assert history[-1][VAL_ACC] > 0.8


def test_fit_online_teacher_with_shift(digits: Dataset, digits_teacher: torch.nn.Module) -> None:
    # the teacher runs on each shifted batch; the zeroed labels cannot teach
    scrambled = dataclasses.replace(digits, train=dataclasses.replace(
        digits.train, y=torch.zeros_like(digits.train.y)))
    history = fit(student(digits), scrambled,
                  TrainingConfig(epochs=15, batch_size=64, alpha=0.0, shift=1),
                  teacher=digits_teacher)
    assert history[-1][VAL_ACC] > 0.6  # chance is 0.1: the zeroed labels cannot teach


def test_fit_refuses_kd_without_a_teacher(digits: Dataset,
                                          digits_teacher_logits: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="teacher_logits"):
        fit(student(digits), digits, TrainingConfig(epochs=1, alpha=0.5))
    with pytest.raises(ValueError, match="teacher module"):
        fit(student(digits), digits, TrainingConfig(epochs=1, alpha=0.5, shift=1),
            teacher_logits=digits_teacher_logits)


def test_diverged_on_a_huge_learning_rate(digits: Dataset) -> None:
    training = TrainingConfig(epochs=3, alpha=1.0, optimizer="sgd", lr=1e6)
    with pytest.raises(Diverged, match=r"lr=1e\+06") as info:
        fit(student(digits), digits, training)
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

    straight = student(digits)
    history = fit(straight, digits, training, teacher_logits=digits_teacher_logits,
                  report=save_at_2)
    first_two = student(digits)
    fit(first_two, digits, training, teacher_logits=digits_teacher_logits, epochs=2)

    resumed = student(digits, seed=99)  # other initial weights: the checkpoint must set them
    state = torch.load(checkpoint, weights_only=True)
    assert _same_weights_dict(state["model"], first_two.state_dict())
    rest = fit(resumed, digits, training, teacher_logits=digits_teacher_logits, resume=state)
    assert [m[EPOCH] for m in rest] == [3, 4]
    assert _without_time(rest) == _without_time(history[2:])
    assert same_weights(resumed, straight)


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
    model = student(mnist, width=20)
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
    model = student(mnist, seed=1, width=20)
    kd = fit(model, blind, TrainingConfig(alpha=0.0, temperature=4.0, epochs=2),
             teacher_logits=logits)
    agreement = (predict(model, mnist.val.x).argmax(1)
                 == predict(teacher, mnist.val.x).argmax(1)).float().mean().item()
    assert kd[-1][VAL_ACC] > 0.9, (kd[-1][VAL_ACC], history[-1][VAL_ACC])
    assert agreement > 0.93


# --------------------------------------------------------------------------- a reference
def _log_softmax(z: torch.Tensor) -> torch.Tensor:
    """log softmax over the classes, written out (not torch's)."""
    z = z - z.max(dim=1, keepdim=True).values
    return z - z.exp().sum(dim=1, keepdim=True).log()


@pytest.mark.parametrize("fast_step", ["auto", "off"])
def test_fit_on_cached_logits_follows_a_plain_pytorch_reference_step_by_step(
        digits: Dataset, digits_teacher_logits: torch.Tensor, monkeypatch: pytest.MonkeyPatch,
        fast_step: str) -> None:
    """fit against Hinton et al.'s loss written out here (its own softmax at T, its own KL and
    cross-entropy, the T^2 factor) and torch.optim.Adam, on the same batches: the weights after
    every optimizer step, and each epoch's train_loss. Both of fit's steps: `auto` (on the CPU,
    the written-out MLP step and fused Adam over one flat tensor) and `off` (autograd and
    torch.optim)."""
    import kdsearch.distill

    temperature, alpha, lr, batch = 4.0, 0.3, 3e-3, 256
    training = TrainingConfig(epochs=2, batch_size=batch, lr=lr, lr_schedule="constant",
                              alpha=alpha, temperature=temperature, seed=3, fast_step=fast_step)
    model = student(digits, seed=1)
    reference = copy.deepcopy(model)
    after_each_step: list[list[torch.Tensor]] = []
    real = kdsearch.distill.make_optimizer

    def recorded(*args: Any, **kwargs: Any) -> Any:
        optimizer = real(*args, **kwargs)
        step = optimizer.step

        def then_record() -> None:
            step()
            after_each_step.append([p.detach().clone() for p in model.parameters()])
        optimizer.step = then_record
        return optimizer

    monkeypatch.setattr(kdsearch.distill, "make_optimizer", recorded)
    history = fit(model, digits, training, teacher_logits=digits_teacher_logits)

    x, y, logits = digits.train.x, digits.train.y, digits_teacher_logits
    n = len(y)
    optimizer = torch.optim.Adam(reference.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(3)  # fit draws its batches from training.seed
    step = 0
    for epoch in range(2):
        perm = torch.randperm(n, generator=generator)
        loss_sum = 0.0
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            s = reference(x[idx])
            log_p_s = _log_softmax(s / temperature)
            log_p_t = _log_softmax(logits[idx] / temperature)
            soft = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1).mean()
            hard = -_log_softmax(s)[torch.arange(len(idx)), y[idx]].mean()
            loss = alpha * hard + (1 - alpha) * temperature ** 2 * soft
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
            for ours, theirs in zip(after_each_step[step], reference.parameters()):
                assert torch.allclose(ours, theirs, rtol=1e-4, atol=2e-6), (epoch, step)
            step += 1
        assert history[epoch][TRAIN_LOSS] == pytest.approx(loss_sum / n, rel=1e-5)
    assert step == len(after_each_step) == 2 * math.ceil(n / batch)
    assert not same_weights(model, student(digits, seed=1))  # it trained


# --------------------------------------------------------------------------- more of fit
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
    model = student(digits)
    model.register_forward_hook(lambda m, args, out: out if m.training else out * math.nan)
    with pytest.raises(Diverged, match="validation loss became nan after epoch 1"):
        fit(model, digits, TrainingConfig(epochs=2, alpha=1.0))


def test_the_online_teacher_scores_the_same_shifted_images_as_the_student(
        digits: Dataset, digits_teacher: torch.nn.Module) -> None:
    """One batch of the whole training split: the epoch's loss is the KD loss of the student
    (before its update) and the teacher on the same shifted images, drawn as fit draws them."""
    training = TrainingConfig(epochs=1, batch_size=len(digits.train), alpha=0.3,
                              temperature=4.0, shift=1, seed=5)
    model = student(digits)
    before = copy.deepcopy(model)
    history = fit(model, digits, training, teacher=digits_teacher)
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
    fit(student(digits), digits, training)
    steps = 2 * math.ceil(len(digits.train) / 256)
    assert used == pytest.approx([scheduled_lr(training, s, steps) for s in range(steps)])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("shift", [0, 1], ids=["cached logits", "online teacher, jittered"])
def test_a_training_epoch_on_cuda_never_waits_for_the_host(
        digits: Dataset, digits_teacher: torch.nn.Module, shift: int) -> None:
    """fit's steps on CUDA: batches and shifts drawn on the device, the loss summed there, the
    learning rate a Python float. torch raises on any synchronisation with the host (a copy
    from the CPU, an .item()) inside the epoch."""
    from kdsearch.distill import batches_of, make_optimizer, make_steps, scheduled_lr, train_epoch

    data = digits.to("cuda")
    teacher = copy.deepcopy(digits_teacher).to("cuda").eval()
    training = TrainingConfig(alpha=0.3, temperature=4.0, shift=shift, batch_size=64, epochs=2)
    model = student(digits).to("cuda")
    optimizer = make_optimizer(model, name="adam", lr=1e-3, weight_decay=0.0)
    generator = torch.Generator(device="cuda").manual_seed(0)
    log_targets = None if shift else F.log_softmax(predict(teacher, data.train.x) / 4.0, dim=1)
    steps = make_steps(model, optimizer, data, training, log_targets=log_targets,
                       teacher=teacher if shift else None, generator=generator, fast=False)
    batches = batches_of(len(data.train), training.batch_size, model)

    def set_lr(step: int) -> None:
        optimizer.param_groups[0]["lr"] = scheduled_lr(training, step, 2 * len(batches))

    order = torch.randperm(len(data.train), generator=generator, device="cuda")
    train_epoch(steps, order, batches, set_lr=set_lr).item()  # a first epoch: kernels loaded
    order = torch.randperm(len(data.train), generator=generator, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = train_epoch(steps, order, batches, set_lr=set_lr, first_step=len(batches))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert math.isfinite(loss.item()) and loss.item() > 0



def test_a_checkpoint_of_another_devices_generator_resumes_with_fresh_random_numbers(
        digits: Dataset) -> None:
    """fit keeps its generator on the data's device: a trial checkpointed on a CPU node and
    resumed on a CUDA one (or back) cannot carry the generator's state over. It resumes with
    numbers drawn anew from its seed and epoch, instead of failing."""
    training = TrainingConfig(epochs=1, batch_size=256, alpha=1.0, seed=3)
    saved: list[dict[str, Any]] = []
    fit(student(digits), digits, training, report=lambda m, s: saved.append(s.state_dict()))
    state = dict(saved[-1], rng=torch.zeros(16, dtype=torch.uint8))  # a CUDA generator's size
    model = student(digits)
    resumed = FitState(model, torch.optim.Adam(model.parameters()), torch.Generator(), 0)
    resumed.generator.manual_seed(3)
    resumed.load_state_dict(state)
    assert resumed.epoch == 1 and resumed.generator.initial_seed() == 3 + 1
    assert not same_weights(model, student(digits))  # the weights did come back
