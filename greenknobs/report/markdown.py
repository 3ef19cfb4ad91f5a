"""The report's summary in Markdown: for the MLflow experiment description, a README, a PR."""

from __future__ import annotations

from greenknobs.report.build import Report, summary_numbers
from greenknobs.report.serving import markdown as serving_md
from greenknobs.report.tables import front_markdown


def _n(value, digits: int = 1) -> str:
    return "–" if value is None else (f"{value:,.{digits}f}" if isinstance(value, float) else str(value))


def render(r: Report) -> str:
    inp, nums = r.inputs, summary_numbers(r)
    lines = [f"# Sustainability report: {inp.name}", ""]
    prov = nums.get("baseline", {}).get("provenance", "?")
    lines.append(f"Energy figures are **{prov}** by `{inp.meter.get('name')}` ({inp.meter.get('why')}). "
                 f"Quality: {inp.metric}, chosen on validation, reported on the held-out test split.")
    lines.append("")
    if "baseline" in nums:
        b, rec = nums["baseline"], nums.get("recommended")
        lines += ["| | baseline | recommended |", "|---|---:|---:|"]
        for label, key, d in (("trial", "trial", 0), ("energy (J)", "energy_j", 1), ("CO2e (g)", "g_co2e", 4),
                              (f"{inp.metric} validation", "validation_quality", 4),
                              (f"{inp.metric} test (held out)", "test_quality", 4),
                              ("J per 1,000 predictions", "j_per_1k_predictions", 1)):
            lines.append(f"| {label} | {_n(b[key], d)} | {_n(rec[key], d) if rec else '–'} |")
        lines.append("")
    if r.serving:
        lines += [*serving_md(r.serving), ""]
    for rec in r.recommendations:
        spread = (f" ± {rec.saving_spread_pct:.1f} points of the baseline's energy (noise: the baseline moved "
                  f"±{100 * rec.noise_rel:.1f} % between repeats)") if rec.saving_spread_pct is not None and rec.noise_rel \
            else " (single runs: noise unknown)"
        lines += [f"**{rec.kind.capitalize()}** (trial {rec.trial}): {rec.saving_pct:.1f} % less energy{spread}, "
                  f"test {inp.metric} {_n(rec.test_quality, 4)}.", "", "```yaml", rec.snippet, "```", ""]
    lines += [front_markdown(inp.front, inp.rows, f"Pareto front: energy vs {inp.metric}"), ""]
    pb = r.payback
    lines.append(f"The search cost {pb.total_spent_j:,.0f} J ({pb.provenance}; isolation study {pb.isolation_spent_j:,.0f} J).")
    if pb.per_recommendation:
        profile = pb.deployment
        lines.append(f"Payback at {profile['retrains_per_month']:g} retrainings and {profile['predictions_per_month']:,.0f} "
                     f"predictions a month ({profile['stated']}); a saving inside the noise floor counts as none "
                     f"({pb.noise['source']}):")
    for p in pb.per_recommendation:
        lines.append(f"- {p['kind']} (trial {p['trial']}): {p['training_verdict']}, {p['prediction_verdict']}; "
                     f"{p['verdict']}")
    near = inp.data.get("near_duplicates")
    if near:
        pairs = ", ".join(f"{name} {n}" for name, n in near["by_split_pair"].items())
        lines += ["", f"Data: {near['pairs']} near-duplicate pairs (word 3-gram Jaccard >= {near['threshold']:g}) in the "
                      f"seeded split, {near['across_splits']} across splits ({pairs}); {inp.data.get('source')}."]
    if r.cascade and r.effects:
        flagged = [c for c in r.cascade if c.quality_verdict not in ("as predicted", "no prediction")
                   or c.energy_verdict not in ("as predicted", "no prediction")]
        lines += ["", f"Cascade: {len(flagged)} of {len(r.cascade)} combinations miss the single-knob prediction."]
        for c in flagged[:5]:
            lines.append(f"- {', '.join(f'{k}={v}' for k, v in c.knobs.items())}: saving {_n(c.observed_saving_pct)} % "
                         f"(predicted {_n(c.predicted_saving_pct)} %), quality kept {100 * c.observed_retained:.0f} % "
                         f"(predicted {_n(100 * c.predicted_retained if c.predicted_retained is not None else None, 0)} %)")
    elif not r.effects:
        lines += ["", "No isolation study yet: `greenknobs ablate` measures each knob alone for the cascade analysis."]
    return "\n".join(lines) + "\n"
