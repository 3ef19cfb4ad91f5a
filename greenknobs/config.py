"""Experiment files (YAML) -> validated, frozen ``Experiment`` objects. The only module importing yaml.

Every problem raises ConfigError naming the dotted key, e.g. ``knobs.data.max_seq_len.choices``.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
import reprlib
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from greenknobs.errors import ConfigError
from greenknobs.knobs import get_knob, load_knob_class
from greenknobs.knobs.base import KnobSetting, Space
from greenknobs.meters import METERS
from greenknobs.meters.composite import GPU_METERS
from greenknobs.meters.cpu_model import DEFAULT_PARAMS as CPU_MODEL_PARAMS
from greenknobs.meters.steady import ServingConfig
from greenknobs.phases import PHASES
from greenknobs.pipeline import FUNCTION, FunctionPipeline, Pipeline, pipeline_class

SAMPLERS = ("tpe", "nsga2", "gp", "random", "grid")
ENERGY_SCOPES = ("total", *PHASES, "inference_per_1k")
TOP_LEVEL = ("name", "description", "pipeline", "knobs", "objectives", "constraints", "budget", "sampler",
             "seed", "device", "meter", "carbon", "repeats", "storage", "mlflow_uri", "quick", "reuse", "stop_hopeless",
             "report", "artifacts", "cost_aware", "warm_start", "serving")
QUICK_KEYS = ("trials", "timeout_s", "energy_j", "pipeline")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
CLASS_PATH_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")  # package.module:ClassName

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60
_short.maxlist = _short.maxdict = _short.maxtuple = 4


def shown(value: Any) -> str:
    """``repr(value)`` cut short, so an error message stays one readable line whatever the input."""
    return _short.repr(value)


def key_part(k: Any) -> str:
    """A mapping key as it appears in a dotted key: itself when it is printable text, else its short repr."""
    return k if isinstance(k, str) and k.isprintable() and 0 < len(k) <= 80 else shown(k)


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
class Reuse:
    """Phase-output reuse (greenknobs/phase_store.py): a trial whose data, model and training
    would repeat an earlier trial's takes its trained state and runs only system and inference."""

    enabled: bool = True
    inference_variants: int = 1  # after a feasible trial trains a new model: variants of its inference knobs to queue
    max_gb: float = 2.0  # the store's size bound (least recently used entries go first)


@dataclass(frozen=True)
class StopHopeless:
    """Stop a trial whose validation quality is still at the trivial model's level partway through
    training: it cannot meet the quality floor (Optuna PRUNED; its energy still counts).
    ``below_floor``: also stop one that is too far below the floor to reach it, judged by the
    largest gain any completed trial of the study made over the rest of its training."""

    enabled: bool = True
    at_fraction: float = 0.5  # of the planned training steps
    below_floor: bool = True
    # multi-objective successive halving: at each rung (a fraction of the planned training steps) a
    # trial is scored on validation and stopped if, even with the largest gain completed trials made
    # from that rung to the end, a completed feasible trial predicted no costlier would still beat it
    rungs: tuple[float, ...] = (0.25, 0.5)
    # a candidate predicted (less the energy model's error) dearer than the most accurate feasible
    # trial is not started: it could reach the front only by beating every quality seen so far
    before_start: bool = True


@dataclass(frozen=True)
class Deployment:
    """``report: {retrains_per_month, predictions_per_month}``: the deployment the payback is stated
    for (months until the training and prediction savings repay the search). Empty: the report's
    defaults (report.analysis.DEFAULT_DEPLOYMENT), said so."""

    stated: dict[str, float] = field(default_factory=dict)


