"""Find exact and near-duplicate texts (training sets scraped from news repeat articles).

exact: identical after lower-casing and collapsing whitespace.
near:  Jaccard similarity of word 3-gram sets >= a threshold (NEAR_THRESHOLD, 0.8, unless told
       otherwise). Candidates come from MinHash with banded LSH (numpy, so a few thousand
       articles take well under a second); the banding (rows per band) is chosen for the threshold
       so a pair *at* the threshold becomes a candidate with probability >= 0.999; every candidate
       pair is then confirmed with the exact Jaccard, so nothing is reported or dropped on a hash
       collision alone.
"""

from __future__ import annotations

import re
import zlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

NEAR_THRESHOLD = 0.8
THRESHOLD_RANGE = (0.3, 1.0)  # below 0.3, 64 permutations cannot find pairs at the threshold reliably
_PERMS = 64
_PRIME = (1 << 61) - 1
_WANTED_RECALL = 0.999


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


def candidate_probability(jaccard_value: float, rows: int) -> float:
    """Probability that a pair with this Jaccard shares at least one band of ``rows`` MinHash rows."""
    return 1.0 - (1.0 - jaccard_value ** rows) ** (_PERMS // rows)


def rows_per_band(threshold: float) -> int:
    """The most rows per band (fewest false candidates) that still finds a pair at ``threshold``
    with probability >= 0.999: 4 rows x 16 bands at 0.8, 2 x 32 at 0.5, 1 x 64 at 0.3."""
    for rows in (16, 8, 4, 2):
        if candidate_probability(threshold, rows) >= _WANTED_RECALL:
            return rows
    return 1


def check_threshold(threshold: float) -> float:
    low, high = THRESHOLD_RANGE
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not low <= threshold <= high:
        raise ValueError(f"near-duplicate threshold must be a number in [{low}, {high}], got {threshold!r}")
    return float(threshold)


@dataclass(frozen=True)
class NearPair:
    """Two texts (indices into the list searched, first < second) at Jaccard >= the threshold."""

    first: int
    second: int
    jaccard: float


def method(threshold: float) -> str:
    rows = rows_per_band(threshold)
    return (f"word 3-gram Jaccard >= {threshold:g}: MinHash ({_PERMS} permutations, {_PERMS // rows} bands x {rows} "
            f"rows; a pair at the threshold is a candidate with p = {candidate_probability(threshold, rows):.4f}), "
            f"every candidate confirmed by its exact Jaccard")


def near_pairs(texts: list[str], threshold: float = NEAR_THRESHOLD) -> list[NearPair]:
    """Every pair of texts whose word 3-gram Jaccard is >= ``threshold`` (confirmed exactly)."""
    threshold = check_threshold(threshold)
    sets = [shingles(t) for t in texts]
    if len(sets) < 2:
        return []
    sig = _minhash(sets)
    rows = rows_per_band(threshold)
    candidates: set[tuple[int, int]] = set()
    for band in range(_PERMS // rows):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for i in range(len(texts)):
            buckets[sig[i, band * rows:(band + 1) * rows].tobytes()].append(i)
        for members in buckets.values():
            for x, j in enumerate(members):
                candidates.update((i, j) for i in members[:x])
    out = []
    for i, j in sorted(candidates):
        score = jaccard(sets[i], sets[j])
        if score >= threshold:
            out.append(NearPair(i, j, score))
    return out


def duplicates(texts: list[str], mode: str, threshold: float = NEAR_THRESHOLD) -> list[int]:
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
    return later_copies(near_pairs(texts, threshold))


def later_copies(pairs: list[NearPair]) -> list[int]:
    """Indices to drop so that no two kept texts form one of ``pairs``, keeping the first of each group."""
    earlier: dict[int, list[int]] = defaultdict(list)
    for p in pairs:
        earlier[p.second].append(p.first)
    drop: set[int] = set()
    for j in sorted(earlier):  # a text goes when a text before it that is kept is its near-duplicate
        if any(i not in drop for i in earlier[j]):
            drop.add(j)
    return sorted(drop)
