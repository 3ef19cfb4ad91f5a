"""The contract every knob keeps, runnable against any pipeline that honours it.

For one knob: (1) it describes itself (phase, default inside its space, devices, what it verifies);
(2) where this machine can run it, a non-default value applied inside the real pipeline changes
the evidence its ``verify`` reads back, and verify accepts it -- and verify *rejects* a broken
knob: one that recorded nothing, one that silently did nothing (the evidence the baseline run
left, judged against the non-default value), and a *mutant*: the same trial with the knob's
mechanism switched off but its setting and hooks kept; (3) where it cannot run, ``check`` refuses with
a reason before anything runs. For a pipeline: (4) every knob at its baseline changes nothing on
the model, the data or the runtime.

    from greenknobs.testing.knob_contract import check_knob
    def test_my_knob(my_pipeline):
        check_knob("user.freeze_embeddings", my_pipeline)     # one line

A knob names the value to try with ``example`` (and ``example_with`` for the other knob values
that value needs, e.g. a LoRA alpha needs a LoRA rank).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from greenknobs.context import TrialContext
from greenknobs.errors import IncompatibleKnobs, KnobError
from greenknobs.knobs import REGISTRY, get_knob
from greenknobs.phases import TrialResult
from greenknobs.runtime import Runtime, detect_runtime
from greenknobs.testing.fixtures import TINY_BASELINE, run_knobs_with_context

# (pipeline, knob overrides, runtime) -> (result, the context its phases left)
Runner = Callable[[Any, dict[str, Any], Runtime], tuple[TrialResult, TrialContext]]


def example_of(name: str) -> tuple[Any, dict[str, Any]]:
    """The value the contract tries, and the other knob values it needs."""
    cls = REGISTRY[name]
    if hasattr(cls, "example"):
        return cls.example, dict(cls.example_with)
    space = cls.space
    value = next(c for c in space.choices if c != cls.default) if space.choices else space.high
    return value, dict(cls.example_with)


def evidence(result: TrialResult, name: str) -> dict[str, Any]:
    return {k: v for k, v in result.verifications[name].items() if k != "value"}


def check_fields(name: str) -> None:
    knob = get_knob(name)
    info = knob.info()
    for field in ("phase", "default", "space", "devices", "verifies", "description"):
        assert info[field] not in (None, ""), f"{name} lacks {field}"
    assert knob.phase in ("data", "model", "system", "training", "inference"), f"{name}: unknown phase {knob.phase!r}"
    assert knob.space.contains(knob.default) or knob.space.choices is None or name == "model.lora_targets", \
        f"{name}: default {knob.default!r} outside its space {knob.space.describe()}"
    value, _ = example_of(name)
    assert value != knob.default, f"{name}: the contract example must differ from the default"
    knob.validate(value, f"knobs.{name}")


def check_takes_effect(name: str, pipeline, runtime: Runtime,
                       run: Runner = run_knobs_with_context) -> tuple[TrialResult, TrialResult]:
    """The default vs the example value (same companions): verify passes and the evidence moves;
    a broken knob's evidence (nothing recorded; the baseline's behaviour) fails verification."""
    value, companions = example_of(name)
    default = get_knob(name).default
    before, before_ctx = run(pipeline, {**companions, **({name: default} if name in TINY_BASELINE else {})}, runtime)
    after, after_ctx = run(pipeline, {**companions, name: value}, runtime)
    assert after.verifications[name]["value"] == value
    assert evidence(after, name) != evidence(before, name), f"{name}={value!r} changed nothing its verify reads"
    check_rejects_broken_evidence(name, value, before_ctx, after_ctx)
    return before, after


def check_rejects_broken_evidence(name: str, value: Any, baseline_ctx: TrialContext, ctx: TrialContext) -> None:
    """verify must fail (KnobError, not a crash) for a knob that recorded nothing, and for one
    that silently did nothing -- the run at the default value stands in for that knob."""
    knob = get_knob(name)
    empty = TrialContext(ctx.runtime, ctx.seed, settings=dict(ctx.settings))
    empty.trial = ctx.trial
    _expect_knob_error(lambda: knob.verify(empty, value), f"{name}={value!r} passed verification with no evidence at all")
    _expect_knob_error(lambda: knob.verify(baseline_ctx, value),
                       f"{name}={value!r} passed verification on the evidence of a run that never applied it")


def check_mutant_fails(name: str, pipeline, runtime: Runtime, run: Runner = run_knobs_with_context) -> str:
    """The knob with its *mechanism* switched off but its setting and evidence hooks kept (an
    ObjectKnob's ``trial.may_act`` says no; a setting's readers get the baseline value): the trial
    runs, and verification must fail -- evidence a broken mechanism can produce proves nothing.
    Returns the failure's message."""
    value, companions = example_of(name)
    cls = REGISTRY[name]
    cls.acting = False
    try:
        run(pipeline, {**companions, name: value}, runtime)
    except KnobError as exc:
        assert name in str(exc), f"{name}'s mutant failed, but on another knob's check: {exc}"
        return str(exc)
    finally:
        del cls.acting  # back to the base class's True
    raise AssertionError(f"{name}={value!r} passed verification with its mechanism switched off")


