"""The meter registry and automatic selection.

``auto`` picks the most measured option this machine offers:
  GPU and readable RAPL   -> zeus (GPU + CPU + DRAM, all measured)
  GPU only                -> composite: zeus (or nvml) for the GPU + cpu-model for CPU/RAM
  readable RAPL only      -> zeus (or rapl when zeus is not installed)
  nothing                 -> cpu-model (modelled, parameters shown with every figure)
"""

from __future__ import annotations

from typing import Any

from greenknobs.errors import ConfigError, MeterUnavailable
from greenknobs.meters.base import EnergyMeter
from greenknobs.meters.codecarbon_meter import CodeCarbonMeter
from greenknobs.meters.composite import GPU_METERS, CompositeMeter, gpu_meter_choice
from greenknobs.meters.cpu_model import DEFAULT_PARAMS as CPU_MODEL_DEFAULTS
from greenknobs.meters.cpu_model import CpuModelMeter
from greenknobs.meters.nvml import NvmlMeter
from greenknobs.meters.rapl import RaplMeter
from greenknobs.meters.registry import meter_class, registered_meters
from greenknobs.meters.zeus_meter import ZeusMeter

# the built-in backends (also registered under the greenknobs.meters entry-point group)
METERS: dict[str, type[EnergyMeter]] = {
    m.name: m for m in (ZeusMeter, NvmlMeter, RaplMeter, CodeCarbonMeter, CpuModelMeter, CompositeMeter)}


def meter_type(name: str) -> type[EnergyMeter]:
    """The class behind a meter name: built-in, registered by a package, or ``module:Class``."""
    return METERS[name] if name in METERS else meter_class(name)

def auto_choice() -> tuple[str, str]:
    """(meter name, why) for ``meter: auto`` on this machine."""
    gpu, rapl = NvmlMeter.probe(), RaplMeter.probe()
    zeus_ok = ZeusMeter.probe().available
    if gpu.available and rapl.available and zeus_ok:
        return "zeus", "GPU via NVML and CPU/DRAM via RAPL: everything measured"
    if gpu.available:
        return "composite", f"GPU measured ({gpu.reason}); CPU/RAM modelled ({rapl.reason})"
    if rapl.available:
        return ("zeus" if zeus_ok else "rapl"), f"no GPU ({gpu.reason}); CPU/DRAM via RAPL"
    return "cpu-model", f"nothing to measure with: {gpu.reason}; {rapl.reason}"


def resolve(name: str) -> dict[str, str]:
    """The meter a configured name stands for here: {"requested", "name", "why"} (``auto`` resolved)."""
    if name == "auto":
        chosen, why = auto_choice()
        return {"requested": "auto", "name": chosen, "why": why}
    return {"requested": name, "name": name, "why": "named in the experiment file"}


def _build(name: str, params: dict[str, Any]) -> EnergyMeter:
    if name == "composite":
        params = dict(params)
        gpu_name = params.pop("gpu", "auto")
        if gpu_name == "auto":
            gpu_name, reason = gpu_meter_choice()
            if gpu_name is None:
                raise MeterUnavailable(f"meter 'composite' has no GPU part here: {reason}")
        if gpu_name not in GPU_METERS:
            raise ConfigError("meter.params.gpu", f"expected auto, {' or '.join(GPU_METERS)}, got {gpu_name!r}")
        gpu = ZeusMeter(cpu=False) if gpu_name == "zeus" else NvmlMeter()
        try:
            return CompositeMeter(gpu, CpuModelMeter(**params))
        except (TypeError, ValueError):
            gpu.close()
            raise
    return meter_type(name)(**params)


def create_meter(name: str = "auto", params: dict[str, Any] | None = None) -> EnergyMeter:
    """Build a meter. ``params`` go to cpu-model (also a composite's CPU part); with ``auto``
    they apply only if the chosen meter is cpu-model or composite, and are dropped otherwise."""
    params = dict(params or {})
    if name == "auto":
        name, _ = auto_choice()
        if name not in ("cpu-model", "composite"):
            params = {}
    cls = meter_type(name)  # an unknown name or a bad module:Class path: ConfigError naming meter.name
    availability = cls.probe()
    if not availability.available:
        raise MeterUnavailable(f"meter {name!r} is unavailable here: {availability.reason}")
    try:
        return _build(name, params)
    except (TypeError, ValueError) as exc:
        raise ConfigError("meter.params", str(exc)) from None


def meter_table() -> list[dict[str, Any]]:
    """One row per backend (built-in or registered by a package): available here, what it covers,
    measured or modelled, and why not."""
    chosen, _ = auto_choice()
    rows = []
    for name in registered_meters():
        try:
            cls = meter_type(name)
        except ConfigError as exc:  # a package registered a meter that does not load
            rows.append({"meter": name, "available": False, "auto": False, "measures": "", "provenance": "",
                         "resolution_s": "", "reason": str(exc), "params": {}})
            continue
        a = cls.probe()
        provenance = cls.provenance
        if name == "codecarbon":
            provenance = "measured if RAPL/NVML, else modelled"
        elif name == "composite":
            provenance = "gpu measured, cpu/ram modelled"
        rows.append({"meter": name, "available": a.available, "auto": name == chosen,
                     "measures": "/".join(cls.measures), "provenance": provenance,
                     "resolution_s": cls.resolution_s, "reason": a.reason,
                     "params": CPU_MODEL_DEFAULTS if name == "cpu-model" else {}})
    return rows
