"""Baseline drift: during a long search, the baseline is measured again so a drift in what the
meter reports (other load, thermal state, a modelled figure following the machine) is seen.

Every ``EVERY`` finished trials a worker re-runs the baseline's configuration from its stored
trained model (phase reuse: only the system and inference phases run, a few joules) and compares
the inference phase with the baseline trial's own. Only where that stored model exists: a drift
check never retrains. The record goes on the study (``drift_checks``), its energy into the
search's cost (``overhead``), and the report states the drift beside the noise floor.
"""

from __future__ import annotations

import time
from typing import Any

from greenknobs.phases import PhaseResult, combine_provenance
from greenknobs.pipeline import reuse_keys, run_trial
from greenknobs.search import study as studies
from greenknobs.search.study import Study

EVERY = 10  # finished trials between checks
WARN = 0.10  # a drift beyond this is called out (the meter's spread warning, by default)


def due(study: Study) -> bool:
    """A check is due when EVERY more trials have finished since the last one (or the baseline)."""
    done = studies.finished_count(study)
    checks = study.user_attrs.get("drift_checks", [])
    last = checks[-1]["after_finished"] if checks else 1
    return studies.baseline_trial(study) is not None and done - last >= EVERY


def check(objective: Any, study: Study) -> dict[str, Any] | None:
    """Re-measure the baseline's inference phase on its stored model; None where no stored model
    of the baseline exists here (nothing is run then)."""
    base = studies.baseline_trial(study)
    store, exp = objective.store, objective.exp
    if base is None or store is None:
        return None
    stored_j = (((base.user_attrs.get("result") or {}).get("phases") or {}).get("inference") or {}).get("energy_j")
    knobs = [(s.knob, s.default) for s in exp.knobs]
    workers = objective.host_workers.count() if objective.host_workers else 1
    meter = objective.make_meter()
    try:
        keys = reuse_keys(objective.pipeline, knobs, objective.runtime, meter, exp.seed, workers)
        if not stored_j or not store.has(keys.get("training", "")):
            return None
        spent: list[float] = []
        provenance: list[str] = []

        def add(phase: str, result: PhaseResult) -> None:
            spent.append(float(result.details.get("spent_j", result.energy_j)))
            provenance.append(result.measurement.provenance)

        started = time.perf_counter()
        result = run_trial(objective.pipeline, knobs, meter, objective.runtime, exp.seed, progress=add,
                           repeats=exp.repeats, store=store, workers_on_host=workers)
    finally:
        meter.close()
    inference = result.phases["inference"]
    record = {"after_finished": studies.finished_count(study), "at": time.time(),
              "inference_j": inference.energy_j, "baseline_inference_j": float(stored_j),
              "drift": inference.energy_j / float(stored_j) - 1.0,
              "contended": bool((inference.details.get("measurement") or {}).get("contended")),
              "provenance": inference.measurement.provenance, "reused": result.reuse.get("status") == "reused"}
    study.set_user_attr("drift_checks", [*study.user_attrs.get("drift_checks", []), record])
    study.set_user_attr("overhead", [*study.user_attrs.get("overhead", []), {
        "kind": "drift check", "energy_j": sum(spent), "provenance": combine_provenance(provenance),
        "time_s": time.perf_counter() - started, "outcome": "ok"}])
    return record


def describe(study: Study) -> str | None:
    """One line for the report: each check's drift of the baseline's inference phase."""
    checks = study.user_attrs.get("drift_checks", [])
    if not checks:
        return None
    parts = [f"{c['drift']:+.1%} after {c['after_finished']} trials" + (" (contended)" if c.get("contended") else "")
             for c in checks]
    worst = max(abs(c["drift"]) for c in checks)
    verdict = (f"beyond {WARN:.0%}: compare trials far apart in the search with care" if worst > WARN
               else f"within {WARN:.0%}")
    return f"baseline inference re-measured from its stored model: {', '.join(parts)} -- {verdict}"
