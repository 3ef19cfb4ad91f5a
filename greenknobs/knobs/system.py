"""System-phase knobs: how the runtime executes the work."""

from __future__ import annotations

from typing import Any

import torch

from greenknobs.errors import IncompatibleKnobs, KnobError
from greenknobs.knobs.base import Knob, SettingKnob, Space, register
from greenknobs.ml.compile import judge_compiled
from greenknobs.runtime import usable_cores


@register
class Threads(Knob):
    affects_output = False  # cost only: the trained model is the same
    name = "system.threads"
    default = usable_cores()  # torch's own default: one thread per usable core
    space = Space(choices=tuple(sorted({1, 2, 4, 8, default})))
    bounds = (1, None)
    example = 1 if default != 1 else 2
    description = "Intra-op CPU threads for training and inference (torch.set_num_threads)."
    verifies = "torch.get_num_threads() read inside the training and inference loops"

    def apply(self, ctx, value: int) -> None:
        torch.set_num_threads(value)
        ctx.settings[self.name] = value

    def verify(self, ctx, value: int) -> dict[str, Any]:
        train = ctx.observed.require("threads_in_training", self.name)
        infer = ctx.observed.require("threads_in_inference", self.name)
        self.expect(train == value and infer == value, f"training used {train}, inference {infer}")
        return {"threads_in_training": train, "threads_in_inference": infer}


@register
class TrainBatchSize(SettingKnob):
    name = "system.train_batch_size"
    default = 16
    space = Space(choices=(8, 16, 32, 64))
    bounds = (1, None)
    example = 8
    description = "Examples per training step."
    verifies = "largest training batch the loop built"
    evidence = ("train_batch_size_max", "train_examples_per_epoch")

    def judge(self, value, seen, ctx):
        seen_max = seen["train_batch_size_max"]
        return None if seen_max == min(value, seen["train_examples_per_epoch"]) else f"largest batch was {seen_max}"

    def report(self, value, seen, ctx):
        return {"train_batch_size_max": seen["train_batch_size_max"]}


@register
class InteropThreads(Knob):
    affects_output = False  # cost only: the trained model is the same
    name = "system.interop_threads"
    default = torch.get_num_interop_threads()  # read once at import, before any parallel work
    space = Space(choices=tuple(sorted({1, 2, 4, default})))
    bounds = (1, None)
    example = 1
    description = ("Inter-op CPU threads (torch.set_num_interop_threads). PyTorch allows this once per process, "
                   "before parallel work: a different value later fails the trial with that reason.")
    verifies = "torch.get_num_interop_threads() read inside the training loop"

    def apply(self, ctx, value: int) -> None:
        if torch.get_num_interop_threads() != value:
            try:
                torch.set_num_interop_threads(value)
            except RuntimeError as exc:
                raise KnobError(f"{self.name}={value}: {exc} (run each trial in a fresh process to search it)") from None
        ctx.settings[self.name] = value

    def verify(self, ctx, value: int) -> dict[str, Any]:
        seen = ctx.observed.require("interop_threads_in_training", self.name)
        self.expect(seen == value, f"training ran with {seen}")
        return {"interop_threads_in_training": seen}


@register
class DataloaderWorkers(SettingKnob):
    affects_output = False  # cost only: the trained model is the same
    name = "system.dataloader_workers"
    default = 0
    space = Space(choices=(0, 1, 2))
    bounds = (0, None)
    example = 1
    description = "Worker processes that build (pad, collate) training batches in parallel with the model (0 = in the training process)."
    verifies = "worker ids stamped on the batches the training loop received"
    evidence = ("batch_workers_seen",)

    def judge(self, value, seen, ctx):
        workers = set(seen["batch_workers_seen"])
        ok = workers == {-1} if value == 0 else bool(workers) and workers <= set(range(value))
        return None if ok else f"batches came from workers {sorted(workers)}"


class CompileSetting(SettingKnob):
    """torch.compile for one phase; the evidence is a counting compiler backend's record of that phase."""

    default = "off"
    space = Space(choices=("off", "inductor"))
    example = "inductor"

    def judge(self, value, seen, ctx):
        return judge_compiled(seen[self.evidence[0]], value)

    def report(self, value, seen, ctx):
        return seen[self.evidence[0]]


@register
class Compile(CompileSetting):
    name = "system.compile"
    description = "torch.compile the model for training (Inductor, dynamic shapes). Compilation time is part of the training energy."
    verifies = "graphs compiled and calls into compiled code during training (a counting compiler backend)"
    evidence = ("train_compile",)


@register
class GpuPowerLimit(Knob):
    affects_output = False  # cost only: the trained model is the same
    name = "system.gpu_power_limit"
    default = 1.0  # 1.0: the limit is not touched at all
    space = Space(choices=(0.5, 0.6, 0.7, 0.8, 0.9, 1.0))
    bounds = (0.1, 1.0)
    devices = ("cuda",)
    example = 0.7
    description = ("Cap every visible GPU's power at this fraction of its default limit via NVML (needs root). "
                   "Read back to confirm; restored after the trial, even a failed one. Refused (trial infeasible) "
                   "where not permitted.")
    verifies = "power limit read back from NVML during training, per GPU; restored afterwards"

    def check(self, value: float, runtime) -> None:
        if value == self.default:
            return
        if runtime.device != "cuda":
            raise IncompatibleKnobs(f"{self.name}={value} needs an NVIDIA GPU; this run is on {runtime.device}")
        from greenknobs.devices import power

        reason = power.why_not_settable()
        if reason:
            raise IncompatibleKnobs(f"{self.name}={value} not applied: {reason}")

    def apply(self, ctx, value: float) -> None:
        if value != self.default:
            from greenknobs.devices import power

            ctx.observed.record("gpu_power_set", power.set_fraction_of_default(value))
        ctx.settings[self.name] = value

    def verify(self, ctx, value: float) -> dict[str, Any]:
        if value == self.default:
            self.expect("gpu_power_set" not in ctx.observed.values, "a power limit was set at the baseline")
            return {"gpu_power_limit": "untouched"}
        targets = ctx.observed.require("gpu_power_set", self.name)
        during = ctx.observed.require("gpu_power_limits_in_training_w", self.name)
        for i, t in targets.items():
            self.expect(abs(during.get(i, -1) - t["target_w"]) <= 1.0,
                        f"GPU {i} ran training at {during.get(i)} W, target {t['target_w']} W")
        return {"limits_in_training_w": during, "targets": targets}

    def release(self, ctx, value: float) -> None:
        from greenknobs.devices import power

        if power.changed():
            ctx.observed.record("gpu_power_restored_w", power.restore())
