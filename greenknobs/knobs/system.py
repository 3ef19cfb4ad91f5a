"""System-phase knobs: how the runtime executes the work."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from greenknobs.errors import IncompatibleKnobs, KnobError
from greenknobs.knobs import watching
from greenknobs.knobs.base import Knob, ObjectKnob, SettingKnob, Space, register
from greenknobs.ml import instruments
from greenknobs.ml.compile import judge_compiled
from greenknobs.runtime import usable_cores


@dataclass
class BatchEvidence:
    largest: int = 0  # rows of the largest batch a forward pass of the phase received
    batches: int = 0
    rows_available: int | None = None  # rows in the largest dataset a handed-over loader serves


def _batch_knob_handed(knob: ObjectKnob, kind: str, obj: Any, value: int, trial: Any, loader_kind: str, arg: str,
                       phases: tuple[str, ...]) -> Any:
    """A batch-size knob: acts on a DataLoader or a TrainingArguments field; counts rows per forward."""
    ev = trial.evidence(knob)
    out = None
    if kind == loader_kind:
        if trial.may_act(knob, kind, obj):
            out = instruments.set_batch_size(obj, value)
        loader = out if out is not None else obj
        rows = instruments.loader_rows(loader)

        def served(batch, rows=rows) -> None:  # the loader's rows count where its batches are served
            if rows is not None and trial.current_phase in phases:
                ev.rows_available = max(ev.rows_available or 0, rows)

        instruments.watch_loader(loader).on_batch.append(served)
    elif kind == "training_args" and trial.may_act(knob, kind, obj):
        setattr(obj, arg, value)
    if watching.once(trial, knob):
        def fn(phase, module, args, kwargs):
            rows = instruments.batch_rows(args, kwargs)
            if rows is not None:
                ev.largest, ev.batches = max(ev.largest, rows), ev.batches + 1

        watching.on_forward(trial, phases, fn)
    return out


def _judge_batches(value: int, ev: BatchEvidence) -> str | None:
    if not ev.batches:
        return "no forward pass of the phase was watched"
    want = min(value, ev.rows_available) if ev.rows_available else value
    return None if ev.largest == want else f"the largest batch a forward pass received had {ev.largest} rows, expected {want}"


@dataclass
class ThreadsEvidence:
    seen: dict[str, int] = field(default_factory=dict)  # phase -> thread-pool size read inside its first forward


class _ThreadKnob(ObjectKnob):
    """A thread pool set as the trial's first phase starts, read back inside the forward passes."""

    affects_output = False  # cost only: the trained model is the same
    pool: str  # "intra_op" | "inter_op"
    watches = ("model",)
    needs = (("model",),)
    needs_hint = "the model, so its forward passes show the threads they ran with: trial.model(model)"
    needed_in = "training"
    evidence_type = ThreadsEvidence

    def set(self, value: int) -> None:
        raise TypeError(f"{type(self).__name__} must say which pool it sets")

    def phase_started(self, phase, value, trial):
        # from the system phase on (or the first phase that computes with the model): the data and
        # model phases run at the process default in every trial, so they compare across trials
        if phase in ("system", "training", "inference", "test") and trial.may_act(self, "process"):
            self.set(value)

    def handed(self, kind, obj, value, trial):
        ev = trial.evidence(self)
        if watching.once(trial, self):
            watching.on_first_forward(trial, ("training", *watching.SERVING),
                                      lambda p, m, a, k: ev.seen.setdefault(p, instruments.threads()[self.pool]),
                                      lambda *_: None)
        return None

    def judge(self, value, ev, ctx):
        if not ev.seen:
            return "no forward pass was watched"
        wrong = {p: n for p, n in ev.seen.items() if n != value}
        return f"forward passes ran with {wrong} threads" if wrong else None

    def report(self, value, ev, ctx):
        return {f"threads_in_{p}": n for p, n in ev.seen.items()}


@register
class Threads(_ThreadKnob):
    name = "system.threads"
    default = usable_cores()  # torch's own default: one thread per usable core
    space = Space(choices=tuple(sorted({1, 2, 4, 8, default})))
    bounds = (1, None)
    example = 1 if default != 1 else 2
    description = "Intra-op CPU threads for training and inference (torch.set_num_threads), set as the system phase starts."
    verifies = "torch.get_num_threads() read inside the first training and the first serving forward pass"
    pool = "intra_op"

    def set(self, value: int) -> None:
        torch.set_num_threads(value)


