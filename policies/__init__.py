"""What acts: networks, policy heads and the observation normalizer that travels with them.

``build_head`` makes a head from its name and options; robo_rl's config layer calls it, and so
can user code that never touches a config.
"""

from __future__ import annotations

import difflib
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
    """A head ``name`` for obs [obs_dim] and actions within [action_low, action_high].

    ``options`` are the head's own keyword arguments (``HEADS[name].options()``); any other raises a
    TypeError naming it, rather than being ignored."""
    try:
        cls = HEADS[name]
    except KeyError:
        raise ValueError(f"unknown policy head {name!r}; choose one of {', '.join(HEADS)}") from None
    accepted = cls.options()
    unknown = [key for key in options if key not in accepted]
    if unknown:
        hints = [f"{key!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(key, accepted, 1))
                 else repr(key) for key in unknown]
        raise TypeError(f"the {name} head has no option{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
                        f"it takes {', '.join(accepted)} (and build_head's normalize_obs, obs_clip)")
    return cls(obs_dim, action_low, action_high, ObsNormalizer(obs_dim, normalize_obs, obs_clip), **options)


__all__ = ["HEADS", "ObsNormalizer", "PolicyHead", "build_head"]
