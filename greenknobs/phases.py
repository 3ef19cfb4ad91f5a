"""The five pipeline phases and the per-phase / per-trial result types.

Units live in names: ``energy_j`` is joules, ``time_s`` is seconds. Every energy figure carries
its provenance: ``measured`` (a hardware counter) or ``modelled`` (an estimate; the model and
its parameters are named in ``meter_params``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from greenknobs.units import grams_per_phase

# Execution order. "system" runs before "training" because it configures the runtime
# (threads, batch sizes, compilation) that training and inference then use; its window
# measures what that configuration itself costs.
PHASES: tuple[str, ...] = ("data", "model", "system", "training", "inference")

# Quality is scored on two splits: the search optimises and constrains on VALIDATION only; TEST
# is held out -- scored in every trial, reported everywhere, never read by the sampler.
VALIDATION, TEST = "validation", "test"
SPLITS = (VALIDATION, TEST)

MEASURED = "measured"
MODELLED = "modelled"


def combine_provenance(provenances: list[str]) -> str:
    """A total is only *measured* if every part of it was; any modelled part makes it modelled."""
    return MEASURED if provenances and all(p == MEASURED for p in provenances) else MODELLED


@dataclass(frozen=True)
class Availability:
    """Whether a backend (a meter, a device interface) can run on this machine, and if not, why."""

    available: bool
    reason: str = ""


@dataclass(frozen=True)
class Measurement:
    """Energy and time of one meter window.

    components: per hardware component (``cpu``, ``gpu``, ``dram``, ``ram``) -> {"energy_j", "provenance"}.
    """

    energy_j: float
    time_s: float
    provenance: str
    meter: str
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    meter_params: dict[str, Any] = field(default_factory=dict)
    spread_j: float = 0.0  # max - min over repeats; 0 for a single run
    repeats: int = 1

    @property
    def avg_power_w(self) -> float:
        return self.energy_j / self.time_s if self.time_s > 0 else 0.0

    def without(self, parts: list[Measurement]) -> Measurement:
        """This window minus nested windows charged elsewhere (e.g. the search's own progress check)."""
        comps = {k: {**v, "energy_j": v["energy_j"] - sum(p.components.get(k, {}).get("energy_j", 0.0) for p in parts)}
                 for k, v in self.components.items()}
        return replace(self, energy_j=self.energy_j - sum(p.energy_j for p in parts),
                       time_s=self.time_s - sum(p.time_s for p in parts), components=comps)

    def label(self) -> str:
        """One line that never shows a figure without its meter, provenance and model parameters."""
        params = ", ".join(f"{k}={v}" for k, v in self.meter_params.items())
        spread = f" ±{self.spread_j / 2:.3g} (n={self.repeats})" if self.repeats > 1 else ""
        return f"{self.energy_j:.4g} J{spread} {self.provenance} by {self.meter}" + (f" [{params}]" if params else "")


@dataclass
class PhaseResult:
    phase: str
    measurement: Measurement
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def energy_j(self) -> float:
        return self.measurement.energy_j

    @property
    def time_s(self) -> float:
        return self.measurement.time_s


@dataclass
class TrialResult:
    """Everything one trial produced: per-phase energy, quality, sample counts, knob evidence."""

    knob_values: dict[str, Any]
    phases: dict[str, PhaseResult]
    quality: dict[str, dict[str, float]]  # split (validation, test) -> metric -> value
    samples: dict[str, int]
    verifications: dict[str, dict[str, Any]]
    # idle power measured before the study: {"watts", "seconds", "meter", "provenance", "meter_params"};
    # None = no idle baseline, net energy not reported
    idle_power: dict[str, Any] | None = None
    # {"g_per_kwh": float, "source": str, "pue": float}; None = no carbon figures
    carbon_intensity: dict[str, Any] | None = None
    process_state: dict[str, Any] = field(default_factory=dict)  # what was reset before the trial, and the state then
    reuse: dict[str, Any] = field(default_factory=dict)  # phase-output reuse: off | built | reused (load, publish J)
    # the held-out window (the test split scored): measured and reported, never part of the objective
    held_out: PhaseResult | None = None
    # what frameworks wrote in the trial's folder (checkpoints): {"dir", "files", "bytes", "kept"}
    artifacts: dict[str, Any] = field(default_factory=dict)
    # the data files and model folders the trial read -> content digest (greenknobs.fingerprint)
    inputs: dict[str, str | None] = field(default_factory=dict)
    # the search's safeguards this code lets act (trivial guard, hopeless stop, phase reuse), in words
    safeguards: dict[str, str] = field(default_factory=dict)
    # serving energy at steady state (greenknobs.meters.steady): J per 1,000 predictions, spread, latency;
    # None when not measured (then inference_per_1k is the scoring window's energy per prediction)
    serving: dict[str, Any] | None = None

    @property
    def energy_j(self) -> float:
        return sum(p.energy_j for p in self.phases.values())

    @property
    def time_s(self) -> float:
        return sum(p.time_s for p in self.phases.values())

    @property
    def provenance(self) -> str:
        return combine_provenance([p.measurement.provenance for p in self.phases.values()])

    @property
    def meter(self) -> str:
        names = sorted({p.measurement.meter for p in self.phases.values()})
        return "+".join(names)

    @property
    def meter_params(self) -> dict[str, Any]:
        """Model parameters behind the figures, per meter label (one meter per trial in practice)."""
        return {p.measurement.meter: p.measurement.meter_params for p in self.phases.values()}

    def net_energy_j(self) -> dict[str, float] | None:
        """Per phase and ``total``: gross minus idle power x time; None without an idle baseline."""
        if self.idle_power is None:
            return None
        watts = self.idle_power["watts"]
        out = {n: p.energy_j - watts * p.time_s for n, p in self.phases.items()}
        out["total"] = sum(out.values())
        return out

    def carbon_g(self) -> dict[str, float] | None:
        """Grams CO2e per phase and ``total`` from gross energy; None without a carbon intensity."""
        c = self.carbon_intensity
        if c is None:
            return None
        return grams_per_phase({n: p.energy_j for n, p in self.phases.items()}, c["g_per_kwh"], c.get("pue", 1.0))

    def energy_for_scope(self, scope: str) -> float:
        """Energy (J) of an objective scope: ``total``, a phase name, or ``inference_per_1k``."""
        if scope == "total":
            return self.energy_j
        if scope == "inference_per_1k":
            if self.serving is not None:  # steady state: warm-up excluded, median of several windows
                return float(self.serving["j_per_1k"])
            n = max(self.samples.get("inference", 0), 1)
            return self.phases["inference"].energy_j * 1000.0 / n
        return self.phases[scope].energy_j

    def to_dict(self) -> dict[str, Any]:
        return {
            "knob_values": self.knob_values,
            "energy_j": self.energy_j,
            "time_s": self.time_s,
            "provenance": self.provenance,
            "meter": self.meter,
            "meter_params": self.meter_params,
            "idle_power": self.idle_power,
            "process_state": self.process_state,
            "reuse": self.reuse,
            "net_energy_j": self.net_energy_j(),
            "carbon": None if self.carbon_intensity is None else {**self.carbon_intensity, "g": self.carbon_g()},
            "phases": {
                name: {**asdict(p.measurement), "details": p.details} for name, p in self.phases.items()
            },
            "held_out": None if self.held_out is None else {**asdict(self.held_out.measurement),
                                                             "details": self.held_out.details},
            "artifacts": self.artifacts,
            "inputs": self.inputs,
            "safeguards": self.safeguards,
            "serving": self.serving,
            "quality": self.quality,
            "samples": self.samples,
            "verifications": self.verifications,
        }
