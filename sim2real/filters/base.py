"""What every safety filter shares: the call contract, the report, and dtype-exact bounds.

A filter sits between the exported policy and the robot: ``filtered, report = f(action, obs)``.
It sees batches (``action: [B, A]``, ``obs: [B, O]``) or single rows (``[A]``, ``[O]``) and hands
back the shape and float width it was given. Each filter computes in float64 and is responsible for
its guarantee holding on the value it *returns* (after the cast to float32, when the caller works in
float32), not only on an intermediate float64 value: the robot receives the returned numbers.

This module imports numpy only: the filters run on the robot next to onnxruntime, without torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class FilterReport:
    """What a filter did on one call.

    ``intervened[b]``: row b of the returned action differs from the input row.
    ``fallback[b]``: row b's input (action or observation) was non-finite or invalid, or the filter's
    problem was infeasible, so a predefined safe action was returned instead of a corrected one.
    ``reasons``: human-readable lines, each starting with the filter's name.
    """

    intervened: np.ndarray  # [B] bool
    fallback: np.ndarray  # [B] bool
    reasons: list[str] = field(default_factory=list)

    @classmethod
    def clean(cls, batch: int) -> FilterReport:
        return cls(np.zeros(batch, dtype=bool), np.zeros(batch, dtype=bool), [])

    def merge(self, other: FilterReport) -> FilterReport:
        """The report of two filters applied one after the other."""
        return FilterReport(self.intervened | other.intervened, self.fallback | other.fallback,
                            [*self.reasons, *other.reasons])

    @property
    def any(self) -> bool:
        return bool(self.intervened.any() or self.fallback.any())


def rows(mask: np.ndarray, limit: int = 8) -> str:
    """``rows [0, 3]`` (or ``row 2``) for a boolean row mask, shortened past ``limit`` rows."""
    idx = np.flatnonzero(mask).tolist()
    if len(idx) == 1:
        return f"row {idx[0]}"
    shown = ", ".join(str(i) for i in idx[:limit])
    return f"rows [{shown}{', ...' if len(idx) > limit else ''}]"


def zero_ungoverned_non_finite(out: np.ndarray, governed: np.ndarray) -> np.ndarray:
    """Set the non-finite entries of ``out`` [B, A] outside the ``governed`` columns to zero, in place; returns
    the rows that had one. For filters that govern some action dimensions only: a NaN in the others would
    otherwise pass through them (put a ``box`` with ``hold`` in the chain to hold those instead)."""
    other = np.ones(out.shape[1], dtype=bool)
    other[governed] = False
    bad = ~np.isfinite(out) & other
    out[bad] = 0.0
    return bad.any(axis=1)


def representable_bounds(low: np.ndarray, high: np.ndarray, dtype: np.dtype,
                         around: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bounds rounded inward to finite numbers of ``dtype``, returned as float64.

    Clipping a finite float64 value into these bounds and then casting it to ``dtype`` keeps it inside
    [low, high]: float32(0.1) is larger than 0.1, so a clip to 0.1 followed by a cast would leave the
    box. If an interval holds no finite number of ``dtype`` at all (low == high between two float32s, or
    a bound beyond float32's range), the nearest finite one is used (at most +-3.4e38), or, with
    ``around`` (a point inside [low, high]), the two numbers of ``dtype`` on either side of it: a value
    clipped into those moves toward ``around`` no further than the first number past it. The bound is
    then missed by less than one step of ``dtype`` (more beyond float32's range), never by a NaN or inf.
    """
    low = np.asarray(low, dtype=np.float64)
    high = np.asarray(high, dtype=np.float64)
    if np.dtype(dtype) == np.float64:
        return low, high
    big = np.float32(np.finfo(np.float32).max)
    with np.errstate(over="ignore"):
        lo = low.astype(np.float32)
        hi = high.astype(np.float32)
    lo = np.where(lo.astype(np.float64) < low, np.nextafter(lo, np.float32(np.inf)), lo)
    hi = np.where(hi.astype(np.float64) > high, np.nextafter(hi, np.float32(-np.inf)), hi)
    lo, hi = np.maximum(lo, -big), np.minimum(hi, big)  # an interval reaching past float32's range: its finite part
    empty = lo > hi
    if empty.any():
        if around is None:
            nearest = np.clip(low, -big, big).astype(np.float32)
            down = up = nearest
        else:
            point = np.clip(np.asarray(around, dtype=np.float64), -big, big)
            near = point.astype(np.float32)
            down = np.where(near.astype(np.float64) > point, np.nextafter(near, np.float32(-np.inf)), near)
            up = np.where(near.astype(np.float64) < point, np.nextafter(near, np.float32(np.inf)), near)
        lo = np.where(empty, down, lo)
        hi = np.where(empty, up, hi)
    return lo.astype(np.float64), hi.astype(np.float64)


