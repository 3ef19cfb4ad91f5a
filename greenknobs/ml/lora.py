"""LoRA adapters via peft: the only module that imports peft.

Targets are resolved *structurally* against the model in hand (Linear layers inside the
transformer blocks, attention vs MLP by their path), then handed to peft as exact module names.
A target set that matches nothing is an error — the study this tool grew from trained a "LoRA"
whose target names did not exist in its model, i.e. no adapter at all.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from greenknobs.errors import KnobError
from greenknobs.ml import layers

PRESETS = ("attention", "qv", "attention_mlp")


def _is_linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or type(m).__name__ in ("Conv1D", "Linear4bit", "Linear8bitLt")


def _is_attention(name: str) -> bool:
    return "attn" in name or "attention" in name


def block_linears(model: nn.Module) -> list[str]:
    """Qualified names of every Linear inside the model's transformer blocks."""
    _, _, stack = layers.find_layer_stack(model)
    prefix = next(n for n, m in model.named_modules() if m is stack)
    return [n for n, m in model.named_modules() if n.startswith(prefix + ".") and _is_linear(m)]


def resolve_targets(model: nn.Module, targets: str) -> list[str]:
    """Module names for a preset, or for comma-separated name suffixes (e.g. ``query,value``)."""
    names = block_linears(model)
    chosen = select_targets(names, targets)
    if not chosen:
        leaf = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise KnobError(f"LoRA targets {targets!r} match no Linear module in {type(model).__name__} "
                        f"(its block Linears end in: {', '.join(leaf)})")
    return chosen


def select_targets(names: list[str], targets: str) -> list[str]:
    """The block Linear ``names`` a target spec selects (pure: verification re-runs it)."""
    if targets == "attention":
        chosen = [n for n in names if _is_attention(n)]
    elif targets == "attention_mlp":
        chosen = names
    elif targets == "qv":
        chosen = [n for n in names if _is_attention(n) and n.rsplit(".", 1)[-1] in ("query", "value", "q_proj", "v_proj", "c_attn")]
    else:
        suffixes = [s.strip() for s in targets.split(",") if s.strip()]
        chosen = [n for n in names if any(n == s or n.endswith("." + s) for s in suffixes)]
    return chosen


def add_lora(model: nn.Module, rank: int, alpha: int, targets: str, trainable_heads: list[str]) -> nn.Module:
    """Wrap ``model`` with LoRA adapters; only adapters and ``trainable_heads`` stay trainable."""
    from peft import LoraConfig, get_peft_model

    names = resolve_targets(model, targets)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=names,
                        modules_to_save=trainable_heads or None)
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # peft's own "target modules not found"
        raise KnobError(f"LoRA could not be attached: {exc}") from None


def heads(model: nn.Module) -> list[str]:
    """Top-level modules beside a Hugging Face model's backbone that hold weights (the task head):
    they stay trainable under LoRA, since a fresh head must learn."""
    prefix = getattr(model, "base_model_prefix", None)
    if not prefix:
        return []
    return [n for n, m in model.named_children() if n != prefix and any(True for _ in m.parameters())]


def lora_evidence(model: nn.Module) -> dict[str, Any]:
    """What the adapters look like now: which modules carry one, their rank, scaling and |B| (0 until trained)."""
    wrapped, ranks, scalings, b_norm = [], set(), set(), 0.0
    for name, m in model.named_modules():
        if hasattr(m, "lora_A") and isinstance(m.lora_A, nn.ModuleDict) and "default" in m.lora_A:
            wrapped.append(name.replace("base_model.model.", "", 1))
            ranks.add(m.r["default"])
            scalings.add(round(float(m.scaling["default"]), 6))
            b_norm += float(m.lora_B["default"].weight.detach().float().norm())
    return {"lora_modules": len(wrapped), "lora_module_names": wrapped, "lora_ranks": sorted(ranks),
            "lora_scalings": sorted(scalings), "lora_B_norm": b_norm}


def is_peft(model: nn.Module) -> bool:
    return type(model).__module__.startswith("peft")
