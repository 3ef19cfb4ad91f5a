"""Heal a pruned model with a short knowledge-distillation fine-tune from the unpruned one.

Causal LM (logit distillation, seed-papers §3):
    loss_t = (1 - lambda_t) * CE(student_t, next token) + lambda_t * T^2 * KL(p_teacher_t/T || p_student_t/T)
  with lambda_t = lambda, or, E³-Pruner-style entropy adaptation (our formulation):
    lambda_t = clamp(lambda * H_t / mean_batch(H), 0, 1),  H_t = entropy of the teacher's softmax(z_t / T)
  so tokens where the teacher spreads its mass (more "dark knowledge") lean on the teacher and
  confident tokens lean on the label; the mean weight stays about lambda.
Classifier: a freshly loaded classifier's head is random, so its logits carry nothing to distil;
  we distil the representation the head will be trained on instead: MSE between student and
  teacher final-block hidden states on non-padding tokens, normalised by the teacher's mean
  square (lambda, T and entropy weighting do not apply and are reported as such).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from greenknobs.ml.pruning.calibration import Calibration, run_model
from greenknobs.ml.pruning.scores import final_block_output
from greenknobs.runtime import process_cpu_seconds


def kd_loss(student: nn.Module, teacher: nn.Module, ids: torch.Tensor, mask: torch.Tensor, task: str,
            lam: float = 0.5, temperature: float = 2.0, entropy_weighted: bool = False,
            facts: dict[str, Any] | None = None) -> torch.Tensor:
    """The healing loss; ``facts`` receives what it computed with (for the knobs' evidence)."""
    if task == "classification":
        with torch.no_grad(), final_block_output(teacher) as tbox:
            run_model(teacher, ids, mask)
        with final_block_output(student) as sbox:
            run_model(student, ids, mask)
        t_out, s_out = tbox[0], sbox[0]
        assert t_out is not None and s_out is not None
        valid = mask.bool().to(s_out.device)
        t, s = t_out[valid].float(), s_out[valid].float()
        return ((s - t) ** 2).mean() / (t**2).mean().clamp(min=1e-12)
    with torch.no_grad():
        t_logits = run_model(teacher, ids, mask).logits[:, :-1].float()
    s_logits = run_model(student, ids, mask).logits[:, :-1].float()
    target = ids[:, 1:].to(s_logits.device)
    valid = mask[:, 1:].bool().to(s_logits.device)
    t_soft = t_logits / temperature
    t_logp = torch.log_softmax(t_soft, -1)
    s_logp = torch.log_softmax(s_logits / temperature, -1)
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1) * temperature**2
    ce = nn.functional.cross_entropy(s_logits.transpose(1, 2), target, reduction="none")
    if entropy_weighted:
        entropy = -(t_logp.exp() * t_logp).sum(-1)
        raw = lam * entropy / entropy[valid].mean().clamp(min=1e-12)  # mean over valid tokens = lam
    else:
        raw = torch.full_like(kl, lam)
    lam_t = raw.clamp(0.0, 1.0)
    if facts is not None:
        facts["lambda_seen"] = float(raw[valid].mean())
        facts["temperature_seen"] = float(t_logits[valid].std() / t_soft[valid].std().clamp(min=1e-12))
        facts["entropy_weighted_seen"] = bool(float(lam_t[valid].std()) > 1e-6)
    per_token = (1 - lam_t) * ce + lam_t * kl
    return per_token[valid].mean()


def _mean_kd(student, teacher, data: Calibration, task, **kw) -> float:
    with torch.no_grad():
        return sum(float(kd_loss(student, teacher, ids, m, task, **kw)) for ids, m in data.batches) / len(data.batches)


def heal(student: nn.Module, teacher: nn.Module, train: Calibration, steps: int, task: str, *, lam: float = 0.5,
         temperature: float = 2.0, entropy_weighted: bool = False, lr: float = 1e-4,
         held_out: Calibration | None = None) -> dict[str, Any]:
    """``steps`` AdamW steps of KD on ``train`` batches (cycled); KD loss before/after on ``held_out``."""
    wall0, cpu0 = time.perf_counter(), process_cpu_seconds()
    kw: dict[str, Any] = {"lam": lam, "temperature": temperature, "entropy_weighted": entropy_weighted}
    probe = held_out or train
    teacher.eval()
    student.eval()
    before = _mean_kd(student, teacher, probe, task, **kw)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr)
    student.train()
    facts: dict[str, Any] = {}
    taken = 0
    for step in range(steps):
        ids, mask = train.batches[step % len(train.batches)]
        loss = kd_loss(student, teacher, ids, mask, task, **kw, facts=facts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        taken += 1
    student.eval()
    after = _mean_kd(student, teacher, probe, task, **kw)
    lm = task != "classification"  # a classifier distils hidden states: lambda, T and entropy weights do not apply
    return {"steps_taken": taken, "task": task, "loss": "logit KD + CE" if lm else "hidden-state MSE",
            "lambda_seen": facts.get("lambda_seen") if lm else None,
            "temperature_seen": facts.get("temperature_seen") if lm else None,
            "entropy_weighted_seen": facts.get("entropy_weighted_seen") if lm else None,
            "lr": lr, "kd_loss_before": before, "kd_loss_after": after,
            "wall_s": time.perf_counter() - wall0, "cpu_s": process_cpu_seconds() - cpu0}
