"""Hybrid pruning vs channel-only vs layer-only on the digits CNN, at matched energy, with repeats.

Every configuration is one real trial of experiments/digits-cnn.yaml's pipeline (its baseline
knobs, then the overrides below): train dense, prune structurally, fine-tune, serve validation +
test. Repeats use different seeds (split, initialisation, batches); within a seed every strategy
prunes the *same* dense model (training is deterministic on a CPU), so strategies are compared
paired, seed by seed.

Energy is whatever the experiment's meter gives here; on a machine without RAPL or a GPU that is
the cpu-model: *modelled*, not measured. Three figures per run:
  inference J   the served workload (every validation and test image: the inference phase and the
                held-out window): what pruning is for
  post-dense J  pruning + fine-tuning (nested windows of the training phase) + inference: all a
                strategy spends after the dense training every strategy shares
  total J       the whole trial, the held-out window included

Matching: for each hybrid configuration and seed, the channel-only and layer-only curves of the
same seed (test macro-F1 against energy, piecewise linear between their configurations) are read
at the hybrid's energy; the verdict reports the mean paired difference and its spread over seeds,
for inference J and for post-dense J. A hybrid point outside a curve's energy range is not matched.

    python benchmarks/vision_pruning.py [--repeats 3] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from greenknobs.config import load_experiment
from greenknobs.knobs import get_knob
from greenknobs.meters import create_meter
from greenknobs.pipeline import pipeline_class, run_trial
from greenknobs.runtime import detect_runtime

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("model.channel_prune_stage1", "model.channel_prune_stage2", "model.channel_prune_stage3")


def channels(r: float) -> dict[str, Any]:
    return dict.fromkeys(STAGES, r)


# strategy -> [(label, overrides)]; every pruned configuration fine-tunes for FINETUNE epochs
CONFIGS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "dense": [("dense", {})],
    "channel-only": [(f"channels {r:g}", channels(r)) for r in (0.25, 0.5, 0.75)],
    "layer-only": [(f"blocks -{k}", {"model.blocks_removed": k}) for k in (1, 2, 3, 4)],
    "hybrid": [(f"channels {r:g} + blocks -{k}", {**channels(r), "model.blocks_removed": k})
               for r, k in ((0.25, 1), (0.25, 2), (0.5, 1), (0.5, 2))],
}
FINETUNE = 1


def run_config(pipeline, base: dict[str, Any], overrides: dict[str, Any], exp, runtime, seed: int) -> dict[str, Any]:
    values = {**base, **overrides}
    if overrides:
        values["training.finetune_epochs"] = FINETUNE
    meter = create_meter(exp.meter.name, exp.meter.params)
    try:
        r = run_trial(pipeline, [(get_knob(n), v) for n, v in values.items()], meter, runtime, seed)
    finally:
        meter.close()
    steps = r.phases["training"].details.get("energy_breakdown", {})
    served = r.verifications["model.blocks_removed"]
    # the served workload is validation (the inference phase) + test (the held-out window)
    inference_j = r.phases["inference"].energy_j + (r.held_out.energy_j if r.held_out else 0.0)
    return {
        "total_j": r.energy_j + (r.held_out.energy_j if r.held_out else 0.0), "inference_j": inference_j,
        "post_dense_j": sum((steps.get(k) or {}).get("energy_j") or 0.0 for k in ("pruning", "finetune")) + inference_j,
        "provenance": r.provenance, "meter": r.meter,
        "test_f1": r.quality["test"]["macro_f1"], "val_f1": r.quality["validation"]["macro_f1"],
        "params": served["parameters_after"], "flops": served["flops_per_image_after"],
        "params_dense": served["parameters_before"], "flops_dense": served["flops_per_image_before"],
    }


def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """Piecewise-linear y at x over points (x, y); None outside their x range."""
    pts = sorted(points)
    if not pts or x < pts[0][0] or x > pts[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[-1][1]


def fmt(xs: list[float], digits: int = 1) -> str:
    """mean ± standard deviation (sample) over repeats."""
    m = statistics.mean(xs)
    s = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experiment", default=str(ROOT / "experiments" / "digits-cnn.yaml"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="the experiment's --quick data subset, 2 repeats")
    ap.add_argument("--json", help="write every run here")
    args = ap.parse_args()
    exp = load_experiment(args.experiment)
    if args.quick:
        exp = exp.quick_variant()
        args.repeats = min(args.repeats, 2)
    pipeline = pipeline_class(exp.pipeline)(exp.pipeline_options)
    runtime = detect_runtime(exp.device)
    base = {n: get_knob(n).default for n in pipeline.knobs}
    base.update(exp.baseline_values())
    seeds = [exp.seed + i for i in range(args.repeats)]
    n_runs = sum(len(c) for c in CONFIGS.values()) * len(seeds)
    print(f"{exp.name}: {n_runs} trials ({args.repeats} seeds); dense {base['training.epochs']} epochs at "
          f"{base['data.input_resolution']} px, pruned models fine-tune {FINETUNE} epoch; channel criterion "
          f"{base['model.channel_criterion']}, order {base['model.prune_order']}", flush=True)
    # one unmeasured warm-up: imports and first kernels are not charged to the first configuration
    warm = pipeline_class(exp.pipeline)({**exp.pipeline_options, "max_examples": 100})
    run_config(warm, base, {}, exp, runtime, exp.seed)

    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    started = time.perf_counter()
    done = 0
    for seed in seeds:
        for strategy, configs in CONFIGS.items():
            for label, overrides in configs:
                r = run_config(pipeline, base, overrides, exp, runtime, seed)
                runs.setdefault(strategy, {}).setdefault(label, []).append({"seed": seed, **r})
                done += 1
                eta = (time.perf_counter() - started) / done * (n_runs - done)
                print(f"  seed {seed} {label:<22} total {r['total_j']:6.1f} J  inference {r['inference_j']:5.2f} J  "
                      f"post-dense {r['post_dense_j']:5.2f} J  test F1 {r['test_f1']:.4f}  "
                      f"params {r['params']:>7,}  FLOPs {r['flops'] / 1e6:6.2f} M  [{done}/{n_runs}, ETA {eta / 60:.1f} min]",
                      flush=True)
    meter, provenance = runs["dense"]["dense"][0]["meter"], runs["dense"]["dense"][0]["provenance"]

    print(f"\nEnergy: meter {meter}, {provenance}. Mean ± sample std over {len(seeds)} seeds.")
    header = (f"{'strategy':<13} {'configuration':<22} {'total J':>15} {'inference J':>13} {'post-dense J':>13} "
              f"{'test macro-F1':>16} {'val macro-F1':>16} {'params':>9} {'MFLOPs/img':>10}")
    print(header)
    print("-" * len(header))
    for strategy, configs in runs.items():
        for label, rs in configs.items():
            print(f"{strategy:<13} {label:<22} {fmt([r['total_j'] for r in rs]):>15} "
                  f"{fmt([r['inference_j'] for r in rs], 2):>13} {fmt([r['post_dense_j'] for r in rs], 2):>13} "
                  f"{fmt([r['test_f1'] for r in rs], 4):>16} {fmt([r['val_f1'] for r in rs], 4):>16} "
                  f"{rs[0]['params']:>9,} {rs[0]['flops'] / 1e6:>10.2f}")

    verdicts: dict[str, Any] = {}
    for axis in ("inference_j", "post_dense_j"):
        print(f"\nMatched on {axis.replace('_j', ' J')}: hybrid test macro-F1 minus the other strategy's, read off its "
              f"curve (same seed) at the hybrid's energy; mean ± std over seeds (n matched)")
        diffs: dict[str, list[float]] = {"channel-only": [], "layer-only": []}
        for label, rs in runs["hybrid"].items():
            cells = []
            for other in diffs:
                per_seed = []
                for r in rs:
                    curve = [(o[axis], o["test_f1"]) for cfg in runs[other].values() for o in cfg if o["seed"] == r["seed"]]
                    f1 = interpolate(curve, r[axis])
                    if f1 is not None:
                        per_seed.append(r["test_f1"] - f1)
                diffs[other].extend(per_seed)
                cells.append(f"vs {other}: {fmt(per_seed, 4) if per_seed else 'out of range':>17} (n={len(per_seed)})")
            print(f"  {label:<22} " + "   ".join(cells))
        verdicts[axis] = {}
        for other, d in diffs.items():
            if not d:
                verdict = "no hybrid point fell inside its energy range: no comparison"
            else:
                m = statistics.mean(d)
                s = statistics.stdev(d) if len(d) > 1 else 0.0
                wins = sum(x > 0 for x in d)
                if abs(m) <= s or min(wins, len(d) - wins) > len(d) // 4:
                    verdict = f"no clear winner: {m:+.4f} ± {s:.4f} macro-F1, hybrid ahead in {wins}/{len(d)} matches"
                else:
                    verdict = (f"{'hybrid' if m > 0 else other} wins: {m:+.4f} ± {s:.4f} macro-F1, "
                               f"hybrid ahead in {wins}/{len(d)} matches")
            verdicts[axis][other] = verdict
            print(f"  verdict vs {other}: {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps({"experiment": exp.name, "seeds": seeds, "finetune_epochs": FINETUNE,
                                               "meter": meter, "provenance": provenance, "runs": runs,
                                               "verdicts": verdicts}, indent=1))
        print(f"\nruns written to {args.json}")


if __name__ == "__main__":
    main()