@register
class TrainBatchSize(ObjectKnob):
    name = "system.train_batch_size"
    default = 16
    space = Space(choices=(8, 16, 32, 64))
    bounds = (1, None)
    example = 8
    description = ("Examples per training step: the batch size of the DataLoader handed to trial.train_loader(), or "
                   "TrainingArguments.per_device_train_batch_size.")
    verifies = "rows of the largest batch a training forward pass received (a forward pre-hook)"
    acts_on = ("train_loader", "training_args")
    watches = ("model",)
    needs = (("train_loader", "model"), ("training_args", "model"))
    needs_hint = "the training DataLoader: trial.train_loader(loader) (or trial.training_args(args)), and the model"
    needed_in = "training"
    evidence_type = BatchEvidence

    def handed(self, kind, obj, value, trial):
        return _batch_knob_handed(self, kind, obj, value, trial, "train_loader", "per_device_train_batch_size",
                                  ("training",))

    def judge(self, value, ev, ctx):
        return _judge_batches(value, ev)


@register
class InteropThreads(_ThreadKnob):
    name = "system.interop_threads"
    default = torch.get_num_interop_threads()  # read once at import, before any parallel work
    space = Space(choices=tuple(sorted({1, 2, 4, default})))
    bounds = (1, None)
    example = 1
    description = ("Inter-op CPU threads (torch.set_num_interop_threads). PyTorch allows this once per process, "
                   "before parallel work: a different value later fails the trial with that reason.")
    verifies = "torch.get_num_interop_threads() read inside the first training and serving forward pass"
    pool = "inter_op"

    def set(self, value: int) -> None:
        if torch.get_num_interop_threads() != value:
            try:
                torch.set_num_interop_threads(value)
            except RuntimeError as exc:
                raise KnobError(f"{self.name}={value}: {exc} (run each trial in a fresh process to search it)") from None


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


@dataclass
class CompileEvidence:
    graphs: int = 0  # graphs the counting backend compiled during the phase
    calls: int = 0  # calls into compiled code
    compiler: str | None = None  # the compiler function that ran


class CompileKnob(ObjectKnob):
    """torch.compile for one phase: the handed-over model's forward is compiled after the phase's
    first forward (which runs eager, with the other knobs' probes) and restored when it ends; the
    evidence is a counting compiler backend's record of that phase."""

    default = "off"
    space = Space(choices=("off", "inductor"))
    example = "inductor"
    watches = ("model",)
    needs = (("model",),)
    needs_hint = "the model: trial.model(model)"
    evidence_type = CompileEvidence
    compiled_phases: ClassVar[tuple[str, ...]]

    def phase_started(self, phase, value, trial):
        if phase in self.compiled_phases and value != "off" and trial.handed("model") is not None:
            trial.scratch(self)["pending"] = phase

    def handed(self, kind, obj, value, trial):
        if watching.once(trial, self):
            def after_first(phase, state, module, output):
                scratch = trial.scratch(self)
                if scratch.pop("pending", None) == phase and trial.may_act(self, "model", module):
                    scratch["restore"], scratch["stats"] = instruments.compile_forward(module, value)

            watching.on_first_forward(trial, ("training", *watching.SERVING), lambda *_: None, after_first)
        return None

    def phase_ended(self, phase, value, trial):
        scratch = trial.scratch(self)
        restore, stats = scratch.pop("restore", None), scratch.pop("stats", None)
        if phase in self.compiled_phases:
            ev = trial.evidence(self)
            if stats:
                ev.graphs, ev.calls, ev.compiler = stats["graphs"], stats["calls"], stats["compiler"]
        if restore is not None:
            restore()

    def judge(self, value, ev, ctx):
        return judge_compiled({"graphs": ev.graphs, "calls": ev.calls, "compiler": ev.compiler}, value)


@register
class Compile(CompileKnob):
    name = "system.compile"
    description = ("torch.compile the model for training (Inductor, dynamic shapes). Compilation time is part of the "
                   "training energy.")
    verifies = "graphs compiled and calls into compiled code during training (a counting compiler backend)"
    compiled_phases = ("training",)
    needed_in = "training"


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
