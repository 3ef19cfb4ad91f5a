"""Knobs: the contract (base), combination rules (compat) and the built-in catalog, one module per
phase or family. Built-in knobs register by plain import; user knobs by ``load_knob_class``."""

from __future__ import annotations

import importlib
import pkgutil

from greenknobs.errors import ConfigError
from greenknobs.knobs.base import PHASE_ORDER, REGISTRY, Knob, KnobSetting, SettingKnob, Space, register

__all__ = ["Knob", "SettingKnob", "KnobSetting", "Space", "REGISTRY", "register", "get_knob", "load_knob_class",
           "all_knobs"]

# Built-in knobs register themselves (``@register``) when their module is imported:
# importing every module of this package is the whole registration step.
for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in ("base", "compat"):
        importlib.import_module(f"{__name__}.{_mod.name}")


def load_knob_class(path: str, key: str) -> type[Knob]:
    """Import a user knob given as ``package.module:ClassName``."""
    module_name, _, class_name = path.partition(":")
    if not module_name or not class_name:
        raise ConfigError(key, f"expected 'module:ClassName', got {path!r}")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(key, f"cannot import {path!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Knob)):
        raise ConfigError(key, f"{path!r} is not a greenknobs Knob subclass")
    return register(cls)


def get_knob(name: str) -> Knob:
    try:
        return REGISTRY[name]()
    except KeyError:
        raise ConfigError(f"knobs.{name}", f"unknown knob; known: {', '.join(sorted(REGISTRY))}") from None


def all_knobs() -> list[Knob]:
    return sorted((cls() for cls in REGISTRY.values()), key=lambda k: (PHASE_ORDER.get(k.phase, 9), k.name))
