"""Layer pruning as the seed papers do it (docs/pruning.md): choose layers on calibration data,
remove or merge them, optionally compensate the magnitude gap (Prune&Comp) and heal with KD."""

from greenknobs.ml.pruning.calibration import Calibration, build_calibration
from greenknobs.ml.pruning.methods import METHODS, PruneReport, prune

__all__ = ["Calibration", "build_calibration", "METHODS", "PruneReport", "prune"]
