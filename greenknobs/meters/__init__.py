"""Energy meters: one contract (base.EnergyMeter, named windows), one module per backend, the
registry of names and ``module:Class`` paths (registry), automatic selection (select), carbon
intensity (carbon) and noise handling (noise)."""

from greenknobs.meters.base import EnergyMeter
from greenknobs.meters.select import METERS, auto_choice, create_meter, meter_table, meter_type, resolve
from greenknobs.phases import Availability

__all__ = ["EnergyMeter", "Availability", "METERS", "auto_choice", "create_meter", "meter_table", "meter_type",
           "resolve"]
