"""Find exact and near-duplicate texts (training sets scraped from news repeat articles).

exact: identical after lower-casing and collapsing whitespace.
near:  Jaccard similarity of word 3-gram sets >= NEAR_THRESHOLD. Candidates come from MinHash
       with banded LSH (numpy, so a few thousand articles take well under a second); every
       candidate pair is then confirmed with the exact Jaccard, so nothing is dropped on a hash
       collision alone.
"""

from __future__ import annotations

import re
import zlib
from collections import defaultdict

import numpy as np

NEAR_THRESHOLD = 0.8
_PERMS, _BANDS = 64, 16  # 16 bands x 4 rows: a pair at Jaccard 0.8 is a candidate with p ~ 0.9999
_PRIME = (1 << 61) - 1


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


def shingles(text: str, n: int = 3) -> set[int]:
    words = normalise(text).split()
    grams = [" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))]
    return {zlib.crc32(g.encode()) for g in grams}


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _minhash(sets: list[set[int]], seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, _PRIME, _PERMS, dtype=np.uint64)
    b = rng.integers(0, _PRIME, _PERMS, dtype=np.uint64)
    out: np.ndarray = np.empty((len(sets), _PERMS), dtype=np.uint64)
    for i, s in enumerate(sets):
        x = np.fromiter(s, dtype=np.uint64, count=len(s)) if s else np.zeros(1, dtype=np.uint64)
        out[i] = ((np.outer(a, x) + b[:, None]) % _PRIME).min(axis=1)  # uint64 wraps; still a hash family
    return out


def duplicates(texts: list[str], mode: str) -> list[int]:
    """Indices to drop so that no two kept texts are duplicates under ``mode``; the first copy stays."""
    if mode == "off":
        return []
    if mode == "exact":
        seen: set[str] = set()
        exact: list[int] = []
        for i, t in enumerate(texts):
            key = normalise(t)
            if key in seen:
                exact.append(i)
            seen.add(key)
        return exact
    if mode != "near":
        raise ValueError(f"unknown dedup mode {mode!r}")
    sets = [shingles(t) for t in texts]
    sig = _minhash(sets)
    rows = _PERMS // _BANDS
    candidates: dict[int, set[int]] = defaultdict(set)
    for band in range(_BANDS):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for i in range(len(texts)):
            buckets[sig[i, band * rows:(band + 1) * rows].tobytes()].append(i)
        for members in buckets.values():
            for j in members[1:]:
                candidates[j].update(m for m in members if m < j)
    drop: set[int] = set()
    for j in range(len(texts)):
        if any(i not in drop and jaccard(sets[i], sets[j]) >= NEAR_THRESHOLD for i in candidates.get(j, ())):
            drop.add(j)
    return sorted(drop)
