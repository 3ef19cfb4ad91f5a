"""GPU check: a ~20 s matmul and a small fine-tune step inside zeus and nvml windows at once.

    python scripts/gpu_check.py [--seconds 20] [--finetune-steps 30] [--json out.json]

Prints joules, average watts and seconds per workload per meter (the two read the same NVML
counter, so they should agree within a few per cent), an idle baseline, and the GPUs' power-limit
range. READ-ONLY: it never sets power limits, clocks, persistence or MIG mode, and it checks that
the limits it read at the start are unchanged at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from greenknobs.devices.nvml import probe_nvml
from greenknobs.meters.base import EnergyMeter
from greenknobs.meters.nvml import NvmlMeter
from greenknobs.meters.zeus_meter import ZeusMeter


def matmul(device: str, seconds: float) -> dict[str, Any]:
    """Square matmuls (bf16 on GPU) until ``seconds`` have passed; returns the achieved TFLOP/s."""
    n = 8192 if device == "cuda" else 256
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    iters, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            a @ b
        iters += 10
        if device == "cuda":
            torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return {"iterations": iters, "tflops": 2 * n**3 * iters / wall / 1e12}


def finetune(device: str, steps: int) -> dict[str, Any]:
    """``steps`` AdamW steps of a MiniLM-sized BERT classifier (random weights) on random tokens."""
    from greenknobs.ml import hf

    big = device == "cuda"
    model = hf.tiny_bert_classifier(num_labels=5, layers=6 if big else 2, hidden=384 if big else 32,
                                    vocab=30522 if big else 100).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    batch, length = (32, 128) if big else (4, 16)
    ids = torch.randint(0, model.config.vocab_size, (batch, length), device=device)
    labels = torch.randint(0, 5, (batch,), device=device)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"steps": steps, "batch": batch, "seq_len": length, "final_loss": float(loss.detach())}


def measure(meters: list[EnergyMeter], key: str, work: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
    """Run ``work`` once inside a window of every meter (windows opened together, closed together)."""
    for m in meters:
        m.begin_window(key)
    facts = work()
    rows = []
    for m in reversed(meters):
        r = m.end_window(key)
        rows.append({"workload": key, "meter": r.meter, "provenance": r.provenance, "energy_j": r.energy_j,
                     "time_s": r.time_s, "avg_w": r.avg_power_w,
                     "gpu_j": r.components.get("gpu", {}).get("energy_j"), "meter_params": r.meter_params, **facts})
    return rows


def run_checks(device: str, seconds: float, steps: int, idle_s: float = 3.0) -> dict[str, Any]:
    nvml = NvmlMeter()
    zeus = ZeusMeter()
    try:
        limits_before = nvml.power_limits_w()
        meters = [zeus, nvml]
        rows = measure(meters, "idle", lambda: (time.sleep(idle_s), {})[1])
        rows += measure(meters, "matmul", lambda: matmul(device, seconds))
        finetune(device, 2)  # warm-up: kernel selection and allocator growth stay out of the figure
        rows += measure(meters, "finetune", lambda: finetune(device, steps))
        limits_after = nvml.power_limits_w()
    finally:
        zeus.close()
        nvml.close()
    if limits_after != limits_before:
        raise SystemExit(f"power limits changed during the check (this script never sets them): "
                         f"{limits_before} -> {limits_after}")
    return {"device": device, "power_limits": limits_before, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="matmul duration (default 20)")
    ap.add_argument("--finetune-steps", type=int, default=30)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    nv = probe_nvml()
    if not nv.available:
        print(f"gpu_check: no NVIDIA GPU to check: {nv.reason}")
        return 2
    if not torch.cuda.is_available():
        print("gpu_check: NVML sees a GPU but this torch build has no CUDA")
        return 2
    out = run_checks("cuda", args.seconds, args.finetune_steps)
    for lim in out["power_limits"]:
        print(f"GPU {lim['gpu']} {lim['name']}: power limit {lim['limit_w']:.0f} W "
              f"(default {lim['default_w']:.0f} W, allowed {lim['min_w']:.0f}-{lim['max_w']:.0f} W) -- read only")
    print(f"{'workload':<9} {'meter':<6} {'joules':>10} {'avg W':>8} {'seconds':>8}  notes")
    for r in out["rows"]:
        note = f"{r['tflops']:.0f} TFLOP/s" if "tflops" in r else (f"{r['steps']} steps" if "steps" in r else "")
        print(f"{r['workload']:<9} {r['meter']:<6} {r['energy_j']:>10.1f} {r['avg_w']:>8.1f} {r['time_s']:>8.2f}  "
              f"{r['provenance']}; {note}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
