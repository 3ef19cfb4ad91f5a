"""The search: the Optuna study (study), running trials in it (runner: the Search facade over
objective, policies and worker), reading them back (rows), publishing the front (publish), and
riding out outages of the services it uses (outages, coordination)."""

from greenknobs.search.publish import Front, publish
from greenknobs.search.runner import Search, SearchOutcome, constraint_values, relative_figures
from greenknobs.search.study import mask_password, open_study

__all__ = ["Search", "SearchOutcome", "Front", "publish", "open_study", "mask_password", "constraint_values",
           "relative_figures"]
