"""What acts: networks, policy heads and the observation normalizer that travels with them.

``build_head`` makes a head from its name and options; robo_rl's config layer calls it, and so
can user code that never touches a config.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from policies.heads import HEADS, PolicyHead
from policies.normalizers import ObsNormalizer


def build_head(
    name: str,
    obs_dim: int,
    action_low: np.ndarray,
    action_high: np.ndarray,
    normalize_obs: bool = False,
    obs_clip: float = 10.0,
    **options: Any,
) -> PolicyHead:
    """A head ``name`` for obs [obs_dim] and actions within [action_low, action_high]."""
    try:
        cls = HEADS[name]
    except KeyError:
        raise ValueError(f"unknown policy head {name!r}; choose one of {', '.join(HEADS)}") from None
    return cls(obs_dim, action_low, action_high, ObsNormalizer(obs_dim, normalize_obs, obs_clip), **options)


__all__ = ["HEADS", "ObsNormalizer", "PolicyHead", "build_head"]
