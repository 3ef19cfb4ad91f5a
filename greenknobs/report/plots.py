"""Pareto plots: interactive HTML (plotly) and a static PNG (matplotlib). Only importer of both."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers or CI
import matplotlib.pyplot as plt
import plotly.graph_objects as go

from greenknobs.records import TrialRow


def _points(rows: list[TrialRow]):
    done = [r for r in rows if r.complete]
    return ([r for r in done if r.feasible], [r for r in done if not r.feasible])


def _axis_label(rows: list[TrialRow]) -> str:
    provs = {r.provenance for r in rows if r.provenance}
    meters = {r.meter for r in rows if r.meter}
    label = next((r.energy_label for r in rows if r.scope), "J, all phases")
    return f"energy ({label}) — {'/'.join(sorted(provs))} by {'/'.join(sorted(meters))}"


def pareto_plots(all_rows: list[TrialRow], front_rows: list[TrialRow], title: str, outdir: Path) -> dict[str, Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    metric = (front_rows or all_rows)[0].metric
    feasible, infeasible = _points(all_rows)
    front = sorted(front_rows, key=lambda r: r.energy_j or 0.0)
    base = [r for r in all_rows if r.baseline and r.complete]
    xlabel = _axis_label(all_rows)

    def hover(r):
        knobs = "<br>".join(f"{k} = {v}" for k, v in r.searched.items())
        return (f"trial {r.trial}<br>{r.energy_j:.1f} J ({r.energy_saving_pct:.1f} % saved)<br>"
                f"{metric} validation {r.validation_quality:.4f} ({r.quality_retained_pct:.1f} % kept), "
                f"test {r.test_quality:.4f} (held out)<br>{knobs}")

    fig = go.Figure()
    for name, rows, style in (("feasible", feasible, dict(color="#7aa6c2", size=9)),
                              ("violates a constraint", infeasible, dict(color="#d9a5a5", size=9, symbol="x")),
                              ("Pareto front", front, dict(color="#1b7f3b", size=13, line=dict(width=1, color="black"))),
                              ("baseline (trial 0)", base, dict(color="#333333", size=15, symbol="star"))):
        fig.add_trace(go.Scatter(x=[r.energy_j for r in rows], y=[r.validation_quality for r in rows],
                                 mode="markers+lines" if name == "Pareto front" else "markers", name=name,
                                 marker=style, text=[hover(r) for r in rows], hoverinfo="text",
                                 line=dict(shape="hv", color="#1b7f3b") if name == "Pareto front" else None))
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title=f"{metric}, validation (searched)", template="plotly_white")
    html = outdir / "pareto.html"
    fig.write_html(str(html), include_plotlyjs=True, full_html=True)

    png = outdir / "pareto.png"
    f, ax = plt.subplots(figsize=(8, 5), dpi=110)
    ax.scatter([r.energy_j for r in feasible], [r.validation_quality for r in feasible], c="#7aa6c2", label="feasible")
    ax.scatter([r.energy_j for r in infeasible], [r.validation_quality for r in infeasible], c="#c96b6b", marker="x",
               label="violates a constraint")
    if front:
        ax.step([r.energy_j for r in front], [r.validation_quality for r in front], where="post", c="#1b7f3b", lw=1)
        ax.scatter([r.energy_j for r in front], [r.validation_quality for r in front], c="#1b7f3b", s=60,
                   edgecolors="black", label="Pareto front", zorder=3)
        for r in front:
            ax.annotate(f"#{r.trial}", (r.energy_j, r.validation_quality), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
    if base:
        ax.scatter([base[0].energy_j], [base[0].validation_quality], marker="*", s=220, c="#333333", label="baseline",
                   zorder=4)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric}, validation (searched)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    f.tight_layout()
    f.savefig(png)
    plt.close(f)
    return {"pareto_html": html, "pareto_png": png}
