"""Hyperparameter search on Optuna: `tuneforge tune CONFIG --space KEY=DIST(ARGS) --trials N`."""

from tuneforge.tune.results import trial_rows, trials_table, write_best_config, write_report
from tuneforge.tune.search import SearchPlan, open_study, plan_search, run_search
from tuneforge.tune.space import Param, parse_space

__all__ = [
    "Param",
    "SearchPlan",
    "open_study",
    "parse_space",
    "plan_search",
    "run_search",
    "trial_rows",
    "trials_table",
    "write_best_config",
    "write_report",
]
