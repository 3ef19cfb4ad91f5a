"""One base exception, so the CLI can turn every expected failure into one clear line."""

from __future__ import annotations


class GreenknobsError(Exception):
    """Base of every error greenknobs raises on purpose (bad input, unusable backend, ...)."""


class ConfigError(GreenknobsError):
    """An experiment file is invalid; ``key`` is the dotted path of the offending entry."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class KnobError(GreenknobsError):
    """A knob could not be applied, or its verification shows it did not take effect."""


class IncompatibleKnobs(KnobError):
    """A knob combination cannot run on this machine (e.g. fp16 on a CPU); the trial is infeasible."""


class MeterUnavailable(GreenknobsError):
    """An energy meter the user asked for explicitly cannot run here; the message says why."""


class HopelessTrial(GreenknobsError):
    """Partway through training, a trial's validation quality is still at the trivial model's
    level: it cannot meet the quality floor, so it is stopped (Optuna PRUNED) to save energy."""


class KnobNotApplied(KnobError):
    """User code gave a declared knob no chance to act: it never handed over the object the knob
    acts on (``trial.model(model)``, ``trial.optimizer(opt)``, ...). Raised at the first point this
    is knowable -- before the energy of the phase it matters for is spent."""


class TrialUsageError(GreenknobsError):
    """User code used the trial API wrongly (a phase opened twice, no validation quality, a knob
    asked for that the experiment does not declare and that has no default): one line saying what."""


class ServiceOutage(GreenknobsError):
    """A service the search depends on (the study's database) stayed unreachable longer than the
    worker waits for it. Not bad input: the CLI exits with EX_TEMPFAIL (75), so a scheduler may
    restart the worker, which carries on from the study."""
