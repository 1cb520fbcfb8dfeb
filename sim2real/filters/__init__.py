"""Safety and passivity filters between an exported policy and a robot (numpy only; no torch).

    chain = build_chain([{"type": "box", "low": -1, "high": 1}, {"type": "rate", "max_delta": 0.1}], action_dim=6)
    chain.reset(batch=1)
    action, report = chain(policy_action, obs)   # report.intervened / report.fallback / report.reasons

Each filter's docstring states its guarantee and its assumptions. ``chain.describe()`` goes into the
export sidecar, and ``build_chain(sidecar["safety"], ...)`` rebuilds the same chain on the robot.
"""

from sim2real.filters.base import FilterReport, SafetyFilter
from sim2real.filters.box import BoxFilter
from sim2real.filters.cbf import CBFFilter
from sim2real.filters.chain import FILTERS, FilterChain, build_chain
from sim2real.filters.energy_tank import EnergyTankFilter
from sim2real.filters.rate import RateFilter
from sim2real.filters.workspace import WorkspaceFilter

__all__ = [
    "FILTERS",
    "BoxFilter",
    "CBFFilter",
    "EnergyTankFilter",
    "FilterChain",
    "FilterReport",
    "RateFilter",
    "SafetyFilter",
    "WorkspaceFilter",
    "build_chain",
]
