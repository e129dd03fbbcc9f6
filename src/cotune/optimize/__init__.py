"""Optimizers: few-shot bootstrap, random search, MIPRO (and, later, fine-tuning)."""

from cotune.optimize.base import Candidate, OptimizationResult, OptimizationRun, Optimizer
from cotune.optimize.bootstrap import BootstrapFewShot, LabeledFewShot
from cotune.optimize.journal import Journal, MemoryJournal
from cotune.optimize.random_search import BootstrapRandomSearch
from cotune.optimize.reporting import ConsoleReporter, CostEstimate, LogReporter, Reporter
from cotune.optimize.traces import SuccessfulTrace, collect_successful_traces

__all__ = [
    "BootstrapFewShot",
    "BootstrapRandomSearch",
    "Candidate",
    "ConsoleReporter",
    "CostEstimate",
    "Journal",
    "LabeledFewShot",
    "LogReporter",
    "MemoryJournal",
    "OptimizationResult",
    "OptimizationRun",
    "Optimizer",
    "Reporter",
    "SuccessfulTrace",
    "collect_successful_traces",
]
