"""A stand-in pipeline that sleeps instead of computing: its trials take a fixed, known time and
barely touch the CPU, so tests and benchmarks of coordination (many workers, crashes, budgets)
measure the orchestration, not the two cores. Quality is a known function of its two knobs (registered when this module is imported, which
naming the pipeline does).

    pipeline: {name: "greenknobs.testing.standin:SleepPipeline", phase_s: 0.2}
    knobs:
      standin.width: {class: "greenknobs.testing.standin:Width", choices: [1, 2, 3, 4]}
      standin.depth: {class: "greenknobs.testing.standin:Depth", low: 1, high: 8}
"""

from __future__ import annotations

import time
from typing import Any

from greenknobs.errors import ConfigError
from greenknobs.knobs.base import SettingKnob, Space, register
from greenknobs.pipeline import Pipeline


class _StandinKnob(SettingKnob):
    phase = "model"
    verifies = "the value the stand-in's training step reports it used"

    def judge(self, value, seen, ctx):
        used = seen[self.evidence[0]]
        return None if used == value else f"the stand-in ran with {used}"


@register
class Width(_StandinKnob):
    name = "standin.width"
    default = 4
    space = Space(choices=(1, 2, 3, 4))
    bounds = (1, 4)
    example = 2
    description = "Stand-in width: cost and quality grow with it."
    evidence = ("standin_width_used",)


@register
class Depth(_StandinKnob):
    name = "standin.depth"
    default = 8
    space = Space(low=1, high=8, integer=True)
    bounds = (1, 256)  # wide enough for benchmarks whose trials must not repeat
    example = 4
    description = "Stand-in depth: cost and quality grow with it."
    evidence = ("standin_depth_used",)


# training_s_per_unit: training sleeps width x depth x this (a cost the knobs set, as real ones do)
DEFAULT_OPTIONS: dict[str, Any] = {"phase_s": 0.2, "training_s": None, "training_s_per_unit": None}


class SleepPipeline(Pipeline):
    """Every phase sleeps ``phase_s`` (training: ``training_s`` when given); validation quality is
    width * depth / 32 (test: the same, minus 0.01)."""

    name = "standin-sleep"
    knobs = ("standin.width", "standin.depth")
    metrics = {"score": "maximize"}
    default_metric = "score"
    trivial_metrics = {"score": "trivial_score"}

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        unknown = set(options) - set(DEFAULT_OPTIONS)
        if unknown:
            raise ConfigError(f"pipeline.{sorted(unknown)[0]}", f"unknown option; known: {', '.join(DEFAULT_OPTIONS)}")
        merged = {**DEFAULT_OPTIONS, **options}
        for key in DEFAULT_OPTIONS:
            v = merged[key]
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0):
                raise ConfigError(f"pipeline.{key}", f"expected seconds >= 0, got {v!r}")
        return merged

    def _sleep(self, seconds: float | None = None) -> None:
        time.sleep(self.options["phase_s"] if seconds is None else seconds)

    def data(self, ctx) -> None:
        ctx.apply_knobs()
        self._sleep()

    def model(self, ctx) -> None:
        ctx.apply_knobs()
        self._sleep()

    def system(self, ctx) -> None:
        ctx.apply_knobs()
        self._sleep()

    def training(self, ctx) -> None:
        ctx.apply_knobs()
        per_unit = self.options["training_s_per_unit"]
        units = ctx.setting("standin.width") * ctx.setting("standin.depth")
        self._sleep(units * per_unit if per_unit is not None else self.options["training_s"])
        ctx.observed.record("standin_width_used", ctx.setting("standin.width"))
        ctx.observed.record("standin_depth_used", ctx.setting("standin.depth"))

    def inference(self, ctx) -> None:
        ctx.apply_knobs()
        self._sleep()
        score = ctx.setting("standin.width") * ctx.setting("standin.depth") / 32
        ctx.quality = {"validation": {"score": score, "trivial_score": 0.0},
                       "test": {"score": score - 0.01, "trivial_score": 0.0}}
        ctx.samples["inference"] = 100
