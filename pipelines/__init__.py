"""Concrete five-phase pipelines, by the name an experiment file uses."""

from __future__ import annotations

import importlib

from greenknobs.errors import ConfigError
from greenknobs.pipeline import Pipeline

BUILT_IN = {
    "text-classification": "pipelines.text_classification:TextClassificationPipeline",
    "causal-lm": "pipelines.causal_lm:CausalLMPipeline",
}


def pipeline_class(name: str) -> type[Pipeline]:
    """A built-in pipeline name, or ``module:Class`` for one of the user's own."""
    path = BUILT_IN.get(name, name)
    module_name, _, class_name = path.partition(":")
    if not class_name:
        raise ConfigError("pipeline.name", f"unknown pipeline {name!r}; built-in: {', '.join(BUILT_IN)}")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError("pipeline.name", f"cannot import {path!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Pipeline)):
        raise ConfigError("pipeline.name", f"{path!r} is not a greenknobs Pipeline")
    return cls