def out_dtype(action: np.ndarray) -> np.dtype:
    """float32 in, float32 out; anything else is answered in float64."""
    return np.dtype(np.float32) if action.dtype == np.float32 else np.dtype(np.float64)


def _row_indices(rows: Any, batch: int, name: str) -> np.ndarray:
    """The row indices ``rows`` names: indices in [0, batch) or a [batch] bool mask. A negative index, a bare bool
    (True was every row), a mask of another length or anything else is a ValueError naming the filter: a row reset
    by mistake lifts its limits (a rate limit's first step is free)."""
    given = np.asarray(rows)
    if given.ndim == 0 and given.dtype.kind in "iu":  # one row
        given = given.reshape(1)
    if given.dtype == bool and given.shape == (batch,):
        return np.flatnonzero(given)
    if given.ndim == 1 and given.dtype.kind in "iu" and ((given >= 0) & (given < batch)).all():
        return given.astype(np.int64)
    if given.ndim == 1 and given.size == 0:
        return np.zeros(0, np.int64)
    raise ValueError(f"{name}: reset_rows takes row indices in [0, {batch}) or a mask of {batch} true/false values, "
                     f"got {rows!r:.80}")


class SafetyFilter(ABC):
    """Base class: shape and dtype handling around ``_apply``.

    Subclasses set ``name`` and ``uses_obs``, keep their per-episode state in ``_reset_state`` (and,
    if it depends on the previous command, take the command in force from ``_seed``), and implement
    ``_apply(action [B, A] float64, obs [B, O] float64 | None, dtype) -> (action [B, A], report)``
    whose returned action must already be exactly representable in ``dtype`` and satisfy the filter's
    guarantee. ``describe()`` returns the settings as a ``build_chain`` spec entry.
    """

    name: str = "filter"
    uses_obs: bool = False
    #: the attributes ``_reset_state`` sets and later calls change: what ``state_dict`` saves
    episode_state: tuple[str, ...] = ()
    #: the ``episode_state`` entries that hold commands this filter sent (a rate limit's previous output): a chain
    #: restoring saved state holds them to the filters before this one, as every command it sent was
    command_state: tuple[str, ...] = ()

    def __init__(self, action_dim: int) -> None:
        if isinstance(action_dim, bool) or not isinstance(action_dim, (int, np.integer)) or action_dim < 1:
            raise ValueError(f"action_dim: expected a positive integer, got {action_dim!r}")
        self.action_dim = int(action_dim)
        self.batch: int | None = None
        self._stepped = False
        self._initial: np.ndarray | None = None  # [1 or B, A]: the command in force at the last reset

    # -- state -------------------------------------------------------------------------------------
    def reset(self, batch: int = 1, initial: Any = None) -> None:
        """Clear per-episode state for ``batch`` rows (the next call may also bring another batch size).

        ``initial`` ([A] or [batch, A], finite): the command the actuators hold now. Filters whose
        guarantee refers to the previous command take it as that command (``rate`` limits the first
        step from it; ``box`` with ``hold`` and an ``absolute`` workspace hold it), so the guarantee
        also holds across the reset. None: no command is known, the first call has no previous one.
        Filters without such state ignore it.
        """
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ValueError(f"batch: expected a positive integer, got {batch!r}")
        seed = None
        if initial is not None:
            try:
                seed = np.array(initial, dtype=np.float64, ndmin=2)
            except (TypeError, ValueError):
                seed = None
            if (seed is None or seed.ndim != 2 or seed.shape[1] != self.action_dim or seed.shape[0] not in (1, batch)
                    or not np.isfinite(seed).all()):
                raise ValueError(f"{self.name}: initial must be {self.action_dim} finite numbers (or one row of them "
                                 f"per batch row, {batch}), got {initial!r}")
        self.batch = int(batch)
        self._stepped = False
        self._initial = seed
        self._reset_state(self.batch)
        if seed is not None:
            self._seed(np.broadcast_to(seed, (self.batch, self.action_dim)).copy())

    def _reset_state(self, batch: int) -> None:
        """Per-episode state of a subclass (previous output, tank energy...)."""

    def reset_rows(self, rows: Any) -> None:
        """Clear the per-episode state of some rows of the batch (``rows``: indices, or a [batch] bool mask), as a
        plain ``reset()`` (no ``initial`` command) of a filter for that row alone would; the other rows go on.

        For N robots or simulations behind one filter whose episodes end one at a time (a training env's copies):
        one call filters all N rows, where a filter per row cost a Python call chain per row and step. A filter not
        reset yet has nothing to clear."""
        if self.batch is None:
            return
        idx = _row_indices(rows, self.batch, self.name)
        if idx.size:
            self._reset_rows(idx)

    def _reset_rows(self, idx: np.ndarray) -> None:
        """``reset_rows`` of a subclass: restart rows ``idx`` of its ``episode_state`` (a stateless filter: nothing)."""
        if self.episode_state:
            raise TypeError(f"{type(self).__name__} keeps per-episode state {self.episode_state} but does not say how "
                            "to restart one row of it: define _reset_rows, or reset() the whole batch")

    def state_dict(self) -> dict[str, Any]:
        """The per-episode state, as JSON (numbers, lists, None; NaN as None in arrays): a training run's
        checkpoint keeps it so a resumed run filters its next command as an unbroken one would."""
        names = ("batch", "_stepped", "_initial", *self.episode_state)
        return {name: _to_json(getattr(self, name, None)) for name in names}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned. A state that does not fit this filter (other keys, shapes of
        another action size or batch, NaN/inf where the filter keeps finite numbers: a damaged checkpoint)
        is a ValueError and leaves the filter as it was: a filter never resumes from state it cannot trust."""
        values = self._checked_state(state)
        for name, value in values.items():
            setattr(self, name, value)

    def _checked_state(self, state: Any) -> dict[str, Any]:
        """``state`` decoded and checked against this filter (ValueError naming the entry), nothing set yet."""
        names = ("batch", "_stepped", "_initial", *self.episode_state)
        if not isinstance(state, dict) or set(state) != set(names):
            raise ValueError(f"{self.name}: saved filter state holds {sorted(state) if isinstance(state, dict) else state!r}, "
                             f"expected {sorted(names)}")
        values = {}
        for name in names:
            try:
                values[name] = _from_json(state[name])
            except (TypeError, ValueError) as e:
                raise ValueError(f"{self.name}: saved filter state {name!r} is not a valid array ({e})") from None
        batch = values["batch"]
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
            raise ValueError(f"{self.name}: saved filter state 'batch' is {batch!r}, expected a positive integer or None")
        if not isinstance(values["_stepped"], bool):
            raise ValueError(f"{self.name}: saved filter state '_stepped' is {values['_stepped']!r}, expected true/false")
        if batch is None:  # never reset: nothing else may be held
            held = [name for name in names[2:] if values[name] is not None]
            if held:
                raise ValueError(f"{self.name}: saved filter state has no batch but holds {held}")
            return values
        initial = values["_initial"]
        if initial is not None:
            rows = initial.shape[0] if isinstance(initial, np.ndarray) and initial.ndim == 2 else None
            self._check_array(values, "_initial", (rows if rows in (1, batch) else batch, self.action_dim))
        self._check_episode_state(values, batch)
        return values

    def _check_episode_state(self, values: dict[str, Any], batch: int) -> None:
        """Raise ValueError if the decoded ``episode_state`` entries do not fit this filter (a subclass's shapes)."""

    def _check_array(self, values: dict[str, Any], name: str, shape: tuple[int, ...], *, optional: bool = False,
                     finite: bool = True, kind: str = "f", nan_rows: bool = False) -> None:
        """``values[name]`` must be an array of ``shape`` (None too, if ``optional``) of floats (``kind`` "f",
        finite unless ``finite`` is False) or booleans (``kind`` "b"). ``nan_rows``: a row may also be all NaN
        (a row ``reset_rows`` cleared: no previous output yet)."""
        value = values[name]
        if value is None and optional:
            return
        checked = value
        if nan_rows and isinstance(value, np.ndarray) and value.shape == tuple(shape) and value.ndim == 2 \
                and value.dtype.kind == "f":
            checked = value[~np.isnan(value).all(axis=1)]  # the cleared rows aside, the rest is checked as usual
        if (not isinstance(value, np.ndarray) or value.shape != tuple(shape) or value.dtype.kind != kind
                or (finite and kind == "f" and not np.isfinite(checked).all())):
            what = "finite numbers" if finite and kind == "f" else ("numbers" if kind == "f" else "booleans")
            got = (f"{value.dtype} {list(value.shape)}" + (" with NaN/inf" if value.dtype.kind == "f"
                                                           and not np.isfinite(value).all() else "")
                   if isinstance(value, np.ndarray) else repr(value)[:60])
            raise ValueError(f"{self.name}: saved filter state {name!r} is {got}, expected {list(shape)} {what}"
                             + (" or None" if optional else "") + " (a damaged checkpoint, or one of another filter setup)")

    def _seed(self, initial: np.ndarray) -> None:
        """Take ``initial`` [B, A] float64 (finite) as the previous command; a no-op unless a subclass needs it."""

    def admissible(self, command: np.ndarray) -> np.ndarray:
        """``command`` [B, A] as this filter's stateless limits allow it (``box`` clips it; others: as given).
        A chain seeds each filter after this one with it, so a rate limit after a box steps from an in-box
        command even when the robot holds one outside the box."""
        return command

    def _check_batch(self, batch: int) -> None:
        if self.batch is None or (not self._stepped and batch != self.batch):
            # first call, or first call after reset(): adopt the caller's batch (and keep the reset's command)
            if self._initial is not None and self._initial.shape[0] not in (1, batch):
                raise ValueError(f"{self.name}: got a batch of {batch} rows but reset(batch={self.batch}, initial=...) "
                                 f"gave a command for each of {self._initial.shape[0]} rows; call "
                                 f"reset(batch={batch}, initial=...) with the commands of these {batch} rows")
            self.reset(batch, initial=self._initial)
        elif batch != self.batch:
            raise ValueError(f"{self.name}: got a batch of {batch} rows but the filter holds state for "
                             f"{self.batch}; call reset(batch={batch}) when the number of robots changes")
        self._stepped = True

    # -- the call ----------------------------------------------------------------------------------
    def __call__(self, action: np.ndarray, obs: np.ndarray | None = None) -> tuple[np.ndarray, FilterReport]:
        raw = np.asarray(action)
        if raw.dtype.kind not in "fiu":  # complex (its imaginary part would be dropped), bool, text, objects
            raise TypeError(f"{self.name}: action must be real numbers, got an array of {raw.dtype}")
        if raw.ndim not in (1, 2) or raw.shape[-1] != self.action_dim:
            raise ValueError(f"{self.name}: action must have shape [{self.action_dim}] or [B, {self.action_dim}], "
                             f"got {list(raw.shape)}")
        if raw.shape[0] == 0:
            raise ValueError(f"{self.name}: action has no rows (shape {list(raw.shape)}); pass [{self.action_dim}] or "
                             f"[B, {self.action_dim}] with B >= 1")
        single = raw.ndim == 1
        dtype = out_dtype(raw)
        a = np.array(raw, dtype=np.float64, ndmin=2)
        o = None
        if self.uses_obs:
            if obs is None:
                raise ValueError(f"{self.name}: this filter reads the observation; pass obs to the call")
            if np.asarray(obs).dtype.kind not in "fiu":
                raise TypeError(f"{self.name}: obs must be real numbers, got an array of {np.asarray(obs).dtype}")
            o = np.array(obs, dtype=np.float64, ndmin=2)
            if o.ndim != 2 or o.shape[0] != a.shape[0]:
                raise ValueError(f"{self.name}: obs shape {list(np.shape(obs))} does not match action shape "
                                 f"{list(raw.shape)} (one observation row per action row)")
            self._check_obs_dim(o.shape[1])
        self._check_batch(a.shape[0])
        out, report = self._apply(a, o, dtype)
        out = np.asarray(out, dtype=dtype)
        return (out[0] if single else out), report

    def _check_obs_dim(self, obs_dim: int) -> None:
        """Raise if an observation of ``obs_dim`` entries lacks an index this filter reads."""

    @abstractmethod
    def _apply(self, action: np.ndarray, obs: np.ndarray | None, dtype: np.dtype) -> tuple[np.ndarray, FilterReport]:
        """Filter ``action [B, A]`` (float64 copy, may be modified in place)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-serializable settings; ``build_chain([f.describe()], action_dim, obs_dim)`` rebuilds f."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


def _to_json(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        data = value.astype(object)
        if value.dtype.kind == "f":
            data[np.isnan(value)] = None
        return {"ndarray": value.dtype.str, "shape": list(value.shape), "data": data.ravel().tolist()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"ndarray", "shape", "data"}:
        dtype = np.dtype(value["ndarray"])
        if dtype.kind not in "biuf":
            raise ValueError(f"saved filter state holds an array of {dtype}")
        data = [np.nan if v is None else v for v in value["data"]]
        return np.array(data, dtype=dtype).reshape(value["shape"])
    return value
