"""Exports beside the report: its data as JSON, and a Hugging Face model-card ``co2_eq_emissions`` block."""

from __future__ import annotations

import json
from typing import Any

from greenknobs.report.analysis import to_plain, training_energy
from greenknobs.report.build import Report, summary_numbers


def report_data(r: Report) -> dict[str, Any]:
    inp = r.inputs
    return {
        "name": inp.name, "pipeline": inp.pipeline, "metric": inp.metric, "maximize": inp.maximize,
        "energy_scope": inp.energy_scope, "meter": inp.meter, "carbon": inp.carbon, "summary": summary_numbers(r),
        "recommendations": to_plain(r.recommendations), "effects": to_plain(r.effects), "noise_floor": to_plain(r.floor),
        "cascade": to_plain(r.cascade), "interfering_pairs": to_plain(r.pairs), "importance": inp.importance,
        "progress": to_plain(r.progress), "payback": to_plain(r.payback), "badges": to_plain(r.badges),
        "quality_floor": r.quality_floor, "predictions_per_trial": r.predictions,
        "trials": [t.to_dict() for t in inp.rows], "isolation_trials": [t.to_dict() for t in inp.isolation_rows],
        "reproducibility": inp.reproducibility, "data": inp.data, "deployment": inp.deployment,
        "serving": r.serving,
    }


def to_json(r: Report) -> str:
    return json.dumps(report_data(r), indent=1, default=str)


def model_card_co2(r: Report) -> str:
    """The ``co2_eq_emissions`` block of a Hugging Face model card (YAML front matter), for the
    recommended configuration's training run (data, model, system and training phases)."""
    row = r.recommended or r.baseline
    if row is None:
        return "# no completed trial yet\n"
    inp, rep = r.inputs, r.inputs.reproducibility
    grams = r.grams(training_energy(row))
    location = inp.carbon.get("region") or inp.carbon.get("country_iso_code") or "unknown"
    source = (f"greenknobs {rep.get('greenknobs', '')}: {row.provenance} by {row.meter}; carbon intensity "
              f"{inp.carbon['g_per_kwh']:.0f} g/kWh ({inp.carbon['source']}), PUE {inp.carbon.get('pue', 1.0)}")
    hardware = rep.get("hardware", "unknown")
    return ("co2_eq_emissions:\n"
            f"  emissions: {grams:.6f}\n"
            f"  source: {json.dumps(source)}\n"
            "  training_type: fine-tuning\n"
            f"  geographical_location: {json.dumps(location)}\n"
            f"  hardware_used: {json.dumps(hardware)}\n")
