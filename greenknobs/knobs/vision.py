"""Vision knobs: input resolution, hybrid structural pruning of a residual CNN (channels per stage by a
criterion, whole residual blocks by importance, in either order, then fine-tuning), and static int8
inference of the convolutions. Mechanisms: ``greenknobs.ml.vision``; every knob here is a setting
the vision trial reads, judged on what the model that ran showed (forward hooks on the dense model's
first training step and on the served model's first inference batch)."""

from __future__ import annotations

from typing import Any

from greenknobs.knobs.base import SettingKnob, Space, register
from greenknobs.knobs.compat import INERT, Inert
from greenknobs.ml.vision.prune import CRITERIA, kept_channels
from greenknobs.ml.vision.resnet import MAX_STAGES, stage_of

STAGE_KNOBS = tuple(f"model.channel_prune_stage{s}" for s in range(1, MAX_STAGES + 1))


def _before_after(seen: dict[str, Any]) -> dict[str, Any]:
    """Parameters and FLOPs per image of the dense model (its first training step) and of the
    served model (its first inference batch): both measured on the model that ran."""
    dense, served = seen["dense_forward"], seen["served_forward"]
    return {"parameters_before": dense.get("parameters"), "parameters_after": served.get("parameters"),
            "flops_per_image_before": dense.get("flops_per_image"), "flops_per_image_after": served.get("flops_per_image")}


@register
class InputResolution(SettingKnob):
    name = "data.input_resolution"
    default = 32
    space = Space(choices=(8, 12, 16, 24, 32))
    bounds = (4, 1024)
    example = 16
    description = ("Resize every image to this square side (bilinear, anti-aliased when shrinking) before the model "
                   "sees it, for training and inference alike: a CNN's FLOPs grow with the square of the side.")
    verifies = "height x width of the batch fed to the model's first training step, fine-tuning step and inference batch"
    evidence = ("dense_forward", "served_forward")

    def judge(self, value, seen, ctx):
        want = [value, value]
        for where, fwd in (("training", seen["dense_forward"]), ("inference", seen["served_forward"]),
                           ("fine-tuning", ctx.observed.get("finetune") or {})):
            shape = fwd.get("input_shape")
            if where == "fine-tuning" and not shape:
                continue
            if not shape or list(shape[-2:]) != want:
                return f"the {where} forward pass saw {shape}, expected {value} x {value}"
        return None

    def report(self, value, seen, ctx):
        return {"training_input": seen["dense_forward"].get("input_shape"),
                "inference_input": seen["served_forward"].get("input_shape")}


class ChannelPruneStage(SettingKnob):
    """Fraction of the inner channels pruned from every residual block of one stage."""

    stage: int
    default = 0.0
    space = Space(choices=(0.0, 0.25, 0.5, 0.75))
    bounds = (0.0, 0.95)
    example = 0.5
    evidence = ("dense_forward", "served_forward", "pruning")

    def judge(self, value, seen, ctx):
        dense = {b: w for b, w in seen["dense_forward"].get("block_widths", {}).items() if stage_of(b) == self.stage}
        served = {b: w for b, w in seen["served_forward"].get("block_widths", {}).items() if stage_of(b) == self.stage}
        if not dense:
            return None if value == 0 else f"the model has no stage {self.stage}"
        if value > 0 and not served:
            removed = set(seen["pruning"]["blocks"]["removed"])
            return None if set(dense) <= removed else f"no block of stage {self.stage} ran in inference"
        for block, width in served.items():
            if block not in dense:
                return f"block {block} served but never trained"
            want = kept_channels(dense[block], value) if value > 0 else dense[block]
            if width != want:
                return f"block {block} computed {width} inner channels (dense {dense[block]}), expected {want}"
        return None

    def report(self, value, seen, ctx):
        widths = {k: {b: w for b, w in seen[k].get("block_widths", {}).items() if stage_of(b) == self.stage}
                  for k in ("dense_forward", "served_forward")}
        return {"inner_widths_before": widths["dense_forward"], "inner_widths_after": widths["served_forward"],
                **_before_after(seen)}


for _s in range(1, MAX_STAGES + 1):
    register(type(f"ChannelPruneStage{_s}", (ChannelPruneStage,), {
        "name": f"model.channel_prune_stage{_s}",
        "stage": _s,
        "description": (f"Structurally prune this fraction of the inner channels (conv1 filters, bn1 entries, conv2 "
                        f"inputs) of every residual block in stage {_s}, after dense training; the criterion is "
                        "model.channel_criterion. A stage the model does not have refuses any value but 0."),
        "verifies": (f"inner width of every stage-{_s} block read off the tensors its conv1 produced in the dense model's "
                     "first training step and in the served model's first inference batch; parameters and FLOPs "
                     "before and after"),
    }))


