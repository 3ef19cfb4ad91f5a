"""The Knob contract.

Lifecycle inside one trial (see ``greenknobs.pipeline.run_trial``):

1. ``check(value, runtime)`` — before anything runs. Raise ``IncompatibleKnobs`` when the value
   cannot work here (fp16 on a CPU, a power limit without a GPU): the trial is then recorded as
   infeasible with that reason and never starts.
2. ``apply(ctx, value)`` — inside the knob's phase, at the point the pipeline calls
   ``ctx.apply_knobs()`` (after the phase has loaded what the knob acts on, e.g. the model).
   Its cost is therefore counted in that phase's energy window.
3. ``verify(ctx, value) -> dict`` — after the whole trial. Reads back *evidence* that the value
   took effect (the layer count, the dtype seen in a forward pass, the optimizer's learning rate,
   the thread count) and returns it for logging. Raise ``KnobError`` when the evidence disagrees:
   a knob that silently did nothing fails the trial instead of polluting the front.

A knob's ``default`` is the untouched baseline: applying it must change nothing.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from greenknobs.errors import ConfigError, KnobError

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


@dataclass(frozen=True)
class KnobSetting:
    """A knob as an experiment uses it: its baseline value and, when searched, its space."""

    knob: "Knob"
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

    name: ClassVar[str]  # "phase.knob", e.g. "data.max_seq_len"
    phase: ClassVar[str]
    default: ClassVar[Any]
    space: ClassVar[Space]
    description: ClassVar[str]
    verifies: ClassVar[str]  # what ``verify`` reads back, in words
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    value_type: ClassVar[type | tuple[type, ...]] = object
    # Within a phase, knobs apply in ascending ``order`` (stable): settings that another knob of
    # the same phase reads (e.g. the pruning method read by model.layers_removed) go first.
    order: ClassVar[int] = 0

    # -- validation ------------------------------------------------------------------------
    def validate(self, value: Any, key: str) -> Any:
        """Return ``value`` normalised, or raise ConfigError naming ``key``."""
        if isinstance(value, bool) and self.value_type not in (bool, object):
            raise ConfigError(key, f"expected {self._type_name()}, got {value!r}")
        if self.value_type is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, self.value_type):
            raise ConfigError(key, f"expected {self._type_name()}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(key, f"must be finite, got {value!r}")
        self.validate_value(value, key)
        return value

    def validate_value(self, value: Any, key: str) -> None:
        """Knob-specific range checks; the built-in space's choices are the default rule."""
        if self.space.choices is not None and value not in self.space.choices:
            raise ConfigError(key, f"{value!r} is not one of {list(self.space.choices)}")

    def _type_name(self) -> str:
        t = self.value_type
        return " or ".join(x.__name__ for x in t) if isinstance(t, tuple) else t.__name__

    # -- lifecycle -------------------------------------------------------------------------
    def check(self, value: Any, runtime: "Runtime") -> None:
        """Raise IncompatibleKnobs if ``value`` cannot run on ``runtime``. Default: anything goes."""
        from greenknobs.errors import IncompatibleKnobs

        if runtime.device not in self.devices and value != self.default:
            raise IncompatibleKnobs(f"{self.name}={value!r} needs a {' or '.join(self.devices)} device; this run is on {runtime.device}")

    @abstractmethod
    def apply(self, ctx: "TrialContext", value: Any) -> None:
        """Make ``value`` take effect on the trial's context (model, data, settings, runtime)."""

    @abstractmethod
    def verify(self, ctx: "TrialContext", value: Any) -> dict[str, Any]:
        """Return evidence that ``value`` took effect; raise KnobError if it did not."""

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
        }


@dataclass
class Observations:
    """What the pipeline saw while running (read by ``Knob.verify``)."""

    values: dict[str, Any] = field(default_factory=dict)

    def record(self, key: str, value: Any) -> None:
        self.values[key] = value

    def record_max(self, key: str, value: float) -> None:
        self.values[key] = max(self.values.get(key, value), value)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def require(self, key: str, knob: str) -> Any:
        if key not in self.values:
            raise KnobError(f"{knob} did not take effect: the pipeline never recorded {key!r}")
        return self.values[key]


REGISTRY: dict[str, type[Knob]] = {}


def register(cls: type[Knob]) -> type[Knob]:
    """Register a knob class under its ``name`` (a class decorator)."""
    REGISTRY[cls.name] = cls
    return cls


def _phase_order() -> dict[str, int]:
    from greenknobs.phases import PHASES

    return {p: i for i, p in enumerate(PHASES)}


PHASE_ORDER = _phase_order()
