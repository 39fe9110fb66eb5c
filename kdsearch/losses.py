"""The distillation losses: Hinton's KD, decoupled KD (DKD) and KD on standardised logits (LS).

Each loss is the hard-label cross-entropy weighted by `alpha` plus a distillation term weighted by
`1 - alpha`, so that alpha = 1 is the student alone (the baseline) for every loss:

  kd     alpha CE + (1 - alpha) T^2 KL(softmax(t / T) || softmax(s / T))
         (Hinton, Vinyals and Dean, 2015)
  dkd    alpha CE + (1 - alpha) w(epoch) T^2 (a TCKD + b NCKD)
         (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022): TCKD is the KL divergence
         of the binary distributions (the target class, the rest), NCKD that of the
         distributions over the non-target classes; w rises linearly to 1 over the warm-up
         epochs
  ls_kd  alpha CE + (1 - alpha) lambda T^2 KL(softmax(z(t) / T) || softmax(z(s) / T))
         (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024), with
         z(v) = (v - mean(v)) / (std(v) + 1e-7) over the classes, std with n - 1, and T the
         base temperature

Scaling the whole loss by a constant changes nothing under Adam, so the papers' settings map
onto these: DKD's CE 1, alpha 1, beta 8 is alpha 0.5, dkd_alpha 1, dkd_beta 8; LS's CE 0.1, KD
weight 9 is about alpha 0.1, ls_weight 10. The teacher enters each loss only through its
log-probabilities at the temperature (`teacher_targets`), computed once per run from cached
logits. All terms are means over the batch. No Ray here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdsearch.config import LOSSES, TrainingConfig

DKD_ALPHA, DKD_BETA = 1.0, 8.0  # Zhao et al.'s weights of TCKD and NCKD (their ResNet setting)
LS_WEIGHT = 1.0  # the LS term's weight by default: as plain KD's
STD_EPS = 1e-7  # added to the standard deviation, as Sun et al.'s code does


def standardise(logits: torch.Tensor) -> torch.Tensor:
    """Each row's logits less their mean, over their standard deviation (n - 1) + 1e-7."""
    mean = logits.mean(dim=1, keepdim=True)
    return (logits - mean) / (logits.std(dim=1, keepdim=True) + STD_EPS)


def kl_term(log_p_student: torch.Tensor, log_p_teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of two rows of log-probabilities, the batch's mean."""
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


def dkd_terms(log_p_student: torch.Tensor, log_p_teacher: torch.Tensor, labels: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD) of log-probabilities at a temperature, each the batch's mean (no T^2)."""
    target = F.one_hot(labels, log_p_student.shape[1]).bool()

    def split(log_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # log p(target), log p(not target) without 1 - p (which rounds to 0 for a sure class),
        # and the log-probabilities of the other classes renormalised among themselves
        others = log_p.masked_fill(target, -math.inf)
        log_rest = torch.logsumexp(others, dim=1, keepdim=True)
        binary = torch.cat([log_p.gather(1, labels[:, None]), log_rest], dim=1)
        return binary, others - log_rest

    binary_s, others_s = split(log_p_student)
    binary_t, others_t = split(log_p_teacher)
    tckd = kl_term(binary_s, binary_t)
    # the target class has probability 0 on both sides: it adds nothing (its log 0 - log 0
    # set to 0 before it is weighed)
    difference = (others_t - others_s).masked_fill(target, 0.0)
    nckd = (others_t.exp() * difference).sum(1).mean()
    return tckd, nckd


@dataclass(frozen=True)
class Loss:
    """A distillation loss with its weights (see the module's docstring)."""

    name: str  # one of LOSSES
    alpha: float  # the weight of the hard labels; 1: the student alone
    temperature: float  # T (the base temperature of ls_kd)
    dkd_alpha: float = DKD_ALPHA
    dkd_beta: float = DKD_BETA
    dkd_warmup: int = 0  # epochs
    ls_weight: float = LS_WEIGHT

    def __post_init__(self) -> None:
        if self.name not in LOSSES:
            raise ValueError(f"Loss: name must be one of {', '.join(LOSSES)}, got {self.name=}")
        if self.temperature <= 0:
            raise ValueError(f"Loss: temperature must be > 0, got {self.temperature=}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"Loss: alpha must be in [0, 1], got {self.alpha=}")

    @classmethod
    def of(cls, training: TrainingConfig) -> Loss:
        """The loss `training` sets; a weight left null takes its default, DKD's warm-up a
        twelfth of the epochs (Zhao et al.'s 20 of 240)."""
        t = training
        return cls(t.loss, t.alpha, t.temperature,
                   DKD_ALPHA if t.dkd_alpha is None else t.dkd_alpha,
                   DKD_BETA if t.dkd_beta is None else t.dkd_beta,
                   t.epochs // 12 if t.dkd_warmup is None else t.dkd_warmup,
                   LS_WEIGHT if t.ls_weight is None else t.ls_weight)

    @property
    def uses_teacher(self) -> bool:
        return self.alpha < 1.0

    def teacher_targets(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """The teacher's log-probabilities at the temperature, as the loss compares them: of
        its logits (kd, dkd) or of its standardised logits (ls_kd)."""
        logits = teacher_logits.detach()
        if logits.dtype in (torch.float16, torch.bfloat16):  # (a teacher run in half precision)
            logits = logits.float()
        if self.name == "ls_kd":
            logits = standardise(logits)
        return F.log_softmax(logits / self.temperature, dim=1)

    def warmup(self, epoch: int) -> float:
        """The distillation term's weight in `epoch` (from 1): DKD's warm-up, else 1."""
        if self.name != "dkd" or self.dkd_warmup <= 0:
            return 1.0
        return min(epoch / self.dkd_warmup, 1.0)

    def distillation(self, student_logits: torch.Tensor, targets: torch.Tensor,
                     labels: torch.Tensor) -> torch.Tensor:
        """The distillation term, T^2 included, before its (1 - alpha) and warm-up weights."""
        logits = standardise(student_logits) if self.name == "ls_kd" else student_logits
        log_p = F.log_softmax(logits / self.temperature, dim=1)
        t2 = self.temperature * self.temperature
        if self.name == "kd":
            return t2 * kl_term(log_p, targets)
        if self.name == "ls_kd":
            return self.ls_weight * t2 * kl_term(log_p, targets)
        tckd, nckd = dkd_terms(log_p, targets, labels)
        return t2 * (self.dkd_alpha * tckd + self.dkd_beta * nckd)

    def __call__(self, student_logits: torch.Tensor, targets: torch.Tensor | None,
                 labels: torch.Tensor, *, epoch: int = 1) -> torch.Tensor:
        """The loss of a batch: `targets` are `teacher_targets` of its rows (None with alpha
        = 1); `epoch` counts from 1."""
        hard = F.cross_entropy(student_logits, labels)
        if not self.uses_teacher or targets is None:
            return hard
        t = self.temperature
        if self.name == "kd":  # this order of operations keeps kd's results the same bit for bit
            kl = kl_term(F.log_softmax(student_logits / t, dim=1), targets)
            return self.alpha * hard + (1.0 - self.alpha) * t * t * kl
        soft = self.distillation(student_logits, targets, labels)
        return self.alpha * hard + (1.0 - self.alpha) * self.warmup(epoch) * soft
