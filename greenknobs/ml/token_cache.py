"""Reuse tokenised text across trials: an on-disk cache keyed by tokenizer, max length and text.

Tokenising is the data phase's main cost and is identical in every trial that shares the
tokenizer and max length. The cache is one JSON file per (tokenizer, max length); each entry is
keyed by a hash of the text. Directory: $GREENKNOBS_CACHE_DIR, else ~/.cache/greenknobs/tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    return Path(os.environ.get("GREENKNOBS_CACHE_DIR", Path.home() / ".cache" / "greenknobs")) / "tokens"


def cache_file(tokenizer_id: str, max_len: int) -> Path:
    tag = hashlib.sha256(f"{tokenizer_id}|{max_len}".encode()).hexdigest()[:16]
    return cache_dir() / f"{tag}.json"


def _key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def tokenize(texts: list[str], encode: Callable[[list[str]], list[list[int]]], tokenizer_id: str,
             max_len: int, use_cache: bool) -> tuple[list[list[int]], dict[str, Any]]:
    """Token ids for ``texts``; stats say how many came from the cache and how many were tokenised."""
    if not use_cache:
        return (encode(texts) if texts else []), {"mode": "off", "hits": 0, "tokenized": len(texts)}
    path = cache_file(tokenizer_id, max_len)
    cached: dict[str, list[int]] = json.loads(path.read_text()) if path.is_file() else {}
    keys = [_key(t) for t in texts]
    hits = sum(k in cached for k in keys)
    missing = sorted({k: i for i, k in enumerate(keys) if k not in cached}.values())
    if missing:
        for i, ids in zip(missing, encode([texts[i] for i in missing])):
            cached[keys[i]] = ids
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cached))
        tmp.replace(path)  # atomic: parallel workers never read half a file
    stats = {"mode": "hit" if not missing else "miss", "hits": hits,
             "tokenized": len(missing), "file": str(path)}
    return [cached[k] for k in keys], stats
