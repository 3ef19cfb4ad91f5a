"""Serving energy per engine: PyTorch eager, ONNX Runtime and OpenVINO, fp32, bf16 and int8, by batch size.

Trains the experiment's baseline once (every knob at its default; --quick: the 600-article subset),
then serves that one trained model every way greenknobs can and measures each at steady state
(greenknobs.meters.steady: warm-up excluded, whole passes over the same validation requests,
``--repeats`` windows): J per 1,000 predictions (median [min-max] over the windows, labelled with
the meter's provenance -- modelled by the cpu-model where nothing measures joules), latency p50/p95
per request batch, and validation macro-F1 of the whole validation split. Then, per batch size, the
best engine (lowest J/1k among engine rows keeping >= 99 % of PyTorch fp32's validation F1) against
PyTorch fp32 eager and PyTorch dynamic int8. The test split is never read.

    python benchmarks/serving_engines.py experiments/bbc-news-minilm.yaml [--quick] [--batch-sizes 1,8,32]
        [--repeats 3] [--window-s 3] [--requests 128] [--out benchmarks/results/serving_engines.json]
    python benchmarks/serving_engines.py experiments/bbc-news-minilm.yaml --smoke   # ~3 min: 100 articles, tiny windows

Every window notes the host's load beside it; a cell with contended windows says so (modelled
figures include wall time, so other jobs on the machine inflate them): run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from greenknobs.config import load_experiment
from greenknobs.meters import create_meter
from greenknobs.meters.steady import ServingConfig, measure
from greenknobs.ml import engines, metrics, openvino_engine
from greenknobs.ml.precision import cast_model
from greenknobs.ml.quantize import quantize_dynamic_int8
from greenknobs.pipeline import execute_trial, pipeline_class
from greenknobs.runtime import detect_runtime, machine
from pipelines.text_classification import pad_batch

# (label, engine, quantization, precision)
VARIANTS = [("torch fp32", "torch", "none", "fp32"), ("torch int8 (dynamic)", "torch", "dynamic_int8", "fp32"),
            ("torch bf16", "torch", "none", "bf16"),
            ("onnxruntime fp32", "onnxruntime", "none", "fp32"),
            ("onnxruntime int8 (dynamic)", "onnxruntime", "dynamic_int8", "fp32"),
            ("onnxruntime int8 (static)", "onnxruntime", "static_int8", "fp32"),
            ("openvino fp32", "openvino", "none", "fp32"), ("openvino bf16", "openvino", "none", "bf16"),
            ("openvino int8 (static)", "openvino", "static_int8", "fp32"),
            ("openvino int8 (static) + bf16", "openvino", "static_int8", "bf16")]
TARGET_RATIO, TARGET_F1 = 3.0, 0.99


def serving_model(trained, engine: str, quantization: str, precision: str, ctx, device: str):
    """A copy of the trained model served the way one variant serves it (engines build on first call)."""
    model = copy.deepcopy(trained).eval()
    if engine == "torch":
        if precision != "fp32":  # what inference.precision does with PyTorch: cast the model as serving starts
            return cast_model(model, precision), None
        return quantize_dynamic_int8(model) if quantization == "dynamic_int8" else model, None
    ev = engines.EngineEvidence()
    engines.serve_through(model, engine, quantization, ev, phase=lambda: "inference", device=device,
                          calibration=ctx.train, pad_id=ctx.pad_id or 0, precision=precision)
    return model, ev


def batches_of(rows, size: int, pad_id: int, device: str):
    return [tuple(t.to(device) for t in pad_batch([r["input_ids"] for r in rows[s: s + size]], pad_id))
            for s in range(0, len(rows), size)]


def predict(model, batches) -> list[int]:
    out: list[int] = []
    with torch.inference_mode():
        for ids, mask in batches:
            out.extend(model(input_ids=ids, attention_mask=mask).logits.argmax(-1).tolist())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("experiment")
    ap.add_argument("--quick", action="store_true", help="the experiment's --quick subset (600 articles)")
    ap.add_argument("--smoke", action="store_true", help="100 articles, batch sizes 1,8, 2 windows of 0.3 s: checks it runs")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--repeats", type=int, default=3, help="meter windows per cell (the spread)")
    ap.add_argument("--window-s", type=float, default=3.0)
    ap.add_argument("--warmup-s", type=float, default=1.0)
    ap.add_argument("--requests", type=int, default=128, help="validation rows in the request workload (whole passes per window)")
    ap.add_argument("--engines", default="torch,onnxruntime,openvino")
    ap.add_argument("--openvino-config", action="append", metavar="KEY=VALUE[,KEY=VALUE]",
                    help="also serve the OpenVINO variants compiled with these settings over greenknobs' own "
                         "(openvino_engine.COMPILE_CONFIG), e.g. INFERENCE_PRECISION_HINT=bf16; repeatable: a probe, "
                         "not what the knob serves")
    ap.add_argument("--out", default="benchmarks/results/serving_engines.json")
    args = ap.parse_args()
    exp = load_experiment(args.experiment)
    if args.quick:
        exp = exp.quick_variant()
    options = dict(exp.pipeline_options)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    cfg = ServingConfig(measure=True, requests=args.requests, warmup_s=args.warmup_s, window_s=args.window_s,
                        windows=args.repeats)
    if args.smoke:
        options["max_examples"] = 100
        sizes, cfg = [1, 8], ServingConfig(measure=True, requests=32, warmup_s=0.1, window_s=0.3, windows=2)
    pipeline = pipeline_class(exp.pipeline)(pipeline_class(exp.pipeline).validate_options(options))
    runtime = detect_runtime(exp.device)
    wanted = set(args.engines.split(","))
    variants = [(*v, {}) for v in VARIANTS if v[1] in wanted and engines.availability(v[1], runtime.device).available]
    for spec in args.openvino_config or []:  # probes: the OpenVINO variants again, compiled otherwise
        config = dict(kv.split("=", 1) for kv in spec.split(","))
        variants += [(f"{label} [{spec}]", e, q, p, config) for label, e, q, p, c in list(variants)
                     if e == "openvino" and not c]

    meter = create_meter(exp.meter.name, exp.meter.params)
    started = time.perf_counter()
    try:
        result, ctx = execute_trial(pipeline, [(s.knob, s.default) for s in exp.knobs], meter, runtime, exp.seed)
        print(f"trained the baseline: {result.energy_j:.0f} J {result.provenance} by {result.meter}, "
              f"{result.time_s:.0f} s; validation {len(ctx.validation)} rows, threads {torch.get_num_threads()}", flush=True)
        truth = [r["label"] for r in ctx.validation]
        requests = ctx.validation[: cfg.requests]
        rows = []
        for label, engine, quantization, precision, config in variants:
            own = dict(openvino_engine.COMPILE_CONFIG)
            openvino_engine.COMPILE_CONFIG.update(config)  # sessions build on the first call, just below
            model, ev = serving_model(ctx.model, engine, quantization, precision, ctx, runtime.device)
            t0 = time.perf_counter()
            f1 = metrics.macro_f1(truth, predict(model, batches_of(ctx.validation, 32, ctx.pad_id, runtime.device)))
            first_s = time.perf_counter() - t0  # includes the export and the engine's build
            openvino_engine.COMPILE_CONFIG.clear()
            openvino_engine.COMPILE_CONFIG.update(own)
            for size in sizes:
                work = batches_of(requests, size, ctx.pad_id, runtime.device)

                def serve(i: int, work=work, model=model) -> int:
                    with torch.inference_mode():
                        model(input_ids=work[i][0], attention_mask=work[i][1]).logits.argmax(-1)
                    return len(work[i][0])

                rec, _ = measure(meter, serve, len(work), cfg, len(requests), size)
                row = {"variant": label, "engine": engine, "quantization": quantization, "precision": precision,
                       "batch_size": size,
                       "j_per_1k": rec["j_per_1k"], "j_per_1k_min": rec["j_per_1k_min"], "j_per_1k_max": rec["j_per_1k_max"],
                       "provenance": rec["provenance"], "p50_ms": rec["latency_ms"]["p50"], "p95_ms": rec["latency_ms"]["p95"],
                       "validation_macro_f1": f1, "windows": rec["windows"], "first_pass_s": round(first_s, 2),
                       "contended_windows": rec["contended_windows"],
                       "int8_nodes_ran": (ev.ran or {}).get("int8_nodes_ran") if ev else None,
                       "bf16_nodes_ran": (ev.ran or {}).get("bf16_nodes_ran") if ev else None, "compile_config": config,
                       "providers": ev.providers if ev else ["torch eager"]}
                rows.append(row)
                print(f"{label:<28} batch {size:>3}: {row['j_per_1k']:8.1f} J/1k [{row['j_per_1k_min']:.1f}-"
                      f"{row['j_per_1k_max']:.1f}] {row['provenance']}  p50 {row['p50_ms']:7.1f} ms  p95 "
                      f"{row['p95_ms']:7.1f} ms  val macro-F1 {f1:.4f}"
                      + (f"  ({row['contended_windows']} of {len(rec['windows'])} windows contended)"
                         if row["contended_windows"] else ""), flush=True)
            del model
    finally:
        meter.close()
    verdicts = compare(rows, sizes)
    costlier = int8_costlier(rows)
    out = {"command": "python " + " ".join(sys.argv), "commit": _commit(), "date": datetime.datetime.now(datetime.UTC).isoformat(),
           "machine": machine(), "meter": f"{result.meter} ({result.provenance})", "threads": torch.get_num_threads(),
           "experiment": exp.name, "validation_rows": len(ctx.validation), "serving": cfg.to_dict(),
           "wall_s": round(time.perf_counter() - started, 1), "rows": rows, "best_vs_torch": verdicts,
           "int8_costlier_than_fp32": costlier,
           "note": "J per 1,000 predictions at steady state; modelled figures estimate, they do not measure"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    print(f"written to {args.out}")


def compare(rows: list[dict], sizes: list[int]) -> list[dict]:
    """Per batch size: the best engine keeping >= 99 % of PyTorch fp32's validation F1, against PyTorch."""
    out = []
    for size in sizes:
        at = [r for r in rows if r["batch_size"] == size]
        fp32 = next((r for r in at if r["engine"] == "torch" and r["quantization"] == "none"
                     and r.get("precision", "fp32") == "fp32"), None)
        int8 = next((r for r in at if r["engine"] == "torch" and r["quantization"] == "dynamic_int8"), None)
        if fp32 is None:
            continue
        ok = [r for r in at if r["engine"] != "torch" and r["validation_macro_f1"] >= TARGET_F1 * fp32["validation_macro_f1"]]
        if not ok:
            print(f"batch {size}: no engine kept {TARGET_F1:.0%} of PyTorch fp32's validation F1")
            continue
        best = min(ok, key=lambda r: r["j_per_1k"])
        # PyTorch's own best setting within the bar (dynamic int8, or a bf16 cast on CPUs with AMX)
        torch_ok = [r for r in at if r["engine"] == "torch" and r["validation_macro_f1"] >= TARGET_F1 * fp32["validation_macro_f1"]]
        torch_best = min(torch_ok, key=lambda r: r["j_per_1k"])
        v = {"batch_size": size, "best": best["variant"], "j_per_1k": best["j_per_1k"],
             "best_torch": torch_best["variant"], "vs_best_torch": torch_best["j_per_1k"] / best["j_per_1k"],
             "vs_torch_fp32": fp32["j_per_1k"] / best["j_per_1k"],
             "vs_torch_int8": int8["j_per_1k"] / best["j_per_1k"] if int8 else None,
             "f1_retained": best["validation_macro_f1"] / fp32["validation_macro_f1"] if fp32["validation_macro_f1"] else None}
        v["target_met"] = v["vs_torch_fp32"] >= TARGET_RATIO and (v["f1_retained"] or 0) >= TARGET_F1
        out.append(v)
        vs8 = f"{v['vs_torch_int8']:.2f}x" if v["vs_torch_int8"] else "-"
        print(f"batch {size}: best {v['best']} {v['j_per_1k']:.1f} J/1k: {v['vs_torch_fp32']:.2f}x lower than PyTorch "
              f"fp32 eager, {vs8} vs PyTorch dynamic int8, {v['vs_best_torch']:.2f}x vs PyTorch's best ({v['best_torch']}), "
              f"{100 * (v['f1_retained'] or 0):.1f} % of its validation F1 "
              f"(target >= {TARGET_RATIO:g}x at >= {TARGET_F1:.0%}: {'met' if v['target_met'] else 'not met'})")
    return out


def int8_costlier(rows: list[dict]) -> list[str]:
    """int8 that costs more per 1,000 predictions than its float twin (same engine, precision and batch size)."""
    out = []
    for r in rows:
        twin = next((f for f in rows if f["engine"] == r["engine"] and f["batch_size"] == r["batch_size"]
                     and f["quantization"] == "none" and f.get("precision") == r.get("precision")
                     and f.get("compile_config") == r.get("compile_config")), None)
        if r["quantization"] != "none" and twin and r["j_per_1k"] > twin["j_per_1k"]:
            out.append(f"{r['variant']} at batch {r['batch_size']}: {r['j_per_1k']:.1f} J/1k, more than its float "
                       f"twin's {twin['j_per_1k']:.1f} J/1k")
            print(f"warning: {out[-1]}")
    return out


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
