"""Meter overhead: what one window costs, and its share of a 1 s window, for every meter available here.

    python benchmarks/meter_overhead.py [--windows 200] [--json]

Per meter: building it (search.py builds one per trial), the first window (backends that probe hardware lazily pay then), the mean wall and
process-CPU cost of an empty begin/end pair over ``--windows`` pairs, that cost as a share of a
1 s window (target < 0.5 %), and the CPU its background threads burn during a 1 s idle window.
Composite is benchmarked when a GPU is present. Keep runs short on shared machines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from greenknobs.meters import METERS, create_meter

TARGET_PCT = 0.5


def _cpu() -> float:
    return time.process_time()


def bench(name: str, windows: int) -> dict:
    t0 = time.perf_counter()
    meter = create_meter(name)
    build_s = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        with meter.window("first"):
            pass
        first_s = time.perf_counter() - t0

        wall0, cpu0 = time.perf_counter(), _cpu()
        for _ in range(windows):
            meter.begin_window("w")
            meter.end_window("w")
        wall = (time.perf_counter() - wall0) / windows
        cpu = (_cpu() - cpu0) / windows

        # Background cost: CPU this process spends while a window is open and the code sleeps,
        # minus the same sleep with no window.
        c0 = _cpu()
        time.sleep(1.0)
        bare = _cpu() - c0
        c0 = _cpu()
        with meter.window("idle"):
            time.sleep(1.0)
        bg = max(0.0, _cpu() - c0 - bare - cpu)
    finally:
        meter.close()
    return {"meter": meter.label, "build_s": build_s, "first_window_s": first_s, "window_wall_ms": wall * 1e3,
            "window_cpu_ms": cpu * 1e3, "share_of_1s_pct": wall * 100.0, "background_cpu_ms_per_s": bg * 1e3,
            "meets_target": (wall + bg) * 100.0 < TARGET_PCT,
            # shortest window whose begin/end cost stays under the target (background cost scales with it)
            "min_window_for_target_s": wall / (TARGET_PCT / 100.0 - bg) if bg < TARGET_PCT / 100.0 else float("inf"),
            "windows": windows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=200, help="empty windows per meter (default 200)")
    ap.add_argument("--meters", nargs="*", help="subset of meters (default: every available one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    names = args.meters or [n for n, cls in METERS.items() if cls.probe().available]
    rows = []
    for name in names:
        rows.append(bench(name, args.windows if name != "codecarbon" else max(10, args.windows // 4)))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"| meter | build, once per trial (s) | first window (s) | per window, wall (ms) | per window, CPU (ms) | share of 1 s window | "
          f"background CPU (ms/s) | < {TARGET_PCT} % |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ok = "yes" if r["meets_target"] else f"NO (needs >= {r['min_window_for_target_s']:.1f} s)"
        print(f"| {r['meter']} | {r['build_s']:.3f} | {r['first_window_s']:.3f} | {r['window_wall_ms']:.3f} | {r['window_cpu_ms']:.3f} | "
              f"{r['share_of_1s_pct']:.3f} % | {r['background_cpu_ms_per_s']:.2f} | {ok} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
