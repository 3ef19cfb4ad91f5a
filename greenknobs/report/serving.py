"""Serving energy in the report: the recommended model's Wh per 1,000 queries at steady state,
rated against the study's own baseline and front, and int8 variants that cost more than float.

The rating follows the Hugging Face AI Energy Score's method -- the range of energies of the
compared models is cut into five 20 % bands and the lowest band earns 5 stars -- applied to this
study's baseline and Pareto front, so it is a relative rating, not an official AI Energy Score (which
fixes the task, the data, the batch and the hardware: an H100).
"""

from __future__ import annotations

from typing import Any

from greenknobs.records import TrialRow

METHOD = ("AI Energy Score method (5 bands of 20 % of the energy range; 5 stars = lowest band) applied to this "
          "study's baseline and Pareto front at steady state; a relative rating, not an official AI Energy Score")
QUANT_KNOB = "inference.quantization"


def _figure(row: TrialRow) -> dict[str, Any] | None:
    s = row.serving
    if not s or s.get("j_per_1k") is None:
        return None
    return {"trial": row.trial, "wh_per_1k": s["j_per_1k"] / 3600.0, "j_per_1k": s["j_per_1k"],
            "j_per_1k_min": s.get("j_per_1k_min"), "j_per_1k_max": s.get("j_per_1k_max"),
            "provenance": s.get("provenance"), "meter": s.get("meter"), "latency_ms": s.get("latency_ms"),
            "workload": s.get("workload"), "engine": row.knobs.get("inference.engine", "torch"),
            "quantization": row.knobs.get(QUANT_KNOB, "none"), "served_as": served_as(row)}


def served_as(row: TrialRow) -> str:
    """How a trial served, in words: the engine, its int8 if any, and its precision (bf16 is often
    what made it cheap on CPUs with AMX)."""
    quant, precision = row.knobs.get(QUANT_KNOB, "none"), row.knobs.get("inference.precision", "fp32")
    return ", ".join([row.knobs.get("inference.engine", "torch"), *([quant] if quant != "none" else []), precision])


def stars(value: float, values: list[float]) -> tuple[int, list[float]]:
    """5..1 stars by the 20 % band of [min, max] ``value`` falls in, and the band edges."""
    lo, hi = min(values), max(values)
    edges = [lo + (hi - lo) * k / 5 for k in range(6)]
    if hi <= lo:
        return 5, edges
    band = min(4, int((value - lo) / (hi - lo) * 5))
    return 5 - band, edges


def quantised_costlier(rows: list[TrialRow]) -> list[str]:
    """An int8 variant whose steady-state energy per 1,000 predictions is above its float twin's
    (every other knob equal): int8 is not always cheaper (re-quantising activations, small batches)."""
    out = []
    figures = {r.trial: fig for r in rows if r.complete and (fig := _figure(r))}
    by_rest: dict[str, list[TrialRow]] = {}
    for r in rows:
        if r.trial in figures:
            rest = repr(sorted((k, repr(v)) for k, v in r.knobs.items() if k != QUANT_KNOB))
            by_rest.setdefault(rest, []).append(r)
    for twins in by_rest.values():
        floats = [r for r in twins if r.knobs.get(QUANT_KNOB, "none") == "none"]
        for q in (r for r in twins if r.knobs.get(QUANT_KNOB, "none") != "none"):
            for fl in floats:
                fq, ff = figures[q.trial], figures[fl.trial]
                if fq["j_per_1k"] > ff["j_per_1k"]:
                    overlap = (fq["j_per_1k_min"] or fq["j_per_1k"]) <= (ff["j_per_1k_max"] or ff["j_per_1k"])
                    out.append(f"trial {q.trial} ({fq['served_as']}) costs {fq['j_per_1k']:.3g} J per "
                               f"1,000 predictions, more than its float model (trial {fl.trial}: {ff['j_per_1k']:.3g} J)"
                               + (" -- within the windows' spread" if overlap else ""))
    return out


def section(rows: list[TrialRow], baseline: TrialRow | None, front: list[TrialRow],
            recommended: TrialRow | None) -> dict[str, Any] | None:
    """The report's serving-energy facts; None when no trial measured serving at steady state."""
    rec = _figure(recommended) if recommended is not None else None
    if rec is None:
        return None
    compared = [f for r in ([baseline] if baseline else []) + front if (f := _figure(r))]
    values = [f["wh_per_1k"] for f in compared] or [rec["wh_per_1k"]]
    rec["stars"], edges = stars(rec["wh_per_1k"], values)
    base = _figure(baseline) if baseline is not None else None
    return {"recommended": rec, "baseline": base, "method": METHOD, "band_edges_wh_per_1k": edges,
            "compared_trials": [f["trial"] for f in compared],
            "saving_pct": 100 * (1 - rec["wh_per_1k"] / base["wh_per_1k"]) if base and base["wh_per_1k"] > 0 else None,
            "warnings": quantised_costlier(rows)}


def markdown(s: dict[str, Any]) -> list[str]:
    rec, base = s["recommended"], s["baseline"]
    lat = rec.get("latency_ms") or {}
    lines = [f"Serving at steady state (trial {rec['trial']}, {rec['served_as']}): "
             f"**{rec['wh_per_1k']:.3g} Wh per 1,000 queries** ({rec['j_per_1k']:.3g} J, windows "
             f"{rec['j_per_1k_min']:.3g}–{rec['j_per_1k_max']:.3g} J; {rec['provenance']} by {rec['meter']}), "
             f"latency p50 {lat.get('p50', 0):.1f} ms / p95 {lat.get('p95', 0):.1f} ms per {lat.get('per', 'request')}; "
             f"rating **{'★' * rec['stars']}{'☆' * (5 - rec['stars'])}** ({s['method']})."]
    if base:
        lines.append(f"Baseline serving: {base['wh_per_1k']:.3g} Wh per 1,000 queries"
                     + (f" ({s['saving_pct']:.0f} % less for the recommendation)." if s["saving_pct"] is not None else "."))
    lines += [f"- Warning: {w}" for w in s["warnings"]]
    return lines
