"""The Knob contract.

Lifecycle inside one trial (see ``greenknobs.pipeline.run_trial``):

1. ``check(value, runtime)`` -- before anything runs. Raise ``IncompatibleKnobs`` when the value
   cannot work here (fp16 on a CPU, a power limit without a GPU): the trial is then recorded as
   infeasible with that reason and never starts.
2. ``apply(ctx, value)`` -- inside the knob's phase, at the point the pipeline calls
   ``ctx.apply_knobs()`` (after the phase has loaded what the knob acts on, e.g. the model).
   Its cost is therefore counted in that phase's energy window.
3. ``verify(ctx, value) -> dict`` -- after the whole trial. Reads *evidence* recorded inside the
   computation (the layer count of the model that trained, the dtype seen in a forward pass,
   the rate the optimizer stepped with) and returns it for logging. Raise ``KnobError`` when the
   evidence disagrees: a knob that silently did nothing fails the trial instead of polluting
   the front.
4. ``release(ctx, value)`` -- always, after the trial, whether it succeeded or failed (the runner
   calls it in ``finally``): give back what ``apply`` took from the machine (a GPU power limit).

A knob's ``default`` is the untouched baseline: applying it must change nothing.

Two bases:
* ``Knob``        -- knobs that act themselves (cast the weights, remove layers, set a power limit).
* ``SettingKnob`` -- knobs that only choose a setting some mechanism reads (``ctx.setting(name)``)
                     and judge the evidence it left: a name, a default, a space, the evidence keys
                     it needs and one predicate. Most knobs are these.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from greenknobs.errors import ConfigError, IncompatibleKnobs, KnobError
from greenknobs.phases import PHASES

if TYPE_CHECKING:
    from greenknobs.context import TrialContext
    from greenknobs.runtime import Runtime


@dataclass(frozen=True)
class Space:
    """A search space: categorical ``choices``, or a numeric range ``low``..``high``."""

    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False

    def contains(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        assert self.low is not None and self.high is not None
        return self.low - 1e-12 <= value <= self.high + 1e-12

    def describe(self) -> str:
        if self.choices is not None:
            return "{" + ", ".join(str(c) for c in self.choices) + "}"
        kind = "int" if self.integer else "float"
        extra = ", log" if self.log else (f", step {self.step:g}" if self.step else "")
        return f"{kind} [{self.low:g}, {self.high:g}{extra}]"

    def to_dict(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        d: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            d["log"] = True
        if self.step:
            d["step"] = self.step
        return d


Values = Mapping[str, Any]


@dataclass(frozen=True)
class Requires:
    """Away from its baseline, a knob does nothing unless ``active(values)`` holds over ``knobs``
    (a LoRA alpha without LoRA). The search puts such a value back to the baseline before the
    trial runs; with ``refuse``, a trial run directly with it is refused, as a silent no-op would be."""

    knobs: tuple[str, ...]
    active: Callable[[Values], bool]
    why: str  # what would have to hold, in words
    refuse: bool = False


@dataclass(frozen=True)
class Conflict:
    """This knob's values for which ``mine`` holds cannot run next to ``other``'s for which ``theirs``
    holds (bf16 serving with int8 kernels): such a trial is infeasible before it starts."""

    other: str
    mine: Callable[[Any], bool]
    theirs: Callable[[Any], bool]
    why: str


@dataclass(frozen=True)
class KnobSetting:
    """A knob as an experiment uses it: its baseline value and, when searched, its space."""

    knob: Knob
    default: Any
    space: Space | None  # None: fixed at ``default`` in every trial

    @property
    def name(self) -> str:
        return self.knob.name

    @property
    def searched(self) -> bool:
        return self.space is not None


class Knob(ABC):
    """One optimisation a trial can switch on. Subclasses set the class attributes below."""

    name: ClassVar[str]  # "phase.knob", e.g. "data.max_seq_len"; also its ctx.settings key
    phase: ClassVar[str]  # defaults to the name's prefix when that is a phase
    default: ClassVar[Any]
    space: ClassVar[Space]
    description: ClassVar[str]
    verifies: ClassVar[str]  # what ``verify`` reads back, in words
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")  # where a non-default value can run
    value_devices: ClassVar[Mapping[Any, tuple[str, ...]]] = {}  # stricter needs of single values (fp16 -> cuda)
    value_type: ClassVar[type | tuple[type, ...]]  # defaults to the type of ``default``
    bounds: ClassVar[tuple[float | None, float | None]] = (None, None)  # inclusive validation range
    # A non-default value for the contract test, and the other knob values it needs to act.
    example: ClassVar[Any]
    example_with: ClassVar[dict[str, Any]] = {}
    affects_output: ClassVar[bool] = True  # False: changes cost, not results (threads): phase reuse keys
    # Within a phase, knobs apply in ascending ``order`` (stable): settings another knob of the
    # same phase reads (e.g. the pruning method read by model.layers_removed) go first.
    order: ClassVar[int] = 0

    # -- acting on what user code hands over (greenknobs.trial) ---------------------------------
    # Object kinds whose handover lets this knob's mechanism act (``trial.model(m)`` hands over a
    # "model"; also "tokenizer", "train_loader", "eval_loader", "optimizer", "training_args",
    # "epochs", "trainer"); ``watches``: kinds it only installs evidence hooks on.
    acts_on: ClassVar[tuple[str, ...]] = ()
    watches: ClassVar[tuple[str, ...]] = ()
    # Alternatives, each a set of kinds that together let the knob act *and* be verified; none met
    # by the end of ``needed_in`` (default: the knob's phase) fails the trial then, with ``needs_hint``.
    needs: ClassVar[tuple[tuple[str, ...], ...]] = ()
    needs_hint: ClassVar[str] = ""
    needed_in: ClassVar[str | None] = None
    # False on an instance: the mechanism is skipped while the setting and the evidence hooks stay
    # (the knob contract's mutant: verification must then fail).
    acting: bool = True
    # Some evidence needs the whole run (every epoch): a smoke run (a few steps) only checks it exists.
    judge_in_smoke: ClassVar[bool] = True

    # -- combinations (greenknobs.knobs.compat reads these) ----------------------------------------
    requires: ClassVar[Requires | None] = None
    conflicts: ClassVar[tuple[Conflict, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name and "phase" not in cls.__dict__ and not hasattr(cls, "phase"):
            prefix = name.split(".", 1)[0]
            if prefix in PHASES:
                cls.phase = prefix
        if "default" in cls.__dict__ and "value_type" not in cls.__dict__ and not hasattr(cls, "value_type"):
            cls.value_type = type(cls.default)

    # -- validation ------------------------------------------------------------------------
    def validate(self, value: Any, key: str) -> Any:
        """Return ``value`` normalised, or raise ConfigError naming ``key``."""
        vt = self.value_type
        if isinstance(value, bool) and vt is not bool and not (isinstance(vt, tuple) and bool in vt):
            raise ConfigError(key, f"expected {self._type_name()}, got {value!r}")
        if vt is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, vt):
            raise ConfigError(key, f"expected {self._type_name()}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(key, f"must be finite, got {value!r}")
        self.validate_value(value, key)
        return value

    def validate_value(self, value: Any, key: str) -> None:
        """Range checks: ``bounds`` for numbers, the built-in choices for everything else."""
        low, high = self.bounds
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (low is not None or high is not None):
            if (low is not None and value < low) or (high is not None and value > high):
                lo = "-inf" if low is None else f"{low:g}"
                hi = "inf" if high is None else f"{high:g}"
                raise ConfigError(key, f"must be in [{lo}, {hi}], got {value}")
            return
        if self.space.choices is not None and not isinstance(value, (int, float)) and value not in self.space.choices:
            raise ConfigError(key, f"{value!r} is not one of {list(self.space.choices)}")

    def _type_name(self) -> str:
        t = self.value_type
        return " or ".join(x.__name__ for x in t) if isinstance(t, tuple) else t.__name__

    # -- lifecycle -------------------------------------------------------------------------
    def check(self, value: Any, runtime: Runtime) -> None:
        """Raise IncompatibleKnobs if ``value`` cannot run on ``runtime``."""
        if value == self.default:
            return
        needs = self.value_devices.get(value, self.devices)
        if runtime.device not in needs:
            where = "a CUDA GPU" if needs == ("cuda",) else f"a {' or '.join(needs)} device"
            raise IncompatibleKnobs(f"{self.name}={value!r} needs {where}; this run is on {runtime.device}")

    def apply(self, ctx: TrialContext, value: Any) -> None:
        """A five-phase pipeline's hook (``ctx.apply_knobs()``): act on the context's objects. Knobs
        that act on handed-over objects (``handed``) or are read as settings need nothing here."""

    def handed(self, kind: str, obj: Any, value: Any, trial: Any) -> Any:
        """User code handed over ``obj`` (of ``kind``): act on it (when ``trial.may_act``) and install
        the evidence hooks. Return the object to use from now on, or None to keep ``obj``."""
        return None

    def phase_started(self, phase: str, value: Any, trial: Any) -> None:
        """A phase window opened (mechanisms that act at a phase: threads, int8 serving, autocast)."""

    def phase_ended(self, phase: str, value: Any, trial: Any) -> None:
        """A phase window is closing (undo what only that phase needed; read end-of-phase evidence)."""

    @abstractmethod
    def verify(self, ctx: TrialContext, value: Any) -> dict[str, Any]:
        """Return evidence that ``value`` took effect; raise KnobError if it did not."""

    def release(self, ctx: TrialContext, value: Any) -> None:
        """Give back what ``apply`` took from the machine. Called after every trial, even a failed one."""

    # -- helpers ---------------------------------------------------------------------------
    def expect(self, condition: bool, message: str) -> None:
        if not condition:
            raise KnobError(f"{self.name} did not take effect: {message}")

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "phase": self.phase,
            "default": self.default,
            "space": self.space.describe(),
            "devices": "/".join(self.devices),
            "verifies": self.verifies,
            "description": self.description,
            # what it acts on when code hands objects over ("-": a setting your code reads)
            "acts_on": ", ".join(self.acts_on) or ("-" if not self.watches else f"(watches {', '.join(self.watches)})"),
        }


class ObjectKnob(Knob):
    """A knob that acts itself on objects user code hands over, and proves it with typed evidence
    its own hooks recorded: ``evidence_type`` is a dataclass, ``ctx.evidence[name]`` its record.
    ``judge(value, evidence, ctx)`` returns None when the evidence shows the value took effect."""

    evidence_type: ClassVar[type]

    def verify(self, ctx: TrialContext, value: Any) -> dict[str, Any]:
        ev = ctx.evidence.get(self.name)
        if ev is None:
            hint = self.needs_hint or (self.needs[0][0] if self.needs else "its object")
            raise KnobError(f"{self.name} did not take effect: it never acted (it needs {hint})")
        trial = getattr(ctx, "trial", None)
        if getattr(trial, "smoke", False) and not self.judge_in_smoke:
            return {"smoke": "evidence recorded; not judged on a shortened run", **self.report(value, ev, ctx)}
        problem = self.judge(value, ev, ctx)
        if problem:
            raise KnobError(f"{self.name} did not take effect: {problem}")
        return self.report(value, ev, ctx)

    @abstractmethod
    def judge(self, value: Any, ev: Any, ctx: TrialContext) -> str | None:
        """None when ``ev`` proves ``value`` took effect, else the reason it does not."""

    def report(self, value: Any, ev: Any, ctx: TrialContext) -> dict[str, Any]:
        """The evidence logged with the trial (default: the whole record)."""
        from dataclasses import asdict

        return asdict(ev)


class SettingKnob(Knob):
    """A knob that chooses a setting and judges the evidence the mechanism reading it recorded.

    The mechanism reads the value (``trial.knob(name)``, or ``ctx.setting(name)`` in a five-phase
    pipeline) and records evidence under the keys ``evidence`` names (``trial.record(key, value)``);
    ``verify`` requires every key from ``ctx.observed`` and asks ``judge`` whether they show the
    value took effect. ``judge`` returns None when they do, else what is wrong.
    """

    evidence: ClassVar[tuple[str, ...]] = ()

    def verify(self, ctx: TrialContext, value: Any) -> dict[str, Any]:
        trial = getattr(ctx, "trial", None)
        missing = [key for key in self.evidence if key not in ctx.observed.values]
        if missing and trial is not None and not trial.asked(self.name):
            raise KnobError(f"{self.name} did not take effect: the code never read it (trial.knob({self.name!r})) "
                            f"and it acts on no object, so its mechanism must live in your code and record "
                            f"{', '.join(repr(k) for k in self.evidence)} (trial.record)")
        seen = {key: ctx.observed.require(key, self.name) for key in self.evidence}
        problem = self.judge(value, seen, ctx)
        if problem:
            raise KnobError(f"{self.name} did not take effect: {problem}")
        return self.report(value, seen, ctx)

    @abstractmethod
    def judge(self, value: Any, seen: dict[str, Any], ctx: TrialContext) -> str | None:
        """None when ``seen`` proves ``value`` took effect, else the reason it does not."""

    def report(self, value: Any, seen: dict[str, Any], ctx: TrialContext) -> dict[str, Any]:
        """The evidence logged with the trial (default: what was required)."""
        return seen


REGISTRY: dict[str, type[Knob]] = {}


def register(cls: type[Knob]) -> type[Knob]:
    """Register a knob class under its ``name`` (a class decorator)."""
    REGISTRY[cls.name] = cls
    return cls


PHASE_ORDER = {p: i for i, p in enumerate(PHASES)}
