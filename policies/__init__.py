"""What acts: networks, policy heads and the observation normalizer that travels with them.

``build_head`` makes a head from its name and options; robo_rl's config layer calls it, and so
can user code that never touches a config.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

from policies.heads import HEADS, PolicyHead
from policies.heads.base import action_bound
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
    if not isinstance(name, str) or name not in HEADS:
        raise ValueError(f"unknown policy head {name!r}; choose one of {', '.join(HEADS)}")
    cls = HEADS[name]
    accepted = cls.options()
    unknown = [key for key in options if key not in accepted]
    if unknown:
        hints = [f"{key!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(key, accepted, 1))
                 else repr(key) for key in unknown]
        raise TypeError(f"the {name} head has no option{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
                        f"it takes {', '.join(accepted)} (and build_head's normalize_obs, obs_clip)")
    if isinstance(obs_dim, bool) or not isinstance(obs_dim, numbers.Integral) or obs_dim < 1:
        raise ValueError(f"the {name} head: obs_dim must be an integer >= 1, got {obs_dim!r}")
    action_low, action_high = action_bound(name, "action_low", action_low), action_bound(name, "action_high", action_high)
    if math.prod(np.shape(action_low)) < 1 or np.shape(action_low) != np.shape(action_high):
        raise ValueError(f"the {name} head: action_low and action_high must be equal-length bounds of at least one "
                         f"action dimension, got {np.shape(action_low)} and {np.shape(action_high)}")
    if isinstance(obs_clip, bool) or not isinstance(obs_clip, numbers.Real) or not obs_clip > 0:
        raise ValueError(f"the {name} head: obs_clip must be > 0 (normalized observations are clipped to "
                         f"+-obs_clip; inf: no clip), got {obs_clip!r}")
    for key in ("hidden_sizes", "decoder_hidden"):
        sizes = options.get(key)
        if isinstance(sizes, Iterable) and not isinstance(sizes, (str, bytes)):
            sizes = options[key] = list(sizes)  # read once (a generator), checked below
        if sizes is not None and (not isinstance(sizes, list) or not all(
                isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1 for n in sizes)):
            raise ValueError(f"the {name} head: {key} must be a list of layer widths >= 1, e.g. [256, 256], "
                             f"got {sizes!r}")
    return cls(int(obs_dim), action_low, action_high, ObsNormalizer(int(obs_dim), normalize_obs, obs_clip), **options)


__all__ = ["HEADS", "ObsNormalizer", "PolicyHead", "build_head"]
