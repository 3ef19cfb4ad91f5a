"""Near-duplicates across an experiment's seeded split, by split pair, before and after dropping them.

    python benchmarks/near_duplicates.py experiments/bbc-news-minilm.yaml [--threshold 0.8] [--quick]

Reads the dataset and splits it exactly as ``greenknobs validate`` and the data phase do (its seed,
split fractions and max_examples), once with ``pipeline.dedup: exact`` (what every run did before)
and once with ``pipeline.dedup: near``, and prints a Markdown table of near-duplicate pairs (word
3-gram Jaccard >= the threshold) per split pair, with the rows dropped before the split.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from greenknobs.config import check_inputs, load_experiment
from greenknobs.ml.dedup import NEAR_THRESHOLD


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("experiment")
    ap.add_argument("--threshold", type=float, default=NEAR_THRESHOLD)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    exp = load_experiment(args.experiment)
    if args.quick:
        exp = exp.quick_variant()
    runs = {}
    for mode in ("exact", "near"):
        options = {**exp.pipeline_options, "dedup": mode, "near_duplicate_threshold": args.threshold}
        runs[mode] = check_inputs(dataclasses.replace(exp, pipeline_options=options))
    split = exp.pipeline_options["split"]
    before = runs["exact"]["near_duplicates"]
    print(f"{exp.name}: seed {exp.seed}, split {split['train']:g}/{split['validation']:g}/{split['test']:g}; "
          f"{before['method']}\n")
    print("| split pair | pipeline.dedup: exact (before) | pipeline.dedup: near (after) |")
    print("|---|---:|---:|")
    after = runs["near"]["near_duplicates"]
    for name in before["by_split_pair"]:
        print(f"| {name} | {before['by_split_pair'][name]} | {after['by_split_pair'][name]} |")
    print(f"| **all pairs** | {before['pairs']} | {after['pairs']} |")
    print(f"| **across splits** | {before['across_splits']} | {after['across_splits']} |")
    print(f"| pairs with different labels | {before['label_conflicts']} | {after['label_conflicts']} |")
    for mode in ("exact", "near"):
        r = runs[mode]
        print(f"| rows split ({mode}) | {r['rows']} rows: {r['duplicates_dropped']} exact + "
              f"{r['near_duplicates_dropped']} near dropped before the split | split sizes "
              f"{r['near_duplicates']['split_sizes']} |")
    print(f"\nexact duplicates with different labels: {runs['exact']['label_conflicts']['texts']}")


if __name__ == "__main__":
    main()