def _deployment(raw: Any) -> Deployment:
    raw = _mapping(raw, "report")
    _reject_unknown(raw, ("retrains_per_month", "predictions_per_month"), "report")
    return Deployment({k: float(_number(v, f"report.{k}", low=0, high=1e15)) for k, v in raw.items()})


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
    energy_budget_j: float | None = None  # stop when the search has spent this much (trials, warm-ups, failures)
    reuse: Reuse = field(default_factory=Reuse)
    stop_hopeless: StopHopeless = field(default_factory=StopHopeless)
    deployment: Deployment = field(default_factory=Deployment)
    keep_artifacts: bool = False  # artifacts: {keep: true} keeps what frameworks write in a trial (checkpoints)
    accept_changes: bool = False  # --accept-changes: continue a study whose data, code or libraries changed
    # TPE weighs its candidates by expected improvement per predicted joule (the energy model)
    cost_aware: bool = True
    # earlier studies whose trials inform the sampler and the energy model: quick, isolation, or a name
    warm_start: tuple[str, ...] = ()
    serving: ServingConfig = field(default_factory=ServingConfig)  # steady-state serving energy (meters.steady)

    def serving_to_measure(self) -> ServingConfig | None:
        """The steady-state serving measurement each trial runs, or None (serving.measure, else the scope)."""
        return self.serving if self.serving.wanted(self.objectives.energy_scope) else None

    @property
    def searched_knobs(self) -> tuple[KnobSetting, ...]:
        return tuple(k for k in self.knobs if k.searched)

    def baseline_values(self) -> dict[str, Any]:
        return {k.name: k.default for k in self.knobs}

    def fixed_settings(self) -> dict[str, Any]:
        """Knobs the experiment fixes at a value other than the catalog's default: a recommended
        configuration is reproducible only with them."""
        return {k.name: k.default for k in self.knobs if not k.searched and repr(k.default) != repr(k.knob.default)}

    @property
    def results_dir(self) -> Path:
        """Where the study's files go: the front, the report, the phase-output store."""
        return Path("runs") / self.name

    def quick_variant(self) -> Experiment:
        """The --quick budget: a subset of the data, few trials, its own study (never mixed with the full one)."""
        q = self.quick
        options = {**self.pipeline_options, **q.get("pipeline", {})}
        return replace(self, name=f"{self.name}-quick", trials=q.get("trials", 3),
                       timeout_s=q.get("timeout_s", self.timeout_s), pipeline_options=options,
                       energy_budget_j=q.get("energy_j", self.energy_budget_j))

    def with_overrides(self, trials: int | None = None, storage: str | None = None,
                       mlflow_uri: str | None = None, accept_changes: bool | None = None,
                       warm_start: list[str] | None = None) -> Experiment:
        return replace(self, trials=trials if trials is not None else self.trials,
                       warm_start=tuple(warm_start) if warm_start else self.warm_start,
                       storage=storage or self.storage, mlflow_uri=mlflow_uri or self.mlflow_uri,
                       accept_changes=self.accept_changes if accept_changes is None else accept_changes)

    @property
    def artifacts_dir(self) -> Path:
        """Where frameworks write a trial's artefacts (one folder per trial; removed unless kept)."""
        return self.results_dir / "trials"


# -- parsing helpers -------------------------------------------------------------------------
def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a mapping, got {type(value).__name__} {shown(value)}")
    return value


def _string(value: Any, key: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"expected {what}, got {shown(value)}")
    return value