@register
class ChannelCriterion(SettingKnob):
    name = "model.channel_criterion"
    default = "bn_gamma"
    space = Space(choices=CRITERIA)
    example = "l1_norm"
    example_with = {"model.channel_prune_stage1": 0.5}
    order = -1  # a setting the channel pruning reads
    description = ("Which inner channels channel pruning keeps: bn_gamma (largest |batch-norm scale|), l1_norm "
                   "(largest filter L1 norm) or fmap_rank (highest average feature-map rank on calibration images, HRank).")
    verifies = ("the criterion that scored the channels; in every pruned block the kept channels are the top-scoring "
                "ones and the served block computed exactly that many")
    evidence = ("pruning", "served_forward")

    def judge(self, value, seen, ctx):
        rep = seen["pruning"]
        pruned = rep.get("channels") or {}
        if not pruned:
            return None if value == self.default else "no channel was pruned, so the criterion chose nothing"
        if rep.get("criterion") != value:
            return f"channels were scored by {rep.get('criterion')!r}"
        served = seen["served_forward"].get("block_widths", {})
        for block, b in pruned.items():
            kept = set(b["kept"])
            dropped = [s for i, s in enumerate(b["scores"]) if i not in kept]
            if len(kept) != b["after"] or (dropped and min(b["scores"][i] for i in kept) < max(dropped) - 1e-5):
                return f"block {block} kept channels {sorted(kept)} that are not the top {b['after']} by its scores"
            if block in served and served[block] != b["after"]:
                return f"block {block} served with {served[block]} inner channels, pruning kept {b['after']}"
        return None

    def report(self, value, seen, ctx):
        rep = seen["pruning"]
        return {"criterion": rep.get("criterion"), "kept": {b: v["kept"] for b, v in (rep.get("channels") or {}).items()}}


@register
class BlocksRemoved(SettingKnob):
    name = "model.blocks_removed"
    default = 0
    space = Space(low=0, high=4, integer=True)
    bounds = (0, None)
    example = 1
    description = ("Remove this many residual blocks (only blocks with an identity shortcut, so shapes stay consistent), "
                   "the least important first: importance = increase of the calibration cross-entropy when the block "
                   "is bypassed, scored on the dense-trained model.")
    verifies = ("blocks that ran in the dense model's first training step vs in the served model's first inference "
                "batch: the difference is the removed set, of this size, and those had the lowest importance")
    evidence = ("dense_forward", "served_forward", "pruning")

    def judge(self, value, seen, ctx):
        dense, served = set(seen["dense_forward"].get("blocks", [])), set(seen["served_forward"].get("blocks", []))
        gone = dense - served
        if served - dense:
            return f"blocks {sorted(served - dense)} served but never trained"
        if len(gone) != value:
            return f"{len(gone)} blocks removed ({sorted(gone)}), expected {value}"
        blocks = seen["pruning"]["blocks"]
        if gone != set(blocks["removed"]):
            return f"blocks {sorted(gone)} did not run, but pruning removed {blocks['removed']}"
        scores = blocks["scores"]
        kept = [scores[b] for b in scores if b not in gone]
        if gone and kept and max(scores[b] for b in gone) > min(kept) + 1e-9:
            return f"removed {sorted(gone)} although a more important block went and a less important one stayed"
        return None

    def report(self, value, seen, ctx):
        blocks = seen["pruning"]["blocks"]
        return {"removed": blocks["removed"], "importance": blocks["scores"],
                "blocks_before": len(seen["dense_forward"].get("blocks", [])),
                "blocks_after": len(seen["served_forward"].get("blocks", [])), **_before_after(seen)}


@register
class PruneOrder(SettingKnob):
    name = "model.prune_order"
    default = "channels_first"
    space = Space(choices=("channels_first", "blocks_first"))
    example = "blocks_first"
    example_with = {"model.channel_prune_stage1": 0.5, "model.blocks_removed": 1}
    order = -1
    description = ("Hybrid pruning order: prune channels then score and remove blocks on the narrower model, or "
                   "remove blocks then channel-prune the survivors. Needs both channel pruning and block removal.")
    verifies = "the sequence the pruning steps ran in, with parameters and MACs per image after each step"
    evidence = ("pruning",)

    def judge(self, value, seen, ctx):
        steps = [s["step"] for s in seen["pruning"]["steps"]]
        if len(steps) < 2:
            return None if value == self.default else f"only {steps or 'no'} pruning step ran: the order decided nothing"
        want = ["channels", "blocks"] if value == "channels_first" else ["blocks", "channels"]
        return None if steps == want else f"steps ran as {steps}"

    def report(self, value, seen, ctx):
        return {"steps": seen["pruning"]["steps"]}


