"""Experiment files (YAML) -> validated, frozen ``Experiment`` objects. The only module importing yaml.

Every problem raises ConfigError naming the dotted key, e.g. ``knobs.data.max_seq_len.choices``.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from greenknobs.errors import ConfigError
from greenknobs.knobs import get_knob, load_knob_class
from greenknobs.knobs.base import KnobSetting, Space
from greenknobs.meters import METERS
from greenknobs.phases import PHASES
from greenknobs.pipeline import pipeline_class

SAMPLERS = ("tpe", "nsga2", "random", "grid")
ENERGY_SCOPES = ("total", *PHASES, "inference_per_1k")
TOP_LEVEL = ("name", "description", "pipeline", "knobs", "objectives", "constraints", "budget", "sampler",
             "seed", "device", "meter", "carbon", "repeats", "storage", "mlflow_uri", "quick")
QUICK_KEYS = ("trials", "timeout_s", "pipeline")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Objectives:
    energy_scope: str = "total"  # see ENERGY_SCOPES
    quality_metric: str = "macro_f1"
    quality_direction: str = "maximize"


@dataclass(frozen=True)
class Constraints:
    min_quality_retained: float | None = 0.97  # fraction of the baseline's quality
    # quality must beat the trivial predictor by this margin: in the metric's units when it is
    # maximised (F1: +0.05), as a fraction when it is minimised (perplexity: 0.2 = 20 % below)
    beat_trivial_by: float | None = 0.05


@dataclass(frozen=True)
class MeterConfig:
    name: str = "auto"
    params: dict[str, Any] = field(default_factory=dict)  # backend parameters (e.g. cpu-model watts)
    idle_baseline_s: float = 0.0  # >0: measure idle power this long before the study (net vs gross)
    spread_warning: float = 0.10  # warn when repeats disagree by more than this fraction of the median


@dataclass(frozen=True)
class CarbonConfig:
    country_iso_code: str = "USA"  # 3-letter ISO code; intensity from CodeCarbon's offline data
    region: str | None = None
    pue: float = 1.0  # data-centre power usage effectiveness multiplier


@dataclass(frozen=True)
class Experiment:
    name: str
    pipeline: str
    pipeline_options: dict[str, Any]
    knobs: tuple[KnobSetting, ...]
    objectives: Objectives
    constraints: Constraints
    trials: int
    timeout_s: float | None
    sampler: str
    seed: int
    device: str
    meter: MeterConfig
    carbon: CarbonConfig
    repeats: int
    storage: str
    mlflow_uri: str
    description: str = ""
    quick: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def searched_knobs(self) -> tuple[KnobSetting, ...]:
        return tuple(k for k in self.knobs if k.searched)

    def baseline_values(self) -> dict[str, Any]:
        return {k.name: k.default for k in self.knobs}

    def quick_variant(self) -> Experiment:
        """The --quick budget: a subset of the data, few trials, its own study (never mixed with the full one)."""
        q = self.quick
        options = {**self.pipeline_options, **q.get("pipeline", {})}
        return replace(self, name=f"{self.name}-quick", trials=q.get("trials", 3),
                       timeout_s=q.get("timeout_s", self.timeout_s), pipeline_options=options)

    def with_overrides(self, trials: int | None = None, storage: str | None = None,
                       mlflow_uri: str | None = None) -> Experiment:
        return replace(self, trials=trials if trials is not None else self.trials,
                       storage=storage or self.storage, mlflow_uri=mlflow_uri or self.mlflow_uri)


# -- parsing helpers -------------------------------------------------------------------------
def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a mapping, got {type(value).__name__}")
    return value


def _reject_unknown(mapping: dict[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    for k in mapping:
        if k not in allowed:
            where = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(where, f"unknown key; expected one of: {', '.join(allowed)}")


def _number(value: Any, key: str, *, integer: bool = False, low: float | None = None,
            high: float | None = None, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise ConfigError(key, f"expected {'an integer' if integer else 'a number'}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        rng = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ConfigError(key, f"{value!r} is outside {rng}")
    return value


def _knob_setting(name: str, spec: Any) -> KnobSetting:
    key = f"knobs.{name}"
    if isinstance(spec, dict) and "class" in spec:
        load_knob_class(spec["class"], f"{key}.class")
        spec = {k: v for k, v in spec.items() if k != "class"}
        spec = spec or None
    knob = get_knob(name)
    if spec is None:  # listed with no body: search the built-in space from the built-in default
        return KnobSetting(knob, knob.default, knob.space)
    if not isinstance(spec, dict):  # a scalar: fixed at that value in every trial
        return KnobSetting(knob, knob.validate(spec, key), None)
    _reject_unknown(spec, ("default", "choices", "low", "high", "log", "step"), key)
    default = knob.validate(spec["default"], f"{key}.default") if "default" in spec else knob.default
    if "choices" in spec:
        if any(k in spec for k in ("low", "high", "log", "step")):
            raise ConfigError(key, "give either choices or low/high, not both")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{key}.choices", "expected a non-empty list")
        choices = tuple(knob.validate(c, f"{key}.choices") for c in choices)
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{key}.choices", "contains duplicates")
        space = Space(choices=choices)
    elif "low" in spec or "high" in spec:
        if "low" not in spec or "high" not in spec:
            raise ConfigError(key, "a range needs both low and high")
        integer = knob.value_type is int
        low = knob.validate(spec["low"], f"{key}.low")
        high = knob.validate(spec["high"], f"{key}.high")
        if low >= high:
            raise ConfigError(f"{key}.high", f"must be greater than low ({low})")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{key}.log", "expected true or false")
        if log and low <= 0:
            raise ConfigError(f"{key}.low", "a log range needs low > 0")
        step = _number(spec["step"], f"{key}.step", low=0, allow_none=True) if "step" in spec else None
        if step is not None and log:
            raise ConfigError(f"{key}.step", "step and log cannot be combined")
        space = Space(low=low, high=high, log=log, step=step, integer=integer)
    elif isinstance(knob.space, Space):
        space = knob.space
    if not space.contains(default):
        raise ConfigError(f"{key}.default", f"baseline {default!r} lies outside the space {space.describe()}")
    return KnobSetting(knob, default, space)


def _objectives(raw: Any, pipeline_cls) -> Objectives:
    raw = _mapping(raw, "objectives")
    _reject_unknown(raw, ("energy", "quality"), "objectives")
    scope = raw.get("energy", "total")
    if isinstance(scope, dict):
        _reject_unknown(scope, ("scope",), "objectives.energy")
        scope = scope.get("scope", "total")
    if scope not in ENERGY_SCOPES:
        raise ConfigError("objectives.energy", f"{scope!r} is not one of {', '.join(ENERGY_SCOPES)}")
    quality = raw.get("quality", pipeline_cls.default_metric)
    direction = None
    if isinstance(quality, dict):
        _reject_unknown(quality, ("metric", "direction"), "objectives.quality")
        direction = quality.get("direction")
        quality = quality.get("metric", pipeline_cls.default_metric)
    if quality not in pipeline_cls.metrics:
        raise ConfigError("objectives.quality", f"{quality!r} is not a metric of pipeline {pipeline_cls.name!r} "
                                                f"({', '.join(pipeline_cls.metrics)})")
    direction = direction or pipeline_cls.metrics[quality]
    if direction not in ("maximize", "minimize"):
        raise ConfigError("objectives.quality.direction", "expected maximize or minimize")
    return Objectives(scope, quality, direction)


def _constraints(raw: Any, objectives: Objectives) -> Constraints:
    raw = _mapping(raw, "constraints")
    _reject_unknown(raw, ("min_quality_retained", "beat_trivial_by"), "constraints")
    d = Constraints()
    return Constraints(
        _number(raw.get("min_quality_retained", d.min_quality_retained), "constraints.min_quality_retained",
                low=0, high=1, allow_none=True),
        _number(raw.get("beat_trivial_by", d.beat_trivial_by), "constraints.beat_trivial_by", low=0,
                high=0.99 if objectives.quality_direction == "minimize" else None, allow_none=True),
    )


def parse_experiment(raw: Any, source: str = "<memory>") -> Experiment:
    if not isinstance(raw, dict):
        raise ConfigError("", f"{source}: an experiment file must be a YAML mapping")
    _reject_unknown(raw, TOP_LEVEL, "")
    raw = copy.deepcopy(raw)

    name = raw.get("name") or Path(source).stem
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError("name", f"expected letters, digits, '-', '_' or '.', got {name!r}")

    pipe = _mapping(raw.get("pipeline"), "pipeline")
    if "name" not in pipe:
        raise ConfigError("pipeline.name", "required (e.g. text-classification)")
    pipeline_cls = pipeline_class(pipe["name"])
    options = pipeline_cls.validate_options({k: v for k, v in pipe.items() if k != "name"})

    knobs_raw = _mapping(raw.get("knobs"), "knobs")
    settings = {}
    for knob_name, spec in knobs_raw.items():
        s = _knob_setting(str(knob_name), spec)
        if s.name not in pipeline_cls.knobs:
            raise ConfigError(f"knobs.{knob_name}", f"not supported by pipeline {pipeline_cls.name!r}")
        settings[s.name] = s
    for knob_name in pipeline_cls.knobs:  # every knob the pipeline honours runs, at its baseline if unlisted
        if knob_name not in settings:
            knob = get_knob(knob_name)
            settings[knob_name] = KnobSetting(knob, knob.default, None)
    if not any(s.searched for s in settings.values()):
        raise ConfigError("knobs", "no knob to search: give at least one knob a space")

    objectives = _objectives(raw.get("objectives"), pipeline_cls)
    budget = _mapping(raw.get("budget"), "budget")
    _reject_unknown(budget, ("trials", "timeout_s"), "budget")
    trials = _number(budget.get("trials", 12), "budget.trials", integer=True, low=1)
    timeout_s = _number(budget.get("timeout_s"), "budget.timeout_s", low=1, allow_none=True)

    sampler = raw.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise ConfigError("sampler", f"{sampler!r} is not one of {', '.join(SAMPLERS)}")
    seed = _number(raw.get("seed", 42), "seed", integer=True, low=0)
    device = raw.get("device", "auto")
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError("device", f"expected auto, cpu or cuda, got {device!r}")

    meter_raw = raw.get("meter", "auto")
    if isinstance(meter_raw, str):
        meter = MeterConfig(meter_raw)
    else:
        meter_raw = _mapping(meter_raw, "meter")
        _reject_unknown(meter_raw, ("name", "params", "idle_baseline_s", "spread_warning"), "meter")
        meter = MeterConfig(
            meter_raw.get("name", "auto"), _mapping(meter_raw.get("params"), "meter.params"),
            float(_number(meter_raw.get("idle_baseline_s", 0.0), "meter.idle_baseline_s", low=0, high=600)),
            float(_number(meter_raw.get("spread_warning", 0.10), "meter.spread_warning", low=0, high=10)))
    if meter.name != "auto" and meter.name not in METERS:
        raise ConfigError("meter.name", f"unknown meter {meter.name!r}; known: auto, {', '.join(METERS)}")

    carbon_raw = _mapping(raw.get("carbon"), "carbon")
    _reject_unknown(carbon_raw, ("country_iso_code", "region", "pue"), "carbon")
    country = carbon_raw.get("country_iso_code", "USA")
    if not (isinstance(country, str) and len(country) == 3 and country.isalpha()):
        raise ConfigError("carbon.country_iso_code", f"expected a 3-letter ISO code such as GBR, got {country!r}")
    carbon = CarbonConfig(country.upper(), carbon_raw.get("region"),
                          float(_number(carbon_raw.get("pue", 1.0), "carbon.pue", low=1.0, high=3.0)))

    repeats = _number(raw.get("repeats", 1), "repeats", integer=True, low=1, high=20)
    storage = raw.get("storage", f"sqlite:///runs/{name}/optuna.db")
    if not isinstance(storage, str) or "://" not in storage:
        raise ConfigError("storage", f"expected a database URL such as sqlite:///runs/x.db, got {storage!r}")
    mlflow_uri = raw.get("mlflow_uri", f"sqlite:///runs/{name}/mlflow.db")
    if not isinstance(mlflow_uri, str) or not mlflow_uri:
        raise ConfigError("mlflow_uri", "expected a tracking URI")

    quick = _mapping(raw.get("quick"), "quick")
    _reject_unknown(quick, QUICK_KEYS, "quick")
    if "trials" in quick:
        _number(quick["trials"], "quick.trials", integer=True, low=1)
    if "pipeline" in quick:
        pipeline_cls.validate_options({**options, **_mapping(quick["pipeline"], "quick.pipeline")})

    return Experiment(
        name=name, pipeline=pipe["name"], pipeline_options=options,
        knobs=tuple(settings[n] for n in sorted(settings, key=lambda n: (PHASES.index(settings[n].knob.phase), n))),
        objectives=objectives, constraints=_constraints(raw.get("constraints"), objectives),
        trials=trials, timeout_s=timeout_s, sampler=sampler, seed=seed, device=device, meter=meter, carbon=carbon,
        repeats=repeats, storage=storage, mlflow_uri=mlflow_uri, description=str(raw.get("description", "")),
        quick=quick, source=source,
    )


def load_experiment(path: str | Path) -> Experiment:
    p = Path(path)
    if not p.is_file():
        raise ConfigError("", f"no such experiment file: {path}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError("", f"{path}: not valid YAML{where}: {problem}") from None
    return parse_experiment(raw, str(p))


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False)
