"""What a running search tells the outside: the ``Reporter`` it talks to, the counters behind
"N left, ETA", and the ``SearchOutcome`` it returns."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from greenknobs.config import Experiment
from greenknobs.phases import PhaseResult
from greenknobs.records import TrialSummary
from greenknobs.search.study import Study


class Reporter(Protocol):
    def search_started(self, exp: Experiment, finished: int, planned: int, meter: dict[str, str]) -> None: ...
    def trial_started(self, number: int, index: int, planned: int, values: dict[str, Any], baseline: bool) -> None: ...
    def phase_done(self, number: int, phase: str, result: PhaseResult, energy_so_far_j: float) -> None: ...
    def trial_done(self, number: int, summary: TrialSummary | None, failure: str | None, left: int,
                   eta_s: float | None, stopped: bool = False, infeasible: bool = False) -> None: ...
    # stopped: on purpose, not failed; infeasible: a combination that cannot run here, refused before it started
    def note(self, number: int, message: str) -> None: ...  # number -1: about the search, not one trial


@dataclass
class SearchOutcome:
    study: Study
    ran: int
    failed: int
    stopped_by: str = "trial budget"  # what ended it: the trial budget, the energy budget, the timeout, the plan
    spent_j: float = 0.0  # everything the study has spent so far (trials, failures, stopped trials, warm-ups)
    # what this worker rode out: database outages, deferred MLflow logging (search/outages.py, tracking.py)
    outages: list[dict[str, Any]] = field(default_factory=list)


class Progress:
    """This worker's trial count against its plan, and an ETA from the trials it ran."""

    def __init__(self, planned: int):
        self.planned = planned
        self.index = 0
        self._durations: list[float] = []

    def started(self) -> int:
        self.index += 1
        return self.index

    def finished(self, started: float) -> None:
        """A trial that began at ``started`` (time.perf_counter) ended, however it ended."""
        self._durations.append(time.perf_counter() - started)

    def left(self) -> int:
        return max(0, self.planned - self.index)

    def eta(self) -> float | None:
        if not self._durations:
            return None
        # The baseline is usually the most expensive trial: estimate from the others once there are some.
        pool = self._durations[1:] or self._durations
        return sum(pool) / len(pool) * self.left()