@register
class FinetuneEpochs(SettingKnob):
    name = "training.finetune_epochs"
    default = 0
    space = Space(low=0, high=3, integer=True)
    bounds = (0, None)
    example = 1
    example_with = {"model.blocks_removed": 1}
    description = "Passes over the training data after pruning, on the pruned model (same rate schedule shape, restarted)."
    verifies = ("epochs and optimizer steps of the fine-tuning loop, and that the model it fine-tuned is the one "
                "served: same parameter count and block widths as the served model's first inference batch")
    evidence = ("finetune", "served_forward")

    def judge(self, value, seen, ctx):
        ft, served = seen["finetune"], seen["served_forward"]
        if ft["epochs_completed"] != value:
            return f"{ft['epochs_completed']} fine-tuning epochs ran"
        if value == 0:
            return f"{ft['optimizer_steps']} fine-tuning steps with fine-tuning off" if ft["optimizer_steps"] else None
        if not ft["optimizer_steps"]:
            return "the fine-tuning optimizer never stepped"
        if ft["parameters"] != served.get("parameters") or ft["block_widths"] != served.get("block_widths"):
            return (f"fine-tuned a model of {ft['parameters']} parameters / {ft['block_widths']}, served "
                    f"{served.get('parameters')} / {served.get('block_widths')}")
        return None

    def report(self, value, seen, ctx):
        ft = seen["finetune"]
        return {k: ft[k] for k in ("epochs_completed", "optimizer_steps", "parameters", "macs_per_image")}


@register
class StaticInt8(SettingKnob):
    name = "inference.static_int8"
    default = False
    space = Space(choices=(False, True))
    devices = ("cpu",)  # PyTorch's quantised conv kernels (x86/fbgemm, qnnpack) are CPU kernels
    example = True
    description = ("Post-training static int8 quantisation for inference (torch.ao FX graph mode): conv+bn+relu fused, "
                   "activation ranges calibrated on training images, int8 convolutions, residual adds and linear "
                   "head. Covers the convolutions, unlike inference.quantization (dynamic int8 of nn.Linear only).")
    verifies = ("convolutions that ran in the served model's first inference batch: how many were quantised modules "
                "and the dtype of the tensors they received (torch.quint8)")
    evidence = ("served_forward",)

    def judge(self, value, seen, ctx):
        fwd = seen["served_forward"]
        convs, quantized, dtypes = fwd.get("convs_ran", 0), fwd.get("quantized_convs_ran", 0), fwd.get("conv_input_dtypes", [])
        if not value:
            return f"{quantized} int8 convolutions ran with int8 off" if quantized else None
        if not convs or quantized != convs or dtypes != ["torch.quint8"]:
            return f"{quantized} of {convs} convolutions ran quantised, on inputs of {dtypes}"
        return None

    def report(self, value, seen, ctx):
        fwd = seen["served_forward"]
        return {k: fwd.get(k) for k in ("convs_ran", "quantized_convs_ran", "quantized_linears_ran", "conv_input_dtypes")} | {
            "engine": ctx.observed.get("int8_engine")}


# Settings that do nothing in a combination: canonicalised to their baseline by the search, refused when run directly.
def _channels(v: dict[str, Any]) -> bool:
    return any(v[k] > 0 for k in STAGE_KNOBS)


INERT.extend([
    Inert("model.channel_criterion", STAGE_KNOBS, _channels, "a channel pruning ratio > 0", True),
    Inert("model.prune_order", (*STAGE_KNOBS, "model.blocks_removed"),
          lambda v: _channels(v) and v["model.blocks_removed"] > 0,
          "both a channel pruning ratio > 0 and model.blocks_removed > 0", True),
    Inert("training.finetune_epochs", (*STAGE_KNOBS, "model.blocks_removed"),
          lambda v: _channels(v) or v["model.blocks_removed"] > 0,
          "pruning: a channel pruning ratio > 0 or model.blocks_removed > 0", True),
])
