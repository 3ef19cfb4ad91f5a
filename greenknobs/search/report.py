"""``greenknobs report``: gather a study (and its isolation study) into the sustainability report,
write it under runs/<name>/report/, and log it to the study's parent MLflow run."""

from __future__ import annotations

import importlib.metadata
import statistics
import subprocess
from pathlib import Path
from typing import Any

from greenknobs.config import Experiment
from greenknobs.errors import GreenknobsError
from greenknobs.meters import resolve
from greenknobs.report import exports, html, markdown
from greenknobs.report.build import Report, ReportInputs, build
from greenknobs.runtime import machine
from greenknobs.search import drift, energy_model
from greenknobs.search import study as studies
from greenknobs.search.ablation import isolation_experiment
from greenknobs.search.publish import results_dir
from greenknobs.search.rows import all_rows, front_rows
from greenknobs.search.runner import study_carbon_intensity
from greenknobs.search.study import Study

PACKAGES = ("greenknobs", "torch", "transformers", "optuna", "mlflow", "codecarbon", "zeus", "scikit-learn", "peft")


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(where: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    if out.returncode != 0:
        return "not a git checkout"
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def baseline_facts(study) -> tuple[int | None, int | None]:
    """(validation examples, predictions per trial) from the baseline's stored result."""
    base = studies.baseline_trial(study)
    if base is None:
        return None, None
    result = base.user_attrs.get("result", {})
    examples = (result.get("phases", {}).get("data", {}).get("details", {}) or {}).get("examples") or {}
    return examples.get("validation"), (result.get("samples") or {}).get("inference")


def data_facts(exp: Experiment, study) -> dict[str, Any]:
    """The corpus as the trials split it: duplicates dropped before the split, label conflicts, and
    the near-duplicate pairs left across it by split pair -- as the baseline's data phase recorded
    them, or, for a pipeline that records none, recomputed now from the dataset (and said so)."""
    from greenknobs.config import check_inputs

    base = studies.baseline_trial(study)
    result = (base.user_attrs.get("result") or {}) if base is not None else {}
    details = ((result.get("phases") or {}).get("data") or {}).get("details") or {}
    if details.get("near_duplicates"):
        return {"source": "recorded by the baseline trial's data phase", "near_duplicates": details["near_duplicates"],
                "dedup": details.get("dedup_before_split"),
                "duplicates_dropped_before_split": details.get("duplicates_dropped_before_split")}
    try:
        summary = check_inputs(exp)
    except GreenknobsError as exc:
        return {"source": f"not recorded by the trials, and the dataset cannot be read now: {exc}"}
    if not summary.get("near_duplicates"):
        return {"source": "not recorded: this pipeline reports no near-duplicates"}
    return {"source": "recomputed from the dataset now (the trials did not record it): the same seeded split",
            "near_duplicates": summary["near_duplicates"],
            "dedup": {"mode": summary.get("dedup"), "exact_dropped": summary.get("duplicates_dropped"),
                      "near_dropped": summary.get("near_duplicates_dropped"),
                      "label_conflicts": summary.get("label_conflicts")},
            "duplicates_dropped_before_split": summary.get("duplicates_dropped")}


def search_policies(study: Study) -> dict[str, str]:
    """What steered the search besides TPE: the warm start, the cost-aware weighing, the trials
    not started because they were predicted dominated -- stated from what each trial recorded."""
    out: dict[str, str] = {}
    warm = study.user_attrs.get("warm_start")
    if warm:
        out["warm start"] = "; ".join(
            f"{s['study']} ({s['trials']} trials" + (f", energy x{s['energy_scale']:.3g}, quality x{s['quality_scale']:.3g}"
                                                      if s.get("energy_scale") else "") + ")"
            for s in warm["sources"]) + f" -- informs {warm['informs']}"
    weighed = [t.user_attrs["cost_weighing"] for t in study.trials if t.user_attrs.get("cost_weighing")]
    if weighed:
        moved = [w for w in weighed if w["chosen_j"] < w["unweighed_choice_j"]]
        out["cost-aware proposals"] = (
            f"{len(weighed)} proposals weighed by expected improvement per predicted joule; {len(moved)} moved to a "
            "cheaper candidate" + (f" (median predicted {statistics.median(w['chosen_j'] for w in moved):,.0f} J instead "
                                  f"of {statistics.median(w['unweighed_choice_j'] for w in moved):,.0f} J)" if moved else ""))
    drifted = drift.describe(study)
    if drifted:
        out["baseline drift"] = drifted
    skipped = [t for t in study.trials if t.user_attrs.get("not_started") and
               "most accurate feasible" in (t.user_attrs.get("stop_reason") or "")]
    if skipped:
        out["predicted dominated, not started"] = f"{len(skipped)} trials ({', '.join(str(t.number) for t in skipped)})"
    return out


def gather(exp: Experiment) -> tuple[ReportInputs, int | None, int | None]:
    study = studies.open_study(exp, create=False)
    iso_rows = []
    overhead = {"search": studies.overhead_j(study), "isolation": 0.0}
    try:
        iso = isolation_experiment(exp)
        iso_study = studies.open_study(iso, create=False)
        iso_rows, overhead["isolation"] = all_rows(iso_study, iso), studies.overhead_j(iso_study)
    except GreenknobsError:  # no isolation study yet: the report says how to get one
        pass
    source = Path(exp.source) if exp.source else None
    mach = machine()
    reproducibility: dict[str, Any] = {
        **{f"version {k}": v for k, v in versions().items()}, "greenknobs": versions()["greenknobs"],
        "seed": exp.seed, "sampler": exp.sampler, "study": exp.name, "storage": studies.mask_password(exp.storage),
        "hardware": f"{mach['cpu']} ({mach['cores']} cores)" + (f", {', '.join(mach['gpus'])}" if mach["gpus"] else ""),
        "os": mach["os"], "python": mach["python"],
        "git commit": git_commit(source.parent if source else Path.cwd()),
        "experiment_file": source.read_text(encoding="utf-8") if source and source.is_file() else "(not a file)",
    }
    # what the results were produced from: the data and model content, the code (greenknobs.fingerprint)
    produced = studies.recorded_fingerprint(study) or {}
    for path, digest in sorted(produced.get("inputs", {}).items()):
        reproducibility[f"input {path}"] = f"sha256 {digest[:16]}" if digest else "gone"
    if produced.get("code"):
        reproducibility["code digest"] = produced["code"]
    model = energy_model.fit(exp, studies.energy_observations(study))  # what the search predicted energy with
    reproducibility["energy model"] = model.describe() if model else f"not fitted (fewer than {energy_model.MIN_TRIALS} trials)"
    reproducibility.update(search_policies(study))
    for accepted in study.user_attrs.get("accepted_changes", []):
        reproducibility[f"changes accepted {accepted['at']}"] = "; ".join(accepted["changed"])
    carbon = {**study_carbon_intensity(exp), "country_iso_code": exp.carbon.country_iso_code, "region": exp.carbon.region}
    stored_idle = next((t.user_attrs.get("result", {}).get("idle_power") for t in study.trials
                        if t.user_attrs.get("result", {}).get("idle_power")), None)
    inputs = ReportInputs(
        name=exp.name, pipeline=exp.pipeline, metric=exp.objectives.quality_metric,
        maximize=exp.objectives.quality_direction == "maximize", energy_scope=exp.objectives.energy_scope,
        constraints={"min_quality_retained": exp.constraints.min_quality_retained,
                     "beat_trivial_by": exp.constraints.beat_trivial_by},
        searched=[s.name for s in exp.searched_knobs], baseline_values=exp.baseline_values(),
        rows=all_rows(study, exp), front=front_rows(study, exp), isolation_rows=iso_rows,
        importance=studies.importances(study), meter=resolve(exp.meter.name), carbon=carbon,
        reproducibility=reproducibility, idle_power=stored_idle, experiment_command=exp.source or exp.name,
        overhead_j=overhead, fixed=exp.fixed_settings(), data=data_facts(exp, study),
        deployment=dict(exp.deployment.stated))
    validation_size, predictions = baseline_facts(study)
    return inputs, validation_size, predictions


def write_report(exp: Experiment, tracker=None) -> tuple[Report, dict[str, Path]]:
    inputs, validation_size, predictions = gather(exp)
    report = build(inputs, validation_size, predictions)
    outdir = results_dir(exp) / "report"
    outdir.mkdir(parents=True, exist_ok=True)
    files = {"html": outdir / "report.html", "markdown": outdir / "report.md", "json": outdir / "report.json",
             "model_card": outdir / "model_card_co2.yaml"}
    files["html"].write_text(html.render(report), encoding="utf-8")
    summary = markdown.render(report)
    files["markdown"].write_text(summary, encoding="utf-8")
    files["json"].write_text(exports.to_json(report), encoding="utf-8")
    files["model_card"].write_text(exports.model_card_co2(report), encoding="utf-8")
    if tracker is not None:
        tracker.log_report(exp.name, list(files.values()), summary)
    return report, files
