"""Image datasets as lists of {"pixels": (C, H, W) float32 array in [0, 1], "label": name} dicts:
scikit-learn's bundled handwritten digits, or a user's folder with one sub-folder per class."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from greenknobs.errors import ConfigError
from greenknobs.ml import metrics

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".npy")


def check_dataset_option(ds: Any) -> None:
    """``digits`` or ``{path, channels, image_size}``."""
    if isinstance(ds, dict):
        if "path" not in ds:
            raise ConfigError("pipeline.dataset.path", "required for an image folder (one sub-folder per class)")
        extra = set(ds) - {"path", "channels", "image_size"}
        if extra:
            raise ConfigError(f"pipeline.dataset.{sorted(extra)[0]}", "unknown option; known: path, channels, image_size")
        if ds.get("channels", 3) not in (1, 3):
            raise ConfigError("pipeline.dataset.channels", f"expected 1 (grey) or 3 (RGB), got {ds.get('channels')!r}")
        size = ds.get("image_size", 32)
        if not isinstance(size, int) or isinstance(size, bool) or not 4 <= size <= 1024:
            raise ConfigError("pipeline.dataset.image_size", f"expected an integer side in [4, 1024], got {size!r}")
        if not isinstance(ds["path"], str) or not ds["path"].strip():
            raise ConfigError("pipeline.dataset.path", f"expected the path of a folder, got {ds['path']!r:.80}")
        try:
            root = Path(ds["path"]).expanduser()
            is_dir = root.is_dir()
        except (OSError, RuntimeError, ValueError) as exc:
            raise ConfigError("pipeline.dataset.path", f"{ds['path']!r:.80} is not a usable path ({type(exc).__name__})") from None
        if not is_dir:
            raise ConfigError("pipeline.dataset.path", f"no such folder: {ds['path']!r:.200}")
        classes = [p for p in root.iterdir() if p.is_dir()]
        if len(classes) < 2:
            raise ConfigError("pipeline.dataset.path", f"{ds['path']} needs one sub-folder per class (at least 2), found "
                                                       f"{len(classes)}")
    elif ds != "digits":
        raise ConfigError("pipeline.dataset", f"expected 'digits' or {{path: <folder>}}, got {ds!r:.80}")


def dataset_channels(ds: Any) -> int:
    return 1 if ds == "digits" else int(ds.get("channels", 3))


def load_digits() -> list[dict[str, Any]]:
    """1,797 grey 8 x 8 digits (scikit-learn, offline), pixels scaled from 0..16 to [0, 1]; labels "0".."9"."""
    images, labels = metrics.load_digits()
    return [{"pixels": (img / 16.0)[None].astype(np.float32), "label": str(y)} for img, y in zip(images, labels)]


def _read_image(path: Path, channels: int, size: int) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        arr = np.load(path).astype(np.float32)
        if arr.ndim == 2:
            arr = arr[None]
        elif arr.ndim == 3 and arr.shape[-1] in (1, 3) and arr.shape[0] not in (1, 3):
            arr = arr.transpose(2, 0, 1)
        if arr.max() > 1.0:
            arr = arr / 255.0
        if arr.shape[0] != channels:
            arr = arr.mean(0, keepdims=True) if channels == 1 else np.repeat(arr[:1], 3, axis=0)
        return arr  # resized with the rest, to ``size``, by resize_to
    try:
        from PIL import Image
    except ImportError:
        raise ConfigError("pipeline.dataset.path", f"reading {path.suffix} images needs Pillow (pip install pillow); "
                                                   ".npy arrays need nothing") from None
    with Image.open(path) as opened:
        img = opened.convert("L" if channels == 1 else "RGB").resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _resize_array(arr: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a (C, H, W) array (only .npy inputs need it; images use Pillow)."""
    if arr.shape[1:] == (size, size):
        return arr
    rows = (np.arange(size) * arr.shape[1] / size).astype(int)
    cols = (np.arange(size) * arr.shape[2] / size).astype(int)
    return arr[:, rows][:, :, cols]


def load_image_folder(path: str, channels: int = 3, image_size: int = 32) -> list[dict[str, Any]]:
    """Every image under ``path/<class>/``, as ``channels`` x ``image_size`` x ``image_size`` in [0, 1]."""
    root = Path(path).expanduser()
    examples = []
    for cls in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for f in sorted((root / cls).rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                try:
                    arr = _resize_array(_read_image(f, channels, image_size), image_size)
                except (OSError, ValueError) as exc:
                    raise ConfigError("pipeline.dataset.path", f"cannot read {f}: {exc}") from None
                examples.append({"pixels": np.ascontiguousarray(arr, dtype=np.float32), "label": cls})
    counts = {e["label"] for e in examples}
    if len(counts) < 2:
        raise ConfigError("pipeline.dataset.path", f"{path}: images of at least 2 classes needed, found {len(counts)}")
    return examples


def drop_duplicate_images(examples: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Keep the first of every group of pixel-identical images: run *before* splitting, so no test
    image is also a training image."""
    seen: set[str] = set()
    kept = []
    for e in examples:
        digest = hashlib.sha1(np.ascontiguousarray(e["pixels"]).tobytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            kept.append(e)
    return kept, len(examples) - len(kept)


def load_dataset(ds: Any) -> list[dict[str, Any]]:
    """The examples ``pipeline.dataset`` names (validated by ``check_dataset_option``)."""
    if ds == "digits":
        return load_digits()
    return load_image_folder(ds["path"], dataset_channels(ds), ds.get("image_size", 32))
