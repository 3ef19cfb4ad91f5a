"""Meters are found by name, like pipelines: the ``greenknobs.meters`` entry-point group (the
built-in ones register there in pyproject.toml; a user's package can do the same) or a
``module:Class`` path to a subclass of ``EnergyMeter`` named in the experiment's ``meter.name``.

The built-in table is also consulted directly, so the built-in names work even where greenknobs'
installed metadata predates the entry-point group (an editable install made before it existed).
"""

from __future__ import annotations

import importlib
import re
from importlib.metadata import entry_points

from greenknobs.errors import ConfigError
from greenknobs.meters.base import EnergyMeter

ENTRY_POINT_GROUP = "greenknobs.meters"
BUILTIN = {
    "zeus": "greenknobs.meters.zeus_meter:ZeusMeter",
    "nvml": "greenknobs.meters.nvml:NvmlMeter",
    "rapl": "greenknobs.meters.rapl:RaplMeter",
    "codecarbon": "greenknobs.meters.codecarbon_meter:CodeCarbonMeter",
    "cpu-model": "greenknobs.meters.cpu_model:CpuModelMeter",
    "composite": "greenknobs.meters.composite:CompositeMeter",
}
CLASS_PATH_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")  # package.module:ClassName


def registered_meters() -> dict[str, str]:
    """Meter name -> ``module:Class`` for every meter registered under the entry-point group, and the
    built-in ones (a package cannot take over a built-in name)."""
    return {**{ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}, **BUILTIN}


def meter_class(name: str) -> type[EnergyMeter]:
    """A registered meter name, or ``module:Class`` for one that is not registered; anything else
    is a ConfigError naming ``meter.name``."""
    registered = registered_meters()
    path = registered.get(name, name)
    if ":" not in path:
        raise ConfigError("meter.name", f"unknown meter {name!r}; known: auto, {', '.join(registered)}; "
                                        "or give module:Class for your own")
    if not CLASS_PATH_RE.fullmatch(path):
        raise ConfigError("meter.name", f"expected 'package.module:ClassName', got {path!r}")
    module_name, _, class_name = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError("meter.name", f"cannot import {path!r}: {' '.join(str(exc).split())}") from None
    except Exception as exc:  # the user's module fails as it loads: still one line, naming the key
        raise ConfigError("meter.name", f"importing {path!r} failed: {type(exc).__name__}: "
                                        f"{' '.join(str(exc).split())[:300]}") from None
    if not (isinstance(cls, type) and issubclass(cls, EnergyMeter)):
        raise ConfigError("meter.name", f"{path!r} is not a greenknobs EnergyMeter (greenknobs.meters.base)")
    return cls
