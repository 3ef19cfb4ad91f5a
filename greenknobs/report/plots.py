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


# -- figures for the sustainability report (HTML fragments; plotly.js is embedded once per report) --
def plotly_js() -> str:
    """The plotly.js bundle, to inline once in a self-contained report (no network needed to view it)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _div(fig: go.Figure, div_id: str) -> str:
    fig.update_layout(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50), height=420)
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False})


def report_pareto(rows: list[TrialRow], front: list[TrialRow], quality_floor: float | None, maximize: bool,
                  knee_trial: int | None, isolation: list[dict] | None = None) -> str:
    """Every trial, the front, the feasible region (quality at or beyond the floor), the knee, and
    single-knob isolation runs with min-max error bars where they were repeated."""
    metric = (front or rows)[0].metric if (front or rows) else "quality"
    feasible, infeasible = _points(rows)
    fig = go.Figure()
    if quality_floor is not None and (feasible or infeasible):
        xs = [r.energy_j or 0.0 for r in feasible + infeasible]
        ys = [r.validation_quality or 0.0 for r in feasible + infeasible]
        top = max(ys + [quality_floor]) * 1.02 if maximize else quality_floor
        bottom = quality_floor if maximize else min(ys + [quality_floor]) * 0.98
        fig.add_shape(type="rect", x0=0, x1=max(xs) * 1.05, y0=bottom, y1=top, fillcolor="#2e8b57", opacity=0.07,
                      line_width=0, layer="below")
        fig.add_hline(y=quality_floor, line_dash="dot", line_color="#2e8b57",
                      annotation_text="quality floor (validation)", annotation_position="bottom right")
    front = sorted(front, key=lambda r: r.energy_j or 0.0)

    def hover(r: TrialRow) -> str:
        knobs = "<br>".join(f"{k} = {v}" for k, v in r.searched.items())
        test = f"{r.test_quality:.4f}" if r.test_quality is not None else "-"
        return (f"trial {r.trial}<br>{r.energy_j:.1f} J ({r.energy_saving_pct:.1f} % saved)<br>"
                f"{metric} validation {r.validation_quality:.4f}, test {test} (held out)<br>{knobs}")

    for name, pts, style, mode in (
            ("feasible", feasible, dict(color="#7aa6c2", size=9), "markers"),
            ("violates a constraint", infeasible, dict(color="#d9a5a5", size=9, symbol="x"), "markers"),
            ("Pareto front", front, dict(color="#1b7f3b", size=13, line=dict(width=1, color="black")), "markers+lines")):
        fig.add_trace(go.Scatter(x=[r.energy_j for r in pts], y=[r.validation_quality for r in pts], mode=mode, name=name,
                                 marker=style, text=[hover(r) for r in pts], hoverinfo="text",
                                 line=dict(shape="hv", color="#1b7f3b") if name == "Pareto front" else None))
    base = [r for r in rows if r.baseline and r.complete]
    if base:
        fig.add_trace(go.Scatter(x=[base[0].energy_j], y=[base[0].validation_quality], mode="markers", name="baseline",
                                 marker=dict(color="#333333", size=16, symbol="star"), text=[hover(base[0])],
                                 hoverinfo="text"))
    knee = [r for r in front if r.trial == knee_trial]
    if knee:
        fig.add_trace(go.Scatter(x=[knee[0].energy_j], y=[knee[0].validation_quality], mode="markers", name="knee",
                                 marker=dict(color="rgba(0,0,0,0)", size=24, line=dict(width=2, color="#c0392b"))))
    if isolation:
        fig.add_trace(go.Scatter(
            x=[p["energy_j"] for p in isolation], y=[p["quality"] for p in isolation], mode="markers",
            name="one knob alone (isolation, min-max)", marker=dict(color="#8e44ad", size=8, symbol="diamond"),
            error_x=dict(type="data", symmetric=False, array=[p["e_hi"] - p["energy_j"] for p in isolation],
                         arrayminus=[p["energy_j"] - p["e_lo"] for p in isolation], thickness=1),
            text=[p["label"] for p in isolation], hoverinfo="text"))
    fig.update_layout(title=f"Energy vs {metric} (validation, searched)", xaxis_title=_axis_label(rows),
                      yaxis_title=f"{metric}, validation (searched)")
    return _div(fig, "chart-pareto")


def report_phases(baseline: TrialRow, recs: list[tuple[str, TrialRow]]) -> str:
    """Energy per phase: the baseline beside each recommendation (stacked)."""
    from greenknobs.phases import PHASES

    names = ["baseline"] + [f"{label} (trial {r.trial})" for label, r in recs]
    rows = [baseline] + [r for _, r in recs]
    fig = go.Figure()
    for phase in PHASES:
        fig.add_trace(go.Bar(name=phase, x=names, y=[r.phase_energy_j.get(phase) or 0.0 for r in rows]))
    fig.update_layout(barmode="stack", title="Energy per phase (J)", yaxis_title=_axis_label(rows).split(" —")[0])
    return _div(fig, "chart-phases")


def report_effects(effects: list[dict]) -> str:
    """Saving of each knob value alone, with its bootstrap interval; grey where inside the noise floor."""
    labels = [e["label"] for e in effects]
    fig = go.Figure(go.Bar(
        x=[e["saving_pct"] for e in effects], y=labels, orientation="h",
        marker_color=["#1b7f3b" if e["energy_distinguishable"] else "#b0b0b0" for e in effects],
        error_x=dict(type="data", symmetric=False,
                     array=[(e["saving_ci_pct"] or [e["saving_pct"]] * 2)[1] - e["saving_pct"] for e in effects],
                     arrayminus=[e["saving_pct"] - (e["saving_ci_pct"] or [e["saving_pct"]] * 2)[0] for e in effects]),
        text=[f"quality {e['quality_delta']:+.4f}" for e in effects], hoverinfo="x+y+text"))
    fig.update_layout(title="Energy saved by each knob value alone (%, 95 % bootstrap interval; grey: not distinguishable)",
                      xaxis_title="energy saved vs baseline (%)", height=max(320, 26 * len(labels) + 120))
    return _div(fig, "chart-effects")


def report_progress(trials: list[int], hv: list[float], spent_j: list[float], reference: str) -> str:
    """Hypervolume of the feasible front against trials and against the joules the search spent."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("against trials", "against energy spent by the search (kJ)"))
    fig.add_trace(go.Scatter(x=trials, y=hv, mode="lines+markers", name="by trial", line_shape="hv"), row=1, col=1)
    fig.add_trace(go.Scatter(x=[s / 1000 for s in spent_j], y=hv, mode="lines+markers", name="by kJ", line_shape="hv"),
                  row=1, col=2)
    fig.update_layout(title=f"Hypervolume progress (reference point: {reference})", showlegend=False)
    return _div(fig, "chart-progress")


def report_importance(importance: dict[str, dict[str, float]]) -> str:
    knobs = sorted({k for imp in importance.values() for k in imp})
    fig = go.Figure([go.Bar(name=f"{objective} objective", x=knobs, y=[imp.get(k, 0.0) for k in knobs])
                     for objective, imp in importance.items()])
    fig.update_layout(barmode="group", title="Knob importance per objective (Optuna, unsigned)", yaxis_title="importance")
    return _div(fig, "chart-importance")


def curves_png(curves: dict[str, list[tuple[list[float], list[float]]]], path: Path, xlabel: str, ylabel: str,
               title: str) -> Path:
    """Step curves, one colour per label and one line per run under it (a benchmark's arms over
    seeds: the spread is visible, not averaged away)."""
    f, ax = plt.subplots(figsize=(8, 5), dpi=110)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, runs) in enumerate(curves.items()):
        for j, (xs, ys) in enumerate(runs):
            ax.step(xs, ys, where="post", c=colours[i % len(colours)], lw=1.2, alpha=0.8,
                    label=label if j == 0 else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    f.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    f.savefig(path)
    plt.close(f)
    return path
