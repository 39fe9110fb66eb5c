"""The losses (`kdsearch.losses`) against references written here from the papers' formulas, as
their authors' code computes them (not calling kdsearch): value and gradient, at several
temperatures; the weights and the warm-up; and each loss's step through the MLP fast path
against autograd."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdsearch.config import TrainingConfig
from kdsearch.data import Dataset
from kdsearch.distill import fit, kd_loss
from kdsearch.losses import Loss, dkd_terms
from kdsearch.models import build_student

TEMPERATURES = [1.0, 2.0, 4.0, 8.0, 20.0]
B, C = 12, 10


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(B, C, generator=g, dtype=torch.float64) * 3
    teacher = torch.randn(B, C, generator=g, dtype=torch.float64) * 4
    labels = torch.randint(0, C, (B,), generator=g)
    return student, teacher, labels


# --------------------------------------------------------------------------- the references
def reference_dkd(zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, alpha: float,
                  beta: float, temperature: float) -> torch.Tensor:
    """Zhao et al.'s DKD as their code (mdistiller, dkd_loss) computes it."""
    gt = F.one_hot(y, zs.shape[1]).to(zs.dtype)
    other = 1 - gt
    p_s = F.softmax(zs / temperature, dim=1)
    p_t = F.softmax(zt / temperature, dim=1)

    def cat_mask(p: torch.Tensor) -> torch.Tensor:
        return torch.cat([(p * gt).sum(1, keepdim=True), (p * other).sum(1, keepdim=True)], 1)

    b_s, b_t = cat_mask(p_s), cat_mask(p_t)
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum") * temperature ** 2 / y.shape[0]
    p_t2 = F.softmax(zt / temperature - 1000.0 * gt, dim=1)
    log_p_s2 = F.log_softmax(zs / temperature - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_p_s2, p_t2, reduction="sum") * temperature ** 2 / y.shape[0]
    return alpha * tckd + beta * nckd


def reference_ls(zs: torch.Tensor, zt: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sun et al.'s KD on standardised logits as their code computes it (normalize, then
    kd_loss with logit_stand=True)."""
    def normalize(logit: torch.Tensor) -> torch.Tensor:
        mean = logit.mean(dim=-1, keepdims=True)
        stdv = logit.std(dim=-1, keepdims=True)
        return (logit - mean) / (1e-7 + stdv)

    log_p_s = F.log_softmax(normalize(zs) / temperature, dim=1)
    p_t = F.softmax(normalize(zt) / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="none").sum(1).mean() * temperature ** 2


def _value_and_grad(fn: object, zs: torch.Tensor) -> tuple[float, torch.Tensor]:
    z = zs.clone().requires_grad_(True)
    out = fn(z)  # type: ignore[operator]
    out.backward()
    return out.item(), z.grad


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_dkd_matches_the_authors_formula_in_value_and_gradient(temperature: float) -> None:
    zs, zt, y = _batch(1)
    a, b, hard = 1.0, 8.0, 0.5
    loss = Loss("dkd", hard, temperature, dkd_alpha=a, dkd_beta=b)
    ours = _value_and_grad(lambda z: loss(z, loss.teacher_targets(zt), y), zs)
    theirs = _value_and_grad(lambda z: hard * F.cross_entropy(z, y)
                             + (1 - hard) * reference_dkd(z, zt, y, a, b, temperature), zs)
    assert ours[0] == pytest.approx(theirs[0], rel=1e-9, abs=1e-12)
    assert torch.allclose(ours[1], theirs[1], rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_ls_kd_matches_the_authors_formula_in_value_and_gradient(temperature: float) -> None:
    zs, zt, y = _batch(2)
    hard, weight = 0.1, 9.0
    loss = Loss("ls_kd", hard, temperature, ls_weight=weight)
    ours = _value_and_grad(lambda z: loss(z, loss.teacher_targets(zt), y), zs)
    theirs = _value_and_grad(lambda z: hard * F.cross_entropy(z, y)
                             + (1 - hard) * weight * reference_ls(z, zt, temperature), zs)
    assert ours[0] == pytest.approx(theirs[0], rel=1e-9)
    assert torch.allclose(ours[1], theirs[1], rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_kd_is_hintons_as_kd_loss_gives_it(temperature: float) -> None:
    zs, zt, y = _batch(3)
    p_t = F.softmax(zt / temperature, 1)
    expected = 0.3 * F.cross_entropy(zs, y) + 0.7 * temperature ** 2 * (
        p_t * (p_t.log() - F.log_softmax(zs / temperature, 1))).sum(1).mean()
    assert kd_loss(zs, zt, y, temperature=temperature, alpha=0.3).item() == \
        pytest.approx(expected.item(), rel=1e-12)


def test_dkd_decouples_kd_as_the_paper_derives() -> None:
    """Zhao et al.'s eq. (2), one example: KD = TCKD + (1 - p_t of the target) NCKD."""
    for seed in range(5):
        zs, zt, y = (v[:1] for v in _batch(seed))
        for temperature in TEMPERATURES:
            log_s = F.log_softmax(zs / temperature, 1)
            log_t = F.log_softmax(zt / temperature, 1)
            kd = (log_t.exp() * (log_t - log_s)).sum()
            tckd, nckd = dkd_terms(log_s, log_t, y)
            target = log_t[0, y[0]].exp()
            assert kd.item() == pytest.approx((tckd + (1 - target) * nckd).item(), rel=1e-9)


