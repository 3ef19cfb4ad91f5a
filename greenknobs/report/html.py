"""The sustainability report as one self-contained HTML file: plotly.js inlined once, every chart
embedded, no external fetch of any kind, so it opens with networking off."""

from __future__ import annotations

import html
import json
from typing import Any

from greenknobs.report import plots
from greenknobs.report.analysis import to_plain
from greenknobs.report.build import Report, summary_numbers
from greenknobs.report.serving import markdown as serving_md

CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1150px;color:#222;
line-height:1.45;padding:0 1rem}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #1b7f3b;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.8rem 0;font-size:.9rem}th,td{border:1px solid #ddd;padding:.3rem .55rem;text-align:right}
th{background:#f3f7f4}td.l,th.l{text-align:left}.muted{color:#777}.badge{display:inline-block;margin:.2rem .4rem .2rem 0;
padding:.25rem .6rem;border-radius:1rem;font-size:.85rem}.ok{background:#e1f3e6;color:#145a2c}.warn{background:#fdf0dc;color:#7a4a00}
pre{background:#f6f8fa;padding:.7rem;border-radius:6px;overflow-x:auto}.kpi{display:flex;gap:1rem;flex-wrap:wrap}
.kpi div{background:#f3f7f4;border-radius:8px;padding:.6rem 1rem;min-width:10rem}.kpi b{font-size:1.35rem;display:block}
"""


def e(text: Any) -> str:
    return html.escape(str(text))


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return e(value)


def table(headers: list[str], rows: list[list[Any]], left: int = 1) -> str:
    head = "".join(f"<th class='l'>{e(h)}</th>" if i < left else f"<th>{e(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td class='l'>{c}</td>" if i < left else f"<td>{c}</td>" for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary(r: Report) -> str:
    inp, nums = r.inputs, summary_numbers(r)
    if "baseline" not in nums:
        return "<p>No completed baseline yet: run <code>greenknobs search</code> first.</p>"
    b, rec = nums["baseline"], nums.get("recommended")
    kpis = ""
    if rec:
        saved = 100 * (1 - (rec["energy_j"] or 0) / (b["energy_j"] or 1))
        kpis = (f"<div class='kpi'><div><b>{saved:.1f} %</b>energy saved per run (recommended)</div>"
                f"<div><b>{fmt(rec['test_quality'], 4)}</b>{e(inp.metric)}, test (held out) vs "
                f"{fmt(b['test_quality'], 4)}</div><div><b>{fmt(rec['g_co2e'], 3)} g</b>CO2e per run vs "
                f"{fmt(b['g_co2e'], 3)} g</div></div>")
    rows = []
    for label, key, digits in (("energy (J)", "energy_j", 1), ("energy (kWh)", "kwh", 6), ("CO2e (g)", "g_co2e", 4),
                               ("time (s)", "time_s", 1), (f"{inp.metric}, validation (searched)", "validation_quality", 4),
                               (f"{inp.metric}, test (held out)", "test_quality", 4),
                               ("J per 1,000 predictions", "j_per_1k_predictions", 1),
                               ("provenance", "provenance", 0), ("meter", "meter", 0)):
        rows.append([e(label), fmt(b[key], digits), fmt(rec[key], digits) if rec else "–"])
    headers = ["", f"baseline (trial {b['trial']})", f"recommended (trial {rec['trial']})" if rec else "recommended"]
    return kpis + table(headers, rows)


def _recommendations(r: Report) -> str:
    if not r.recommendations:
        return "<p>No feasible trial yet.</p>"
    out = []
    for rec in r.recommendations:
        spread = (f" ± {rec.saving_spread_pct:.1f} points of the baseline's energy (noise: the baseline moved "
                  f"±{100 * rec.noise_rel:.1f} % between repeats, applied to both figures)"
                  if rec.saving_spread_pct is not None and rec.noise_rel else
                  " (single run: spread unknown; run <code>greenknobs ablate</code>)")
        out.append(f"<h3>{e(rec.kind.capitalize())}: trial {rec.trial}</h3><p>{rec.saving_pct:.1f} % less energy"
                   f"{spread}; {e(r.inputs.metric)} validation {rec.validation_quality:.4f}, test (held out) "
                   f"{fmt(rec.test_quality, 4)} ({fmt(rec.test_retained_pct, 1)} % of the baseline's).</p>"
                   f"<pre>{e(rec.snippet)}</pre>")
    return "".join(out)


def _effects(r: Report) -> str:
    if not r.effects:
        return ("<p class='muted'>No isolation study yet. Run <code>greenknobs ablate "
                f"{e(r.inputs.experiment_command)}</code> to measure each knob value alone (with repeats), which the "
                "knob effects, the noise floor and the cascade predictions need.</p>")
    rows = []
    for x in r.effects:
        ci = f"[{x.saving_ci_pct[0]:.1f}, {x.saving_ci_pct[1]:.1f}]" if x.saving_ci_pct else "–"
        qci = f"[{x.quality_ci[0]:+.4f}, {x.quality_ci[1]:+.4f}]" if x.quality_ci else "–"
        verdict = x.energy_verdict
        rows.append([e(x.label), str(x.runs), f"{x.saving_pct:.1f}", ci, e(verdict), f"{x.quality_delta:+.4f}", qci,
                     f"{100 * x.retained:.1f}", fmt(x.test_quality, 4),
                     " ".join(f"{p} {d:+.0f}" for p, d in x.phase_delta_j.items() if abs(d) >= 0.5)])
    return (f"<p>{e(r.floor.describe() if r.floor else '')}</p>" + table(
        ["knob value (alone)", "runs", "energy saved %", "95 % CI", "vs noise floor", "Δ quality (val)", "95 % CI",
         "quality kept %", "test quality", "Δ J per phase"], rows) + plots.report_effects(to_plain(r.effects)))


def _cascade(r: Report) -> str:
    if not r.cascade:
        return "<p class='muted'>No completed combination of two or more knobs yet.</p>"
    if not r.effects:
        return ("<p class='muted'>The cascade needs each knob's effect alone: run <code>greenknobs ablate "
                f"{e(r.inputs.experiment_command)}</code>.</p>")
    rows = []
    for c in sorted(r.cascade, key=lambda c: (c.quality_gap if c.quality_gap is not None else 0.0)):
        rows.append([e(c.source), e(", ".join(f"{k}={v}" for k, v in c.knobs.items())),
                     fmt(c.predicted_saving_pct), fmt(c.observed_saving_pct), e(c.energy_verdict),
                     fmt(None if c.predicted_retained is None else 100 * c.predicted_retained),
                     fmt(100 * c.observed_retained), e(c.quality_verdict),
                     e(", ".join(c.missing)) if c.missing else ""])
    pairs = ""
    if r.pairs:
        pairs = "<h3>Knob pairs that interfere (either direction)</h3>" + table(
            ["pair", "combinations", "mean energy gap (pts)", "mean quality gap", "verdict"],
            [[e(" + ".join(p.pair)), str(p.combinations), f"{p.energy_gap_pts:+.1f}", f"{p.quality_gap:+.3f}", e(p.verdict)]
             for p in r.pairs], left=1)
    return (
        "<p>Predicted saving 1 − ∏(1 − s<sub>i</sub>) and retained quality ∏ r<sub>i</sub> from each knob alone, against "
        "what the combination did. A miss beyond the noise floor is flagged.</p>"
        + table(["combination", "knobs", "predicted saving %", "observed saving %", "energy", "predicted quality kept %",
                 "observed quality kept %", "quality", "no single-knob effect for"], rows, left=2) + pairs)


def _importance(r: Report) -> str:
    imp = r.inputs.importance
    if not any(imp.values()):
        return "<p class='muted'>Too few completed trials for importances yet.</p>"
    effect_by_knob: dict[str, list[str]] = {}
    for x in r.effects:
        effect_by_knob.setdefault(x.knob, []).append(f"{x.value}: {x.saving_pct:+.0f} %, Δq {x.quality_delta:+.3f}")
    knobs = sorted({k for v in imp.values() for k in v}, key=lambda k: -imp.get("energy", {}).get(k, 0))
    rows = [[e(k), fmt(imp.get("energy", {}).get(k), 3), fmt(imp.get("quality", {}).get(k), 3),
             e("; ".join(effect_by_knob.get(k, ["–"])))] for k in knobs]
    return (table(["knob", "importance for energy", "importance for quality", "measured alone (saving, Δ quality)"], rows)
            + plots.report_importance(imp))


def _progress(r: Report) -> str:
    if r.progress is None:
        return "<p class='muted'>No baseline or no quality floor: no hypervolume.</p>"
    ref = (f"energy {r.progress.reference['energy_fraction_of_baseline']}× the baseline's, {r.inputs.metric} "
           f"{r.progress.reference['quality']:.4f} (the quality floor)")
    return (f"<p>Hypervolume of the feasible front (energy as a fraction of the baseline's × quality above the floor); "
            f"reference point: {e(ref)}.</p>"
            + plots.report_progress(r.progress.trials, r.progress.hypervolume, r.progress.cumulative_spent_j, ref))


def _cost(r: Report) -> str:
    pb = r.payback
    head = (f"<p>The search spent <b>{pb.search_spent_j:,.0f} J</b> over {pb.trials} trials ({e(pb.outcomes())}) "
            f"and the isolation study <b>{pb.isolation_spent_j:,.0f} J</b>: "
            f"{pb.total_spent_j:,.0f} J in all ({pb.total_spent_j / 3.6e6:.5f} kWh, {r.grams(pb.total_spent_j):.3f} g "
            f"CO2e), {e(pb.provenance)}.</p>")
    d = pb.deployment
    profile = (f"<p>Payback for <b>{d['retrains_per_month']:g} retrainings and {d['predictions_per_month']:,.0f} "
               f"predictions a month</b> ({e(d['stated'])}): the training and prediction savings together, per month. "
               f"A saving inside the noise floor counts as none: {e(pb.noise['source'])}, applied to both figures of "
               f"each saving.</p>") if pb.per_recommendation else ""
    rows = []
    for p in pb.per_recommendation:
        rows.append([e(f"{p['kind']} (trial {p['trial']})"), e(p["training_verdict"]), e(p["prediction_verdict"]),
                     fmt(p["saved_per_month_j"]), fmt(p["months_to_repay"]) if p["months_to_repay"] else "never",
                     fmt(p["break_even_training_runs"]) if p["break_even_training_runs"] else "–",
                     f"{p['break_even_predictions']:,.0f}" if p["break_even_predictions"] else "–"])
    return head + profile + table(["recommendation", "per training run", "per 1,000 predictions",
                                   "J saved per month (counted)", "months to repay the search",
                                   "training runs alone to repay", "predictions alone to repay"], rows)


def _badges(r: Report) -> str:
    return "".join(f"<span class='badge {'ok' if b.ok else 'warn'}' title='{e(b.detail)}'>{'✔' if b.ok else '⚠'} "
                   f"{e(b.label)}</span><div class='muted' style='margin:0 0 .4rem 1.6rem'>{e(b.detail)}</div>"
                   for b in r.badges)


def _data(r: Report) -> str:
    """The corpus as split: duplicates dropped before the split, label conflicts, and near-duplicate
    pairs left across the split, by split pair."""
    d = r.inputs.data
    near = d.get("near_duplicates")
    if not near:
        return f"<h3>Data</h3><p class='muted'>Near-duplicates across the split: {e(d.get('source', 'not recorded'))}.</p>"
    dd = d.get("dedup") or {}
    conflicts = (dd.get("label_conflicts") or {}).get("texts", 0)
    dropped = (f"{fmt(dd.get('exact_dropped'))} exact duplicates" + (f" and {dd['near_dropped']} near-duplicates"
               if dd.get("near_dropped") else "") + " dropped before the split"
               + (f" (pipeline.dedup: {e(dd['mode'])})" if dd.get("mode") else ""))
    rows = [[e(name), str(n), str(near.get("label_conflicts_by_split_pair", {}).get(name, 0))]
            for name, n in near["by_split_pair"].items()]
    return (f"<h3>Data</h3><p>{dropped}; {conflicts} texts appeared with different labels (the first copy's label "
            f"kept). Near-duplicate pairs left in the seeded split ({e(near['method'])}): <b>{near['pairs']}</b>, "
            f"<b>{near['across_splits']}</b> across splits, among {near['rows']} rows. Source: {e(d.get('source'))}.</p>"
            + table(["split pair", "near-duplicate pairs", "with different labels"], rows))


def _reproducibility(r: Report) -> str:
    rep = r.inputs.reproducibility
    rows = [[e(k), e(v)] for k, v in rep.items() if k != "experiment_file"]
    return (table(["", "value"], rows, left=2) + _data(r)
            + f"<h3>Experiment file</h3><pre>{e(rep.get('experiment_file', ''))}</pre>")


def render(r: Report) -> str:
    inp = r.inputs
    sections = [
        ("summary", "Summary", _summary(r)),
        ("phases", "Energy per phase",
         plots.report_phases(r.baseline, [(rec.kind, row) for rec in r.recommendations if (row := r.row(rec.trial))])
         if r.baseline else "<p>–</p>"),
        ("front", "Pareto front", plots.report_pareto(
            inp.rows, inp.front, r.quality_floor, inp.maximize,
            next((rec.trial for rec in r.recommendations if rec.kind.startswith("knee")), None), _isolation_points(r))),
        ("recommendations", "Recommendations", _recommendations(r)),
        *([("serving", "Serving energy at steady state", "".join(f"<p>{e(line)}</p>" for line in serving_md(r.serving)))]
          if r.serving else []),
        ("effects", "Knob effects (each value alone)", _effects(r)),
        ("cascade", "Cascade: do the savings compound?", _cascade(r)),
        ("importance", "Importance", _importance(r)),
        ("progress", "Search progress", _progress(r)),
        ("cost", "What the search cost, and when it pays back", _cost(r)),
        ("validity", "Measurement notes", _badges(r)),
        ("reproducibility", "Reproducibility", _reproducibility(r)),
    ]
    nav = " · ".join(f"<a href='#{sid}'>{e(title)}</a>" for sid, title, _ in sections)
    body = "".join(f"<section id='{sid}'><h2>{e(title)}</h2>{content}</section>" for sid, title, content in sections)
    data = json.dumps({"name": inp.name, "sections": [s[0] for s in sections]})
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>greenknobs report: {e(inp.name)}</title>"
            f"<style>{CSS}</style><script type='text/javascript'>{plots.plotly_js()}</script></head><body>"
            f"<h1>Sustainability report: {e(inp.name)}</h1><p class='muted'>pipeline {e(inp.pipeline)} · objective: "
            f"minimise energy ({e(inp.energy_scope)}), {'maximise' if inp.maximize else 'minimise'} {e(inp.metric)} on "
            f"validation; test held out · meter {e(inp.meter.get('name'))}</p><p>{nav}</p>{body}"
            f"<script type='application/json' id='greenknobs-report'>{e(data)}</script></body></html>")


def _isolation_points(r: Report) -> list[dict]:
    pts = []
    for x in r.effects:
        pts.append({"energy_j": x.energy_j, "quality": x.quality, "e_lo": min(x.energy_j_runs),
                    "e_hi": max(x.energy_j_runs), "label": f"{x.label} alone (x{x.runs})"})
    return pts
