"""Answers, not just runs: single-knob effects, the cascade, progress, payback, the isolation study,
and the sustainability report and MLflow UI as a real browser renders them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from greenknobs.records import TrialRow
from greenknobs.report import analysis as A
from greenknobs.testing import browser
from greenknobs.testing import fixtures as F

ROOT = Path(__file__).resolve().parents[1]


def row(trial, energy, quality, knobs=None, *, kind=None, baseline=False, test=None, feasible=True, spent=None, **role):
    return TrialRow(trial=trial, baseline=baseline, state="COMPLETE", metric="macro_f1", knobs=knobs or {},
                    energy_j=energy, validation_quality=quality, test_quality=test if test is not None else quality,
                    feasible=feasible, provenance="modelled", meter="cpu-model",
                    energy_saving_pct=None, spent_j=energy if spent is None else spent,
                    ablation={"kind": kind, **role} if kind else None,
                    phase_energy_j={"data": 1.0, "model": 1.0, "system": 0.0, "training": energy - 12.0, "inference": 10.0})


BASE = {"data.max_seq_len": 128, "model.layers_removed": 0, "data.train_fraction": 1.0}


def seed_study_rows():
    """The seed study's measured collapse (stack notes): three knobs that each keep >= 96 % of
    macro-F1 cut energy roughly multiplicatively together, while quality falls to about 23 %."""
    iso = [row(i, e, q, BASE, kind="baseline", repeat=i) for i, (e, q) in enumerate([(99.0, 0.971), (100.0, 0.970), (101.0, 0.972)])]
    singles = {("data.max_seq_len", 64): (42.0, 0.939), ("model.layers_removed", 3): (51.0, 0.948),
               ("data.train_fraction", 0.5): (51.0, 0.962)}
    n = 3
    for (knob, value), (e, q) in singles.items():
        for r, jitter in enumerate((-1.0, 0.0, 1.0)):
            iso.append(row(n, e + jitter, q, {**BASE, knob: value}, kind="single", knob=knob, value=value, repeat=r))
            n += 1
    combo = {"data.max_seq_len": 64, "model.layers_removed": 3, "data.train_fraction": 0.5}
    search = [row(0, 100.0, 0.971, BASE, baseline=True), row(1, 12.6, 0.227, {**BASE, **combo}, feasible=False),
              row(2, 42.5, 0.94, {**BASE, "data.max_seq_len": 64})]
    return iso, search


def test_the_cascade_shows_the_seed_studys_collapse():
    iso, search = seed_study_rows()
    effects, floor = A.knob_effects(iso, maximize=True, validation_size=200)
    assert {e.label for e in effects} == {"data.max_seq_len=64", "model.layers_removed=3", "data.train_fraction=0.5"}
    assert all(e.retained >= 0.96 for e in effects)  # each knob alone keeps >= 96 % of macro-F1
    assert all(e.energy_distinguishable for e in effects)
    rows = A.cascade(search, iso, effects, floor, BASE, maximize=True)
    combo = next(r for r in rows if len(r.knobs) == 3)
    assert combo.predicted_saving_pct == pytest.approx(100 * (1 - 0.42 * 0.51 * 0.51), abs=0.5)
    assert combo.observed_saving_pct == pytest.approx(87.4, abs=0.1)
    assert combo.energy_verdict == "as predicted"  # savings multiplied ...
    assert combo.predicted_retained > 0.9 and combo.observed_retained == pytest.approx(0.234, abs=0.01)
    assert "collapse" in combo.quality_verdict  # ... quality did not
    pairs = A.interfering_pairs(rows, floor)
    assert len(pairs) == 3 and all("quality collapses together" in p.verdict for p in pairs)


def test_effects_inside_the_noise_floor_are_not_distinguishable():
    base = [row(i, e, 0.9, BASE, kind="baseline", repeat=i) for i, e in enumerate([90.0, 100.0, 110.0])]
    tiny = [row(3 + i, e, 0.9, {**BASE, "data.max_seq_len": 64}, kind="single", knob="data.max_seq_len", value=64, repeat=i)
            for i, e in enumerate([94.0, 99.0, 104.0])]
    effects, floor = A.knob_effects(base + tiny, maximize=True)
    assert floor.energy_rel == pytest.approx(0.1)
    assert effects[0].energy_distinguishable is False
    assert effects[0].saving_ci_pct[0] < 0 < effects[0].saving_ci_pct[1]
    single, _ = A.knob_effects(base[:1] + tiny[:1], maximize=True)
    assert single[0].saving_ci_pct is None and single[0].energy_distinguishable is False  # one run: no claim


def test_hypervolume_knee_and_payback():
    assert A.hypervolume_2d([(0.5, 0.9), (0.3, 0.8), (0.8, 0.95)], (1.2, 0.7)) == pytest.approx(0.18)
    assert A.hypervolume_2d([(1.5, 0.9)], (1.2, 0.7)) == 0.0  # beyond the reference point
    front = [row(1, 20.0, 0.80), row(2, 30.0, 0.95), row(3, 60.0, 0.96), row(4, 100.0, 0.97)]
    assert A.knee(front, maximize=True).trial == 2
    rows = [row(0, 100.0, 0.97, BASE, baseline=True)] + front
    prog = A.progress(rows, maximize=True, quality_floor=0.9)
    assert prog.hypervolume == sorted(prog.hypervolume)  # never decreases
    assert prog.cumulative_spent_j[-1] == pytest.approx(310.0)
    recs = A.recommendations([front[1]], rows[0], None, ["data.max_seq_len"], True, predictions=100)
    pb = A.payback(rows, [], recs, rows[0], predictions=100, overhead_j=50.0)
    assert pb.search_spent_j == pytest.approx(360.0)
    p = pb.per_recommendation[0]
    assert p["saved_per_training_run_j"] == pytest.approx(70.0)
    assert p["break_even_training_runs"] == pytest.approx(360.0 / 70.0)
    assert p["saved_per_1k_predictions_j"] == pytest.approx(0.0) and p["break_even_predictions"] is None  # never


def phased(trial, training, inference, baseline=False):
    """A trial whose training run costs ``training`` J and whose 100 predictions cost ``inference`` J."""
    r = row(trial, training + inference, 0.95, BASE, baseline=baseline)
    r.phase_energy_j = {"data": 0.0, "model": 0.0, "system": 0.0, "training": training, "inference": inference}
    return r


def payback_of(base, rec_row, floor=None, deployment=None, spent=1000.0):
    recs = A.recommendations([rec_row], base, floor, ["data.max_seq_len"], True, predictions=100)
    return A.payback([base, rec_row], [], recs, base, predictions=100, overhead_j=spent - base.spent_j - rec_row.spent_j,
                     floor=floor, deployment=deployment)


def test_payback_combines_training_and_prediction_savings_for_a_deployment():
    base = phased(0, 100.0, 10.0, baseline=True)
    pb = payback_of(base, phased(1, 50.0, 5.0), deployment={"retrains_per_month": 2, "predictions_per_month": 10_000})
    p = pb.per_recommendation[0]
    # 2 x 50 J + 10,000 predictions x 0.05 J = 600 J a month: 1,000 J repaid in 1.67 months
    assert p["saved_per_month_j"] == pytest.approx(2 * 50.0 + 10_000 / 1000 * 50.0)
    assert p["months_to_repay"] == pytest.approx(1000.0 / 600.0)
    assert p["break_even_training_runs"] == pytest.approx(20.0) and p["break_even_predictions"] == pytest.approx(20_000)
    assert "repays the search (1,000 J) in 1.7 months at 2 retrainings and 10,000 predictions a month" in p["verdict"]
    assert pb.deployment["stated"] == "in the experiment (report:)"
    default = payback_of(base, phased(1, 50.0, 5.0))
    assert default.deployment["retrains_per_month"] == 4 and default.deployment["predictions_per_month"] == 1_000_000
    assert "default" in default.deployment["stated"]


def test_a_saving_inside_the_noise_floor_is_no_saving():
    base = phased(0, 100.0, 10.0, baseline=True)
    # training identical but for 0.0004 J (a reused phase): no saving, however many runs; predictions save
    pb = payback_of(base, phased(1, 99.9996, 5.0))
    p = pb.per_recommendation[0]
    assert p["break_even_training_runs"] is None and p["training_verdict"].startswith("no saving per training run")
    assert p["saved_per_month_j"] == pytest.approx(1_000_000 / 1000 * 50.0) and p["months_to_repay"] is not None
    assert "assumed ±10 %" in pb.noise["source"]  # no repeated baseline: the floor is assumed, and says so
    # neither saving clears the floor: never, and why
    never = payback_of(base, phased(1, 99.0, 9.9)).per_recommendation[0]
    assert never["months_to_repay"] is None and never["break_even_predictions"] is None
    assert never["verdict"] == "never pays the search back: neither saving is beyond the noise floor"
    # training costs more than it saves at inference, at this deployment: never, for that reason
    worse = payback_of(base, phased(1, 200.0, 5.0), deployment={"retrains_per_month": 4, "predictions_per_month": 1000})
    w = worse.per_recommendation[0]
    assert w["training_verdict"].startswith("costs 100 J more") and w["months_to_repay"] is None
    assert w["prediction_verdict"] == "saves 50 J per 1,000 predictions" and w["saved_per_month_j"] == pytest.approx(-350.0)
    assert w["verdict"].endswith("its extra cost outweighs its saving at this deployment")
    # a measured floor: a 3 % change is a saving when repeats moved the baseline by only 1 %
    floor = A.NoiseFloor(3, 110.0, 0.01, 0.95, 0.005, 0.95)
    measured = payback_of(base, phased(1, 97.0, 10.0), floor=floor)
    m = measured.per_recommendation[0]
    assert m["break_even_training_runs"] is not None and m["training_noise_j"] == pytest.approx(0.01 * (100**2 + 97**2) ** 0.5)
    assert measured.noise["source"] == "measured: the baseline's energy moved ±1.0 % over 3 runs"


def test_the_deployment_profile_is_an_experiment_key(tmp_path, tiny_model_dir, tiny_csv):
    from greenknobs.config import parse_experiment
    from greenknobs.errors import ConfigError

    raw = F.tiny_experiment(tmp_path, tiny_model_dir, tiny_csv)
    assert parse_experiment(raw).deployment.stated == {}
    exp = parse_experiment({**raw, "report": {"retrains_per_month": 2, "predictions_per_month": 50_000}})
    assert exp.deployment.stated == {"retrains_per_month": 2.0, "predictions_per_month": 50_000.0}
    assert exp.quick_variant().deployment == exp.deployment
    for bad, key in (({"retrains_per_mnth": 2}, "report.retrains_per_mnth"), ({"retrains_per_month": -1}, "report.retrains_per_month"),
                     ({"predictions_per_month": "lots"}, "report.predictions_per_month"), ([4], "report")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse_experiment({**raw, "report": bad})


def test_the_saving_spread_is_in_points_of_the_baselines_energy():
    base = phased(0, 100.0, 10.0, baseline=True)
    floor = A.NoiseFloor(3, 110.0, 0.05, 0.95, 0.005, 0.95)
    rec = A.recommendations([phased(1, 22.0, 5.5)], base, floor, ["data.max_seq_len"], True, predictions=100)[0]
    # E/E0 = 27.5/110: each figure moves 5 % of itself, so the saving moves sqrt(2) x 5 % x 0.25 = 1.77 points
    assert rec.saving_spread_pct == pytest.approx(100 * 2 ** 0.5 * 0.05 * 27.5 / 110.0)
    assert rec.noise_rel == 0.05


def test_the_report_and_the_console_state_the_deployment_and_the_floor(capsys):
    from greenknobs.cli import _print_cost
    from greenknobs.report import html, markdown
    from greenknobs.report.build import ReportInputs, build

    base, rec = phased(0, 100.0, 10.0, baseline=True), phased(1, 99.9996, 5.0)
    base.energy_saving_pct, rec.energy_saving_pct = 0.0, 4.5
    inputs = ReportInputs(
        name="x", pipeline="text-classification", metric="macro_f1", maximize=True, energy_scope="total",
        constraints={}, searched=["data.max_seq_len"], baseline_values=BASE, rows=[base, rec], front=[rec],
        isolation_rows=[], importance={}, meter={"name": "cpu-model", "why": "test"},
        carbon={"g_per_kwh": 100.0, "source": "test"}, reproducibility={},
        deployment={"retrains_per_month": 1, "predictions_per_month": 20_000})
    report = build(inputs, validation_size=100, predictions=100)
    page, md = html.render(report), markdown.render(report)
    for text in (page, md):
        assert "1 retrainings and 20,000 predictions a month" in text and "in the experiment (report:)" in text
        assert "no saving per training run (within the noise floor" in text and "assumed ±10 %" in text
    assert "months to repay the search" in page
    _print_cost(report.payback)
    out = capsys.readouterr().out
    assert "no saving per training run" in out and "saves 50 J per 1,000 predictions" in out and "repays the search" in out
    assert "28,102,453" not in out and "training runs" not in out.split("repays")[-1]


def test_a_recommendation_snippet_reproduces_the_trial_with_the_experiments_fixed_knobs():
    r = row(5, 40.0, 0.95, {"data.max_seq_len": 64, "model.layers_removed": 2, "model.pruning_method": "block_influence",
                            "training.learning_rate": 0.00061234})
    rec = A.recommendations([r], row(0, 100.0, 0.97, BASE, baseline=True), None,
                            ["data.max_seq_len", "model.layers_removed", "training.learning_rate"], True, predictions=100,
                            fixed={"model.pruning_method": "block_influence"})[0]
    assert yaml.safe_load(rec.snippet) == {"knobs": {"model.pruning_method": "block_influence", "data.max_seq_len": 64,
                                                     "model.layers_removed": 2, "training.learning_rate": 0.0006123}}


def test_isolation_plan_interleaves_blocks_and_leaves_out_inert_values(tmp_path, tiny_model_dir, tiny_csv):
    from greenknobs.config import parse_experiment
    from greenknobs.search.ablation import plan

    raw = F.tiny_experiment(tmp_path, tiny_model_dir, tiny_csv, knobs={
        "data.max_seq_len": {"default": 32, "choices": [16, 32]},
        "model.lora_alpha": {"default": 16, "choices": [16, 32]},  # does nothing without a LoRA rank
        "model.layers_removed": {"default": 0, "low": 0, "high": 1}})
    runs, notes = plan(parse_experiment(raw), repeats=3, combos=[])
    assert any("model.lora_alpha=32 left out" in n for n in notes)
    rounds = [runs[i:i + 3] for i in range(0, 9, 3)]
    for block in rounds:  # every round: one baseline and every single-knob value once
        kinds = sorted((r["role"]["kind"], r["role"].get("knob")) for r in block)
        assert kinds == [("baseline", None), ("single", "data.max_seq_len"), ("single", "model.layers_removed")]
    assert runs[0]["role"]["kind"] == "baseline"  # the reference comes first
    orders = {tuple(r["role"].get("knob") or "baseline" for r in block) for block in rounds}
    assert len(orders) > 1  # shuffled per round, so drift hits baseline and changed runs alike


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    """A tiny search and its isolation study, then the report (once for the module)."""
    from greenknobs.testing.fixtures import make_tiny_csv, make_tiny_model_dir

    work = tmp_path_factory.mktemp("report")
    exp = F.tiny_experiment(work, make_tiny_model_dir(work / "m"), make_tiny_csv(work / "t.csv"), sampler="tpe",
                            budget={"trials": 5}, constraints={"min_quality_retained": 0.9, "beat_trivial_by": 0.05},
                            knobs={"data.max_seq_len": {"default": 32, "choices": [16, 32]},
                                   "model.layers_removed": {"default": 0, "low": 0, "high": 1},
                                   "training.learning_rate": {"default": 1e-2, "choices": [1e-4, 1e-2]},
                                   "training.epochs": 5, "system.threads": 1})
    path = work / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))

    def gk(*args):
        out = subprocess.run([sys.executable, "-m", "greenknobs", *args], capture_output=True, text=True, cwd=work,
                             timeout=600)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        return out.stdout

    search_out = gk("search", str(path))
    ablate_out = gk("ablate", str(path), "--repeats", "2", "--combo", "data.max_seq_len=16,model.layers_removed=1")
    report_out = gk("report", str(path))
    return work, path, search_out, ablate_out, report_out


def test_search_and_ablate_say_what_they_cost(studied):
    _, _, search_out, ablate_out, report_out = studied
    assert "What the search cost:" in search_out and "warm-up run" in search_out
    assert "knob value (alone)" in ablate_out and "data.max_seq_len=16" in ablate_out
    assert "model.layers_removed=1" in ablate_out
    assert "Report files" in report_out and "pays" in report_out


def test_the_isolation_study_resumes_where_it_stopped(studied, monkeypatch):
    """Cut off after two runs, a rerun finishes the plan: every planned run exactly once (the one
    that was cut off re-queued with its role); asking for one more repeat runs exactly one round."""
    from greenknobs.config import load_experiment
    from greenknobs.search.ablation import isolation_experiment, run_isolation
    from greenknobs.search.study import open_study
    from greenknobs.tracking import Tracker

    work, path, *_ = studied
    monkeypatch.chdir(work)
    exp = load_experiment(path)
    study = open_study(isolation_experiment(exp), create=False)
    assert len(study.trials) == 2 * 5  # 2 rounds x (baseline + 3 single values + 1 combination)

    class CutOff:
        """Interrupts the third run of the new round (as Ctrl-C would)."""
        started = 0

        def __getattr__(self, name):
            return lambda *a, **k: None

        def trial_started(self, *a):
            CutOff.started += 1
            if CutOff.started == 3:
                raise KeyboardInterrupt

    tracker = Tracker(exp.mlflow_uri, exp.name)
    with pytest.raises(KeyboardInterrupt):
        run_isolation(exp, tracker, CutOff(), repeats=3, combos=[{"data.max_seq_len": 16, "model.layers_removed": 1}])
    outcome, _ = run_isolation(exp, tracker, None, repeats=3, combos=[{"data.max_seq_len": 16, "model.layers_removed": 1}])
    tracker.end_study()
    done = [t for t in outcome.study.trials if t.state.name == "COMPLETE"]
    roles = [json.dumps(t.user_attrs["ablation"], sort_keys=True) for t in done]
    assert len(done) == 3 * 5 and len(set(roles)) == len(roles)  # the whole plan, each run once
    again, _ = run_isolation(exp, tracker, None, repeats=3, combos=[{"data.max_seq_len": 16, "model.layers_removed": 1}])
    tracker.end_study()
    assert again.ran == 0


def test_report_files_and_mlflow(studied):
    work, *_ = studied
    report_dir = work / "runs" / "tiny" / "report"
    data = json.loads((report_dir / "report.json").read_text())
    assert data["effects"] and data["noise_floor"]["runs"] == 2
    assert any("isolation combination" in c["source"] for c in data["cascade"])
    assert data["payback"]["search_spent_j"] > 0 and data["payback"]["isolation_spent_j"] > 0
    assert {b["label"] for b in data["badges"]} >= {"energy measured by hardware counters", "carbon intensity named"}
    card = yaml.safe_load((report_dir / "model_card_co2.yaml").read_text())["co2_eq_emissions"]
    assert card["emissions"] > 0 and "modelled" in card["source"] and card["training_type"] == "fine-tuning"
    assert card["geographical_location"] and card["hardware_used"]
    md = (report_dir / "report.md").read_text()
    assert "Pareto front" in md and "held-out test" in md

    from greenknobs.tracking import Tracker

    tracker = Tracker(f"sqlite:///{work}/mlflow.db", "tiny")
    parent = tracker.find_parent("tiny")
    names = {a.path for a in tracker.client.list_artifacts(parent, "report")}
    assert {"report/report.html", "report/report.md", "report/report.json", "report/model_card_co2.yaml"} <= names
    note = tracker.client.get_experiment(tracker.experiment_id).tags["mlflow.note.content"]
    assert "Sustainability report" in note and "Pareto front" in note
    runs = tracker.client.search_runs([tracker.experiment_id], filter_string="tags.trial = '0'")
    child = next(r for r in runs if r.data.tags.get("greenknobs.role") == "trial")
    assert child.info.run_name.startswith("t000 baseline") and "J" in child.info.run_name
    assert {"energy/total_j", "energy/training_j", "quality/validation_macro_f1", "quality/test_macro_f1"} <= set(child.data.metrics)
    parent_metrics = tracker.client.get_run(parent).data.metrics
    assert parent_metrics["search/spent_j"] > 0


needs_chromium = pytest.mark.skipif(browser.chromium() is None, reason="chromium is not installed (CI installs it)")


@needs_chromium
def test_the_report_renders_offline_in_a_real_browser(studied, tmp_path):
    work, *_ = studied
    page = (work / "runs" / "tiny" / "report" / "report.html").as_uri()
    dom, how = browser.dump_dom(page, offline=True)
    assert how != "network allowed"
    for chart in ("chart-pareto", "chart-phases", "chart-effects", "chart-progress"):
        start = dom.index(f'id="{chart}"')
        assert 'class="main-svg"' in dom[start:start + 200_000], f"{chart} did not draw"  # plotly drew its SVG
    text = browser.visible_text(dom)
    for heading in ("Summary", "Knob effects", "Cascade", "What the search cost", "Measurement notes", "Reproducibility"):
        assert heading in text
    shot = browser.screenshot(page, tmp_path / "report.png", offline=True)
    assert shot.stat().st_size > 20_000 and browser.distinct_colours(shot) > 50  # not a blank page


@needs_chromium
def test_greenknobs_ui_opens_on_the_runs_and_stops_with_its_command(studied):
    work, path, *_ = studied
    from greenknobs.processes import port_open
    from greenknobs.testing.services import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "greenknobs", "ui", str(path), "--port", str(port)], cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        url, deadline = None, time.time() + 120
        while url is None and time.time() < deadline:
            line = proc.stdout.readline()
            if "open: " in line:
                url = line.split("open: ", 1)[1].strip()
            elif not line and proc.poll() is not None:
                break
        assert url and "workflowType=machine_learning" in url
        dom, _ = browser.dump_dom(url, budget_ms=30000)
        text = browser.visible_text(dom)
        assert "tiny-isolation" in text and "matching runs" in text  # the runs table, not the GenAI overview
        assert "Pareto front" in text and "Sustainability report" in text  # the description above the runs
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # what a user's Ctrl-C / kill does
        proc.wait(timeout=60)
    assert not port_open("127.0.0.1", port), "the MLflow server outlived `greenknobs ui`"