def test_the_standardisation_makes_ls_kd_blind_to_a_shift_and_a_scale_of_the_logits() -> None:
    zs, zt, y = _batch(4)
    loss = Loss("ls_kd", 0.0, 2.0)
    base = loss(zs, loss.teacher_targets(zt), y).item()
    assert loss(zs * 3 + 5, loss.teacher_targets(zt * 0.5 - 2), y).item() == \
        pytest.approx(base, rel=1e-6)
    kd = Loss("kd", 0.0, 2.0)  # plain KD is not
    assert kd(zs * 3, kd.teacher_targets(zt), y).item() != pytest.approx(
        kd(zs, kd.teacher_targets(zt), y).item(), rel=1e-3)


def test_the_weights_the_warm_up_and_alpha_one() -> None:
    zs, zt, y = _batch(5)
    ce = F.cross_entropy(zs, y).item()
    for name in ("kd", "dkd", "ls_kd"):  # alpha = 1: the student alone, whatever the loss
        loss = Loss(name, 1.0, 4.0)
        assert loss(zs, loss.teacher_targets(zt), y).item() == pytest.approx(ce, rel=1e-12)
    dkd = Loss("dkd", 0.0, 4.0, dkd_alpha=1.0, dkd_beta=8.0, dkd_warmup=4)
    targets = dkd.teacher_targets(zt)
    full = dkd(zs, targets, y, epoch=10).item()
    assert [dkd.warmup(e) for e in (1, 2, 4, 9)] == [0.25, 0.5, 1.0, 1.0]
    assert dkd(zs, targets, y, epoch=1).item() == pytest.approx(full / 4, rel=1e-12)
    doubled = Loss("dkd", 0.0, 4.0, dkd_alpha=2.0, dkd_beta=16.0)
    assert doubled(zs, targets, y).item() == pytest.approx(2 * full, rel=1e-12)
    ls = Loss("ls_kd", 0.0, 4.0, ls_weight=3.0)
    one = Loss("ls_kd", 0.0, 4.0)
    t = ls.teacher_targets(zt)
    assert ls(zs, t, y).item() == pytest.approx(3 * one(zs, t, y).item(), rel=1e-12)
    assert Loss.of(TrainingConfig(loss="dkd", epochs=240)).dkd_warmup == 20  # the paper's


def test_a_sure_teacher_gives_finite_values_and_gradients() -> None:
    """A teacher whose target probability rounds to 1: log(1 - p) would be -inf."""
    zs, _, y = _batch(6)
    zt = torch.full((B, C), -50.0, dtype=torch.float64)
    zt[torch.arange(B), y] = 50.0
    for name in ("dkd", "ls_kd"):
        loss = Loss(name, 0.0, 1.0)
        value, grad = _value_and_grad(lambda z: loss(z, loss.teacher_targets(zt), y), zs)
        assert math.isfinite(value) and torch.isfinite(grad).all()


@pytest.mark.parametrize("name", ["dkd", "ls_kd"])
def test_the_mlp_fast_path_trains_each_loss_as_autograd_does(digits: Dataset,
                                                             digits_teacher_logits: torch.Tensor,
                                                             name: str) -> None:
    """The fast path writes the MLP's backward out and takes the loss's gradient by autograd:
    the same weights as the autograd step, to float rounding."""
    weights = []
    for fast in ("auto", "off"):
        torch.manual_seed(0)
        model = build_student("mlp_student", digits.input_shape, 10, width=16)
        fit(model, digits, TrainingConfig(alpha=0.4, epochs=2, batch_size=32, lr=3e-3,
                                          loss=name, fast_step=fast, dkd_warmup=2),
            teacher_logits=digits_teacher_logits)
        weights.append([p.detach() for p in model.parameters()])
    for a, b in zip(*weights):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