def _expect_knob_error(verify: Callable[[], Any], message: str) -> None:
    try:
        verify()
    except KnobError:
        return
    raise AssertionError(message)


def check_refused(name: str, pipeline, runtime: Runtime, run: Runner = run_knobs_with_context) -> str:
    """A value this machine cannot run is refused before the trial starts; returns the reason."""
    value, companions = example_of(name)
    started = []
    original = pipeline.data
    def data(*args):
        started.append(True)
        original(*args)

    pipeline.data = data
    try:
        run(pipeline, {**companions, name: value}, runtime)
    except IncompatibleKnobs as exc:
        assert not started, f"{name}: the trial started before the refusal"
        return str(exc)
    finally:
        pipeline.data = original
    raise AssertionError(f"{name}={value!r} ran on {runtime.device}, but the knob says it needs {get_knob(name).devices}")


def check_baseline_changes_nothing(pipeline, runtime: Runtime, run: Runner = run_knobs_with_context,
                                   overrides: dict[str, Any] | None = None) -> TrialResult:
    """Every knob at its baseline may write settings and evidence, nothing else: through a
    five-phase pipeline's ``apply`` and through the hooks that act on objects user code hands over
    (``handed``, ``phase_started``) alike -- a run(trial) pipeline reaches knobs only by the latter."""
    import torch

    from greenknobs.ml import probes

    changed: dict[str, Any] = {}

    def state(model: Any, train: Any):
        return (probes.checksum(model) if model is not None else None,
                tuple(type(m).__name__ for m in model.modules()) if model is not None else None,
                [id(r) for r in train or []], torch.get_num_threads(), torch.get_num_interop_threads())

    def ctx_state(ctx):
        return state(getattr(ctx, "model", None), getattr(ctx, "train", None))

    def trial_state(trial):
        model = trial.handed("model") if hasattr(trial, "handed") else None
        return state(model if model is not None else getattr(trial.ctx, "model", None), getattr(trial.ctx, "train", None))

    def apply(orig, name):
        def wrapped(self, ctx, value):
            before = ctx_state(ctx)
            orig(self, ctx, value)
            if ctx_state(ctx) != before:
                changed[name] = value
        return wrapped

    def handed(orig, name):
        def wrapped(self, kind, obj, value, trial):
            before = state(obj, None) if kind == "model" else None
            out = orig(self, kind, obj, value, trial)
            if (out is not None and out is not obj) or (kind == "model" and state(obj, None) != before):
                changed[name] = value
            return out
        return wrapped

    def phase_started(orig, name):
        def wrapped(self, phase, value, trial):
            before = trial_state(trial)
            orig(self, phase, value, trial)
            if trial_state(trial) != before:
                changed[name] = value
        return wrapped

    hooks = {"apply": apply, "handed": handed, "phase_started": phase_started}
    originals = []
    for name in pipeline.knobs:
        cls = REGISTRY[name]
        for method, wrap in hooks.items():
            originals.append((cls, method, cls.__dict__.get(method)))
            setattr(cls, method, wrap(getattr(cls, method), name))
    try:
        result, _ = run(pipeline, dict(overrides or {}), runtime)
    finally:
        for cls, method, original in reversed(originals):
            if original is None:
                delattr(cls, method)
            else:
                setattr(cls, method, original)
    assert not changed, f"baseline values changed the trial: {changed}"
    assert set(result.verifications) == set(pipeline.knobs)
    return result


def check_knob(name: str, pipeline, runtime: Runtime | None = None, run: Runner = run_knobs_with_context,
               fresh_run: Runner | None = None) -> None:
    """The whole per-knob contract on ``pipeline``, here. ``run`` may cache trials; ``fresh_run``
    (default: ``run``) must not -- the mutant's trial is always run anew."""
    runtime = runtime or detect_runtime()
    check_fields(name)
    value, _ = example_of(name)
    knob = get_knob(name)
    if runtime.device in knob.value_devices.get(value, knob.devices):
        check_takes_effect(name, pipeline, runtime, run)
        check_mutant_fails(name, pipeline, runtime, fresh_run or run)
    else:
        check_refused(name, pipeline, runtime, run)
