"""Knowledge-distillation losses that record what they computed with.

The evidence a distillation knob needs comes from the tensors themselves: the temperature is
read back as the ratio between the teacher's logits and the softened logits that entered the
softmax, and the mixing weight as (total - CE) / (KD - CE) of the losses actually combined.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def _temperature_seen(raw: torch.Tensor, softened: torch.Tensor) -> float:
    spread = float(softened.std())
    return float(raw.std()) / spread if spread > 0 else float("nan")


def soft_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float, facts: dict[str, Any]) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), batch mean over rows (classification)."""
    s, q = student.float() / temperature, teacher.float() / temperature
    facts["temperature_seen"] = _temperature_seen(teacher.float(), q)
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(q, -1), log_target=True, reduction="batchmean") * temperature**2


def soft_kl_tokens(student: torch.Tensor, teacher: torch.Tensor, temperature: float, facts: dict[str, Any]) -> torch.Tensor:
    """The same per predicted token of a language model (logits (B, T, V), the last position dropped)."""
    s = (student[:, :-1].float() / temperature).flatten(0, 1)
    q = (teacher[:, :-1].float() / temperature).flatten(0, 1)
    facts["temperature_seen"] = _temperature_seen(teacher[:, :-1].float(), q)
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(q, -1), log_target=True, reduction="batchmean") * temperature**2


def mix(ce: torch.Tensor, kd: torch.Tensor, lam: float, facts: dict[str, Any]) -> torch.Tensor:
    """(1 - λ)·CE + λ·KD, and the λ that the combined value implies (recorded when CE and KD differ)."""
    total = (1 - lam) * ce + lam * kd
    gap = float(kd.detach()) - float(ce.detach())
    if abs(gap) > 1e-6:
        facts["lambda_seen"] = (float(total.detach()) - float(ce.detach())) / gap
    return total
