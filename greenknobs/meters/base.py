"""The EnergyMeter contract (after Zeus's named windows).

``begin_window(key)`` starts a measurement, ``end_window(key)`` returns a ``Measurement``;
several windows may be open at once; a duplicate key is an error. ``window(key)`` wraps the
pair as a context manager. ``probe()`` says whether the backend can run here and, if not, why.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from greenknobs.phases import Availability, Measurement


class WindowResult:
    """Filled in when a ``window`` context exits."""

    _measurement: Measurement | None = None

    @property
    def measurement(self) -> Measurement:
        if self._measurement is None:
            raise RuntimeError("the window is still open: read its measurement after the with-block")
        return self._measurement

    @measurement.setter
    def measurement(self, value: Measurement) -> None:
        self._measurement = value


class EnergyMeter(ABC):
    name: ClassVar[str]
    provenance: ClassVar[str]  # "measured" or "modelled" for this backend's figures
    measures: tuple[str, ...]  # hardware components covered: cpu, gpu, dram, ram (an instance may cover fewer)
    # Smallest window (s) whose figure is not dominated by the backend's update interval or tick.
    # Windows shorter than MIN_WINDOW_FACTOR x this are repeated (inference) or flagged (see noise.py).
    resolution_s: float = 0.1

    @classmethod
    @abstractmethod
    def probe(cls) -> Availability:
        """Can this backend produce figures on this machine? If not, say why in one line."""

    @abstractmethod
    def begin_window(self, key: str) -> None: ...

    @abstractmethod
    def end_window(self, key: str) -> Measurement: ...

    def params(self) -> dict[str, Any]:
        """Model parameters behind the figures (empty for pure hardware counters)."""
        return {}

    def close(self) -> None:
        """Release backend resources; the meter is not used afterwards."""

    @property
    def label(self) -> str:
        """Name shown in results; composites report their parts (e.g. ``nvml+cpu-model``)."""
        return self.name

    @contextmanager
    def window(self, key: str) -> Iterator[WindowResult]:
        result = WindowResult()
        self.begin_window(key)
        try:
            yield result
        finally:
            result.measurement = self.end_window(key)


class WindowRegistry:
    """Open windows by key, shared by the backends so duplicate/unknown keys fail the same way."""

    def __init__(self, meter: str):
        self._meter = meter
        self._open: dict[str, Any] = {}

    def open(self, key: str, state: Any) -> None:
        if key in self._open:
            raise ValueError(f"{self._meter}: window {key!r} is already open")
        self._open[key] = state

    def open_count(self) -> int:
        return len(self._open)

    def close(self, key: str) -> Any:
        try:
            return self._open.pop(key)
        except KeyError:
            raise ValueError(f"{self._meter}: no open window {key!r}") from None


def cuda_synchronize() -> None:
    """Wait for queued CUDA work, but only in a process that already uses CUDA through torch.

    Reads ``sys.modules`` instead of importing torch, so a meter never initialises CUDA (or
    imports torch) on its own.
    """
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        for device in range(torch.cuda.device_count()):
            torch.cuda.synchronize(device)
