"""System-phase knobs: how the runtime executes the work."""

from __future__ import annotations

import os
from typing import Any

import torch

from greenknobs.compile import verify_compiled
from greenknobs.errors import ConfigError, IncompatibleKnobs, KnobError
from greenknobs.knobs.base import Knob, Space, register


@register
class Threads(Knob):
    name = "system.threads"
    phase = "system"
    default = len(os.sched_getaffinity(0))  # torch's own default: one thread per usable core
    space = Space(choices=tuple(sorted({1, 2, 4, 8, default})))
    value_type = int
    description = "Intra-op CPU threads for training and inference (torch.set_num_threads)."
    verifies = "torch.get_num_threads() read inside the training and inference loops"

    def validate_value(self, value: int, key: str) -> None:
        if value < 1:
            raise ConfigError(key, f"must be >= 1, got {value}")

    def apply(self, ctx, value: int) -> None:
        torch.set_num_threads(value)

    def verify(self, ctx, value: int) -> dict[str, Any]:
        train = ctx.observed.require("threads_in_training", self.name)
        infer = ctx.observed.require("threads_in_inference", self.name)
        self.expect(train == value and infer == value, f"training used {train}, inference {infer}")
        return {"threads_in_training": train, "threads_in_inference": infer}


@register
class TrainBatchSize(Knob):
    name = "system.train_batch_size"
    phase = "system"
    default = 16
    space = Space(choices=(8, 16, 32, 64))
    value_type = int
    description = "Examples per training step."
    verifies = "largest training batch the loop built"

    def validate_value(self, value: int, key: str) -> None:
        if value < 1:
            raise ConfigError(key, f"must be >= 1, got {value}")

    def apply(self, ctx, value: int) -> None:
        ctx.settings["train_batch_size"] = value

    def verify(self, ctx, value: int) -> dict[str, Any]:
        seen = ctx.observed.require("train_batch_size_max", self.name)
        n = ctx.observed.require("train_examples_per_epoch", self.name)
        self.expect(seen == min(value, n), f"largest batch was {seen}")
        return {"train_batch_size_max": seen}


@register
class InteropThreads(Knob):
    name = "system.interop_threads"
    phase = "system"
    default = torch.get_num_interop_threads()  # read once at import, before any parallel work
    space = Space(choices=tuple(sorted({1, 2, 4, default})))
    value_type = int
    description = ("Inter-op CPU threads (torch.set_num_interop_threads). PyTorch allows this once per process, "
                   "before parallel work: a different value later fails the trial with that reason.")
    verifies = "torch.get_num_interop_threads() read inside the training loop"

    def validate_value(self, value: int, key: str) -> None:
        if value < 1:
            raise ConfigError(key, f"must be >= 1, got {value}")

    def apply(self, ctx, value: int) -> None:
        if torch.get_num_interop_threads() != value:
            try:
                torch.set_num_interop_threads(value)
            except RuntimeError as exc:
                raise KnobError(f"{self.name}={value}: {exc} (run each trial in a fresh process to search it)") from None

    def verify(self, ctx, value: int) -> dict[str, Any]:
        seen = ctx.observed.require("interop_threads_in_training", self.name)
        self.expect(seen == value, f"training ran with {seen}")
        return {"interop_threads_in_training": seen}


@register
class DataloaderWorkers(Knob):
    name = "system.dataloader_workers"
    phase = "system"
    default = 0
    space = Space(choices=(0, 1, 2))
    value_type = int
    description = "Worker processes that build (pad, collate) training batches in parallel with the model (0 = in the training process)."
    verifies = "worker ids stamped on the batches the training loop received"

    def validate_value(self, value: int, key: str) -> None:
        if value < 0:
            raise ConfigError(key, f"must be >= 0, got {value}")

    def apply(self, ctx, value: int) -> None:
        ctx.settings["dataloader_workers"] = value

    def verify(self, ctx, value: int) -> dict[str, Any]:
        seen = set(ctx.observed.require("batch_workers_seen", self.name))
        if value == 0:
            self.expect(seen == {-1}, f"batches came from workers {sorted(seen)}")
        else:
            self.expect(seen and seen <= set(range(value)), f"batches came from workers {sorted(seen)}")
        return {"batch_workers_seen": sorted(seen)}


@register
class Compile(Knob):
    name = "system.compile"
    phase = "system"
    default = "off"
    space = Space(choices=("off", "inductor"))
    value_type = str
    description = "torch.compile the model for training (Inductor, dynamic shapes). Compilation time is part of the training energy."
    verifies = "graphs compiled and calls into compiled code during training (a counting compiler backend)"

    def apply(self, ctx, value: str) -> None:
        ctx.settings["compile"] = value

    def verify(self, ctx, value: str) -> dict[str, Any]:
        stats = ctx.observed.require("train_compile", self.name)
        return verify_compiled(self, stats, value)


@register
class GpuPowerLimit(Knob):
    name = "system.gpu_power_limit"
    phase = "system"
    default = 1.0  # 1.0: the limit is not touched at all
    space = Space(choices=(0.5, 0.6, 0.7, 0.8, 0.9, 1.0))
    value_type = float
    devices = ("cuda",)
    description = ("Cap every visible GPU's power at this fraction of its default limit via NVML (needs root). "
                   "Read back to confirm, restored after the trial. Refused (trial infeasible) where not permitted.")
    verifies = "power limit read back from NVML during training, per GPU; restored afterwards"

    def validate_value(self, value: float, key: str) -> None:
        if not 0.1 <= value <= 1.0:
            raise ConfigError(key, f"must be a fraction of the default limit in [0.1, 1], got {value}")

    def check(self, value: float, runtime) -> None:
        if value == self.default:
            return
        if runtime.device != "cuda":
            raise IncompatibleKnobs(f"{self.name}={value} needs an NVIDIA GPU; this run is on {runtime.device}")
        from greenknobs import gpu_power

        reason = gpu_power.why_not_settable()
        if reason:
            raise IncompatibleKnobs(f"{self.name}={value} not applied: {reason}")

    def apply(self, ctx, value: float) -> None:
        if value != self.default:
            from greenknobs import gpu_power

            ctx.observed.record("gpu_power_set", gpu_power.set_fraction_of_default(value))
        ctx.settings["gpu_power_limit"] = value

    def verify(self, ctx, value: float) -> dict[str, Any]:
        if value == self.default:
            self.expect("gpu_power_set" not in ctx.observed.values, "a power limit was set at the baseline")
            return {"gpu_power_limit": "untouched"}
        from greenknobs import gpu_power

        targets = ctx.observed.require("gpu_power_set", self.name)
        during = ctx.observed.require("gpu_power_limits_in_training_w", self.name)
        try:
            for i, t in targets.items():
                self.expect(abs(during.get(i, -1) - t["target_w"]) <= 1.0,
                            f"GPU {i} ran training at {during.get(i)} W, target {t['target_w']} W")
        finally:
            restored = gpu_power.restore()
        return {"limits_in_training_w": during, "targets": targets, "restored_w": restored}