def _reject_unknown(mapping: dict[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    for k in mapping:
        if k not in allowed:
            where = f"{prefix}.{key_part(k)}" if prefix else key_part(k)
            raise ConfigError(where, f"unknown key; expected one of: {', '.join(allowed)}")


def _number(value: Any, key: str, *, integer: bool = False, low: float | None = None,
            high: float | None = None, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise ConfigError(key, f"expected {'an integer' if integer else 'a number'}, got {shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(key, f"expected a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        rng = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ConfigError(key, f"{shown(value)} is outside {rng}")
    return value


def _knob_setting(name: str, spec: Any) -> KnobSetting:
    key = f"knobs.{name}"
    if isinstance(spec, dict) and "class" in spec:
        if not isinstance(spec["class"], str) or not CLASS_PATH_RE.fullmatch(spec["class"]):
            raise ConfigError(f"{key}.class", f"expected 'package.module:ClassName', got {shown(spec['class'])}")
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
        for bound, end in ((low, "low"), (high, "high")):
            if isinstance(bound, bool) or not isinstance(bound, (int, float)):
                raise ConfigError(f"{key}.{end}", f"{name} takes choices, not a numeric range (got {shown(bound)})")
        if low >= high:
            raise ConfigError(f"{key}.high", f"must be greater than low ({low})")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{key}.log", "expected true or false")
        if log and low <= 0:
            raise ConfigError(f"{key}.low", "a log range needs low > 0")
        step = _number(spec["step"], f"{key}.step", integer=integer, low=0, allow_none=True) if "step" in spec else None
        if step is not None and step <= 0:
            raise ConfigError(f"{key}.step", f"must be greater than 0, got {step!r}")
        if step is not None and log:
            raise ConfigError(f"{key}.step", "step and log cannot be combined")
        space = Space(low=low, high=high, log=log, step=step, integer=integer)
    elif isinstance(knob.space, Space):
        space = knob.space
    else:
        raise ConfigError(key, "give the space to search: choices, or low and high")
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
    if not isinstance(scope, str) or scope not in ENERGY_SCOPES:
        raise ConfigError("objectives.energy", f"{shown(scope)} is not one of {', '.join(ENERGY_SCOPES)}")
    quality = raw.get("quality", pipeline_cls.default_metric)
    direction = None
    if isinstance(quality, dict):
        _reject_unknown(quality, ("metric", "direction"), "objectives.quality")
        direction = quality.get("direction")
        quality = quality.get("metric", pipeline_cls.default_metric)
    if getattr(pipeline_cls, "any_knob", False):  # your own code: any metric it reports
        if not isinstance(quality, str) or not NAME_RE.fullmatch(quality):
            raise ConfigError("objectives.quality", f"expected the name of a metric your code reports, got {shown(quality)}")
        direction = direction if direction is not None else metric_direction(quality)
    else:
        if not isinstance(quality, str) or quality not in pipeline_cls.metrics:
            raise ConfigError("objectives.quality", f"{shown(quality)} is not a metric of pipeline {pipeline_cls.name!r} "
                                                    f"({', '.join(pipeline_cls.metrics)})")
        direction = direction if direction is not None else pipeline_cls.metrics[quality]
    if not isinstance(direction, str) or direction not in ("maximize", "minimize"):
        raise ConfigError("objectives.quality.direction", "expected maximize or minimize")
    return Objectives(scope, quality, direction)


# metrics whose direction needs no saying; any other must name it (objectives.quality.direction)
_MAXIMISED = ("f1", "accuracy", "acc", "auc", "roc_auc", "r2", "precision", "recall", "bleu", "rouge", "map", "ndcg")
_MINIMISED = ("loss", "rmse", "mse", "mae", "perplexity", "error", "wer", "cer")


def metric_direction(metric: str) -> str:
    """maximize or minimize, from a metric's name (macro_f1, val_accuracy, rmse, eval_loss, ...)."""
    words = metric.lower().replace("-", "_").split("_")
    if any(w in _MINIMISED for w in words):
        return "minimize"
    if any(w in _MAXIMISED for w in words):
        return "maximize"
    raise ConfigError("objectives.quality.direction", f"say whether {metric!r} is maximised or minimised "
                                                       "(quality: {metric: ..., direction: maximize|minimize})")


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


def _meter(raw: Any) -> MeterConfig:
    if isinstance(raw, str):
        raw = {"name": raw}
    raw = _mapping(raw, "meter")
    _reject_unknown(raw, ("name", "params", "idle_baseline_s", "spread_warning"), "meter")
    name = raw.get("name", "auto")
    if not isinstance(name, str):
        raise ConfigError("meter.name", f"unknown meter {shown(name)}; known: auto, {', '.join(METERS)}")
    from greenknobs.meters import meter_type  # a registered name or a user's module:Class (meters/registry.py)

    meter_cls = None if name == "auto" else meter_type(name)  # one line naming meter.name if it does not load
    params = _mapping(raw.get("params"), "meter.params")
    if name in ("auto", "cpu-model", "composite"):  # the cpu-model's parameters (also a composite's CPU part)
        allowed = tuple(CPU_MODEL_PARAMS) if name == "cpu-model" else (*CPU_MODEL_PARAMS, "gpu")
        _reject_unknown(params, allowed, "meter.params")
        for k, v in params.items():
            if k == "gpu":
                if not isinstance(v, str) or v not in ("auto", *GPU_METERS):
                    raise ConfigError("meter.params.gpu", f"expected auto, {' or '.join(GPU_METERS)}, got {shown(v)}")
            else:
                _number(v, f"meter.params.{k}", low=0)
    else:  # another backend (a user's too): its constructor's keyword arguments
        assert meter_cls is not None
        signature = inspect.signature(meter_cls.__init__).parameters.values()
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature):
            _reject_unknown(params, tuple(p.name for p in signature if p.name != "self"), "meter.params")
    return MeterConfig(
        name, params,
        float(_number(raw.get("idle_baseline_s", 0.0), "meter.idle_baseline_s", low=0, high=600)),
        float(_number(raw.get("spread_warning", 0.10), "meter.spread_warning", low=0, high=10)))


def parse_experiment(raw: Any, source: str = "<memory>") -> Experiment:
    if not isinstance(raw, dict):
        raise ConfigError("", f"{source}: an experiment file must be a YAML mapping")
    _reject_unknown(raw, TOP_LEVEL, "")
    raw = copy.deepcopy(raw)

    name = raw.get("name")
    if name is None or name == "":
        name = Path(source).stem
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ConfigError("name", f"expected letters, digits, '-', '_' or '.', got {shown(name)}")

    pipe = _mapping(raw.get("pipeline"), "pipeline")
    # the experiment's own folder is importable: its pipeline, function and knob modules live beside it
    folder = str(Path(source).resolve().parent) if source != "<memory>" else None
    if folder and folder not in sys.path:
        sys.path.insert(0, folder)
    if "function" in pipe or "script" in pipe:  # your own code: a function of a trial, or a script
        pipe_name = FUNCTION
        pipeline_cls: type[Pipeline] = FunctionPipeline
        options = FunctionPipeline.validate_options({**{k: v for k, v in pipe.items()}, **({"folder": folder} if folder else {})})
    else:
        if "name" not in pipe:
            raise ConfigError("pipeline", "give your code (function: module:fn, or script: train.py) or a pipeline "
                                          "name (name: text-classification)")
        pipe_name = _string(pipe["name"], "pipeline.name", "a pipeline name (e.g. text-classification) or module:Class")
        if ":" in pipe_name and not CLASS_PATH_RE.fullmatch(pipe_name):
            raise ConfigError("pipeline.name", f"expected 'package.module:ClassName', got {shown(pipe_name)}")
        pipeline_cls = pipeline_class(pipe_name)
        options = pipeline_cls.validate_options({k: v for k, v in pipe.items() if k != "name"})

    knobs_raw = _mapping(raw.get("knobs"), "knobs")
    settings = {}
    for knob_name, spec in knobs_raw.items():
        if key_part(knob_name) != knob_name:
            raise ConfigError(f"knobs.{key_part(knob_name)}", "not a knob name (e.g. data.max_seq_len)")
        s = _knob_setting(knob_name, spec)
        if not getattr(pipeline_cls, "any_knob", False) and s.name not in pipeline_cls.knobs:
            raise ConfigError(f"knobs.{knob_name}", f"not supported by pipeline {pipeline_cls.name!r}")
        settings[s.name] = s
    for knob_name in pipeline_cls.knobs:  # every knob the pipeline honours runs, at its baseline if unlisted
        if knob_name not in settings:
            knob = get_knob(knob_name)
            settings[knob_name] = KnobSetting(knob, knob.default, None)

    objectives = _objectives(raw.get("objectives"), pipeline_cls)
    if pipeline_cls is FunctionPipeline:  # the code's quality metric and its direction, as the experiment names them
        options = {**options, "metric": objectives.quality_metric, "direction": objectives.quality_direction}
    budget = _mapping(raw.get("budget"), "budget")
    _reject_unknown(budget, ("trials", "timeout_s", "energy_j"), "budget")
    trials = _number(budget.get("trials", 12), "budget.trials", integer=True, low=1)
    if not any(s.searched for s in settings.values()):
        trials = 1  # nothing to search: the study is the baseline, measured once
    timeout_s = _number(budget.get("timeout_s"), "budget.timeout_s", low=1, allow_none=True)
    energy_budget_j = _number(budget.get("energy_j"), "budget.energy_j", low=1, allow_none=True)
    reuse = _reuse(raw.get("reuse"))
    # a grid is a request to measure every point: no candidate is refused on a prediction unless asked
    stop_hopeless = _stop_hopeless(raw.get("stop_hopeless"), before_start=raw.get("sampler", "tpe") != "grid")

    sampler = raw.get("sampler", "tpe")
    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        raise ConfigError("sampler", f"{shown(sampler)} is not one of {', '.join(SAMPLERS)}")
    cost_aware = raw.get("cost_aware", True)
    if not isinstance(cost_aware, bool):
        raise ConfigError("cost_aware", f"expected true or false, got {shown(cost_aware)}")
    warm_start = _warm_start(raw.get("warm_start", []))
    seed = _number(raw.get("seed", 42), "seed", integer=True, low=0, high=2**32 - 1)
    device = raw.get("device", "auto")
    if not isinstance(device, str) or device not in ("auto", "cpu", "cuda"):
        raise ConfigError("device", f"expected auto, cpu or cuda, got {shown(device)}")

    meter = _meter(raw.get("meter", "auto"))

    carbon_raw = _mapping(raw.get("carbon"), "carbon")
    _reject_unknown(carbon_raw, ("country_iso_code", "region", "pue"), "carbon")
    country = carbon_raw.get("country_iso_code", "USA")
    if not (isinstance(country, str) and len(country) == 3 and country.isascii() and country.isalpha()):
        raise ConfigError("carbon.country_iso_code", f"expected a 3-letter ISO code such as GBR, got {shown(country)}")
    region = carbon_raw.get("region")
    if region is not None:
        _string(region, "carbon.region", "a region name (e.g. california) or null")
    carbon = CarbonConfig(country.upper(), region,
                          float(_number(carbon_raw.get("pue", 1.0), "carbon.pue", low=1.0, high=3.0)))

    repeats = _number(raw.get("repeats", 1), "repeats", integer=True, low=1, high=20)
    storage = raw.get("storage", f"sqlite:///runs/{name}/optuna.db")
    if not isinstance(storage, str) or not re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", storage):
        got = shown(re.sub(r":[^:@/\s]*@", ":***@", storage) if isinstance(storage, str) else storage)  # no password shown
        raise ConfigError("storage", f"expected a database URL such as sqlite:///runs/x.db, got {got}")
    mlflow_uri = raw.get("mlflow_uri", f"sqlite:///runs/{name}/mlflow.db")
    _string(mlflow_uri, "mlflow_uri", "a tracking URI (sqlite:///runs/x/mlflow.db, http://host:5000)")
    description = raw.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, (str, int, float)) or isinstance(description, bool):
        raise ConfigError("description", f"expected text, got {type(description).__name__}")

    quick = _mapping(raw.get("quick"), "quick")
    _reject_unknown(quick, QUICK_KEYS, "quick")
    if "trials" in quick:
        _number(quick["trials"], "quick.trials", integer=True, low=1)
    if "timeout_s" in quick:
        _number(quick["timeout_s"], "quick.timeout_s", low=1, allow_none=True)
    if "energy_j" in quick:
        _number(quick["energy_j"], "quick.energy_j", low=1, allow_none=True)
    if "pipeline" in quick:
        pipeline_cls.validate_options({**options, **_mapping(quick["pipeline"], "quick.pipeline")})

    return Experiment(
        name=name, pipeline=pipe_name, pipeline_options=options,
        knobs=tuple(settings[n] for n in sorted(settings, key=lambda n: (PHASES.index(settings[n].knob.phase), n))),
        objectives=objectives, constraints=_constraints(raw.get("constraints"), objectives),
        trials=trials, timeout_s=timeout_s, sampler=sampler, seed=seed, device=device, meter=meter, carbon=carbon,
        repeats=repeats, storage=storage, mlflow_uri=mlflow_uri, description=str(description),
        quick=quick, source=source, energy_budget_j=energy_budget_j, reuse=reuse, stop_hopeless=stop_hopeless,
        deployment=_deployment(raw.get("report")),
        keep_artifacts=_artifacts(raw.get("artifacts")), cost_aware=cost_aware, warm_start=warm_start,
        serving=_serving(raw.get("serving")),
    )


def _warm_start(raw: Any) -> tuple[str, ...]:
    """``warm_start``: a list of earlier studies -- ``quick``, ``isolation`` or a study name."""
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(n, str) and NAME_RE.fullmatch(n) for n in raw):
        raise ConfigError("warm_start", f"expected a list of study names (quick, isolation, or a study in this "
                                        f"storage), got {shown(raw)}")
    return tuple(dict.fromkeys(raw))


def _artifacts(raw: Any) -> bool:
    """``artifacts: {keep: false}``: what frameworks write in a trial's folder is removed after it."""
    raw = _mapping(raw, "artifacts")
    _reject_unknown(raw, ("keep",), "artifacts")
    keep = raw.get("keep", False)
    if not isinstance(keep, bool):
        raise ConfigError("artifacts.keep", "expected true or false")
    return keep


def _serving(raw: Any) -> ServingConfig:
    """``serving: {measure, batch_size, requests, warmup_s, window_s, windows}`` (greenknobs.meters.steady)."""
    raw = _mapping(raw, "serving")
    _reject_unknown(raw, ("measure", "batch_size", "requests", "warmup_s", "window_s", "windows"), "serving")
    d = ServingConfig()
    measure = raw.get("measure", d.measure)
    if measure is not None and not isinstance(measure, bool):
        raise ConfigError("serving.measure", "expected true, false or null (null: when objectives.energy is inference_per_1k)")
    size = raw.get("batch_size", d.batch_size)
    return ServingConfig(
        measure, None if size is None else int(_number(size, "serving.batch_size", integer=True, low=1, high=65536)),
        int(_number(raw.get("requests", d.requests), "serving.requests", integer=True, low=1, high=10_000_000)),
        float(_number(raw.get("warmup_s", d.warmup_s), "serving.warmup_s", low=0, high=3600)),
        float(_number(raw.get("window_s", d.window_s), "serving.window_s", low=0, high=3600)),
        int(_number(raw.get("windows", d.windows), "serving.windows", integer=True, low=1, high=100)))


def _reuse(raw: Any) -> Reuse:
    if isinstance(raw, bool):
        return Reuse(enabled=raw)
    raw = _mapping(raw, "reuse")
    _reject_unknown(raw, ("enabled", "inference_variants", "max_gb"), "reuse")
    d = Reuse()
    enabled = raw.get("enabled", d.enabled)
    if not isinstance(enabled, bool):
        raise ConfigError("reuse.enabled", "expected true or false")
    return Reuse(enabled, _number(raw.get("inference_variants", d.inference_variants), "reuse.inference_variants",
                                  integer=True, low=0, high=8),
                 float(_number(raw.get("max_gb", d.max_gb), "reuse.max_gb", low=0.01, high=10_000)))


def _stop_hopeless(raw: Any, before_start: bool = True) -> StopHopeless:
    if isinstance(raw, bool):
        return StopHopeless(enabled=raw, before_start=before_start)
    raw = _mapping(raw, "stop_hopeless")
    _reject_unknown(raw, ("enabled", "at_fraction", "below_floor", "rungs", "before_start"), "stop_hopeless")
    d = StopHopeless(before_start=before_start)
    flags = {k: raw.get(k, getattr(d, k)) for k in ("enabled", "below_floor", "before_start")}
    for k, v in flags.items():
        if not isinstance(v, bool):
            raise ConfigError(f"stop_hopeless.{k}", "expected true or false")
    rungs = raw.get("rungs", list(d.rungs))
    if not isinstance(rungs, list):
        raise ConfigError("stop_hopeless.rungs", "expected a list of fractions of training, e.g. [0.25, 0.5] ([] for none)")
    rungs = tuple(sorted(float(_number(r, "stop_hopeless.rungs", low=0.05, high=0.95)) for r in rungs))
    return StopHopeless(flags["enabled"], float(_number(raw.get("at_fraction", d.at_fraction), "stop_hopeless.at_fraction",
                                                        low=0.05, high=0.95)), flags["below_floor"], rungs,
                        flags["before_start"])


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file; every problem -- a missing or unreadable file, bytes
    that are not UTF-8, broken YAML, a bad value -- is a ConfigError (one line, naming the key)."""
    return parse_experiment(_read_yaml(path), str(Path(path)))


def _read_yaml(path: str | Path) -> Any:
    p = Path(path)
    try:
        data = p.read_bytes()
    except IsADirectoryError:
        raise ConfigError("", f"{path} is a folder, not an experiment file") from None
    except FileNotFoundError:
        raise ConfigError("", f"no such experiment file: {path}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError("", f"cannot read experiment file {shown(str(path))}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError("", f"{path} line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save it as UTF-8") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError("", f"{path}: not valid YAML{where}: {' '.join(str(problem).split())}") from None
    except RecursionError:
        raise ConfigError("", f"{path}: not valid YAML: nested too deeply") from None
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:  # PyYAML's constructors, e.g. a date 2024-13-45
        raise ConfigError("", f"{path}: not valid YAML: {' '.join(str(exc).split())[:200]}") from None
    return raw


def load_experiment_with_function(path: str | Path, fn: Any) -> Experiment:
    """An experiment file whose pipeline is ``fn`` (``greenknobs.optimize``): its ``pipeline:`` block
    may be absent; options there reach the function as ``trial.options``."""
    from greenknobs.pipeline import in_process

    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError("", f"{path}: an experiment file must be a YAML mapping")
    pipe = {k: v for k, v in _mapping(raw.get("pipeline"), "pipeline").items() if k not in ("name", "function", "script")}
    return parse_experiment({**raw, "pipeline": {**pipe, "function": in_process(fn)}}, str(path))


def check_inputs(exp: Experiment) -> dict[str, Any]:
    """Read what the trials will read -- the dataset files -- the way they will, so a missing, unreadable
    or malformed file fails now (``greenknobs validate``, before a search starts), not inside trial 0.
    Uses the pipeline's ``check_inputs(options, seed)`` classmethod when it has one; returns its summary."""
    check = getattr(pipeline_class(exp.pipeline), "check_inputs", None)
    if check is None:
        return {}
    return dict(check(exp.pipeline_options, exp.seed) or {})


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False)
