"""Optimizers: few-shot bootstrap, random search, MIPRO, GEPA, fine-tuning and BetterTogether."""

from cotune.optimize.base import Candidate, OptimizationResult, OptimizationRun, Optimizer
from cotune.optimize.better_together import BetterTogether
from cotune.optimize.bootstrap import BootstrapFewShot, LabeledFewShot
from cotune.optimize.finetune import BootstrapFinetune
from cotune.optimize.gepa import GEPA
from cotune.optimize.journal import Journal, MemoryJournal
from cotune.optimize.mipro import MIPRO, BayesianBootstrap, ZeroShotMIPRO
from cotune.optimize.opro import OPRO
from cotune.optimize.proposer import TIPS, GroundedProposer, Grounding, ProposerSettings
from cotune.optimize.random_search import BootstrapRandomSearch
from cotune.optimize.registry import build_optimizer, optimizer_names, register_optimizer
from cotune.optimize.reporting import ConsoleReporter, CostEstimate, LogReporter, Reporter
from cotune.optimize.traces import SuccessfulTrace, collect_successful_traces
from cotune.optimize.trials import Child, Trial
from cotune.optimize.vanilla import Vanilla

__all__ = [
    "Vanilla",
    "MIPRO",
    "GEPA",
    "OPRO",
    "TIPS",
    "BayesianBootstrap",
    "BetterTogether",
    "BootstrapFewShot",
    "BootstrapFinetune",
    "BootstrapRandomSearch",
    "Candidate",
    "Child",
    "ConsoleReporter",
    "CostEstimate",
    "GroundedProposer",
    "Grounding",
    "Journal",
    "LabeledFewShot",
    "LogReporter",
    "MemoryJournal",
    "OptimizationResult",
    "OptimizationRun",
    "Optimizer",
    "ProposerSettings",
    "Reporter",
    "SuccessfulTrace",
    "Trial",
    "ZeroShotMIPRO",
    "build_optimizer",
    "collect_successful_traces",
    "optimizer_names",
    "register_optimizer",
]
