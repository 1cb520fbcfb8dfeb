"""Filters applied in order, and the one place a chain is built from a config spec."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sim2real.filters import spec as specs
from sim2real.filters.base import FilterReport, SafetyFilter
from sim2real.filters.box import BoxFilter
from sim2real.filters.cbf import CBFFilter
from sim2real.filters.energy_tank import EnergyTankFilter
from sim2real.filters.rate import RateFilter
from sim2real.filters.workspace import WorkspaceFilter

FILTERS: dict[str, type[SafetyFilter]] = {
    "box": BoxFilter,
    "rate": RateFilter,
    "workspace": WorkspaceFilter,
    "cbf": CBFFilter,
    "energy_tank": EnergyTankFilter,
}


class FilterChain(SafetyFilter):
    """Filters applied one after the other; the reports are merged (flags OR-ed, reasons in order).

    Guarantee: the output satisfies the last filter's guarantee; an earlier filter's holds too when the
    later ones keep it (box then rate: the rate output lies between two in-box actions; a command given
    to ``reset(initial=...)`` outside the box reaches the rate filter clipped into it). Order therefore
    matters: put the filter whose guarantee matters most last (e.g. the energy tank, which only scales
    torques toward zero and so also keeps a symmetric box around zero).
    Each filter receives the previous one's output in the caller's float width.
    """

    name = "chain"

    def __init__(self, filters: Sequence[SafetyFilter], action_dim: int | None = None) -> None:
        filters = list(filters)
        if action_dim is None:
            if not filters:
                raise ValueError("action_dim: required for an empty chain")
            action_dim = filters[0].action_dim
        super().__init__(action_dim)
        for i, f in enumerate(filters):
            if f.action_dim != self.action_dim:
                raise ValueError(f"filter {i} ({f.name}) has action_dim={f.action_dim}, the chain {self.action_dim}")
        self.filters = filters
        self.uses_obs = any(f.uses_obs for f in filters)

    def reset(self, batch: int = 1, initial: Any = None) -> None:
        """Reset every filter; ``initial`` (the command the robot holds now) seeds each one that needs it."""
        super().reset(batch, initial)
        seed = self._initial  # checked, [1 or batch, A] float64, or None
        for f in self.filters:
            f.reset(batch, seed)
            if seed is not None:  # the next filter starts from the command this one's limits allow
                seed = f.admissible(seed)

    def _reset_rows(self, idx: np.ndarray) -> None:
        for f in self.filters:
            f.reset_rows(idx)

    def _apply(self, action: np.ndarray, obs: np.ndarray | None, dtype: np.dtype) -> tuple[np.ndarray, FilterReport]:
        out = action.astype(dtype)
        report = FilterReport.clean(action.shape[0])
        for f in self.filters:
            out, r = f(out, obs if f.uses_obs else None)
            report = report.merge(r)
        return out, report

    def state_dict(self) -> dict[str, Any]:
        return {"chain": super().state_dict(), "filters": [f.state_dict() for f in self.filters]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Every filter's state is checked before any is set: a state that does not fit leaves the chain as it was."""
        if not isinstance(state, dict) or not isinstance(state.get("filters"), list) \
                or len(state["filters"]) != len(self.filters):
            raise ValueError(f"saved filter chain state does not hold {len(self.filters)} filters' state")
        own = self._checked_state(state.get("chain"))
        checked = []
        for i, (f, s) in enumerate(zip(self.filters, state["filters"])):
            try:
                values = f._checked_state(s)
            except ValueError as e:
                raise ValueError(f"filter {i}: {e}") from None
            # a chain never reset (batch None) resets its filters at its first call; some start at batch 1 (energy_tank)
            if own["batch"] is not None and values["batch"] != own["batch"]:
                raise ValueError(f"filter {i} ({f.name}): saved filter state holds a batch of {values['batch']} rows, "
                                 f"the chain's {own['batch']}")
            _check_commands_held(self.filters[:i], f, i, values)
            checked.append(values)
        for target, values in ((self, own), *zip(self.filters, checked)):
            for name, value in values.items():
                setattr(target, name, value)

    def describe(self) -> dict[str, Any]:
        """``{"filters": [...]}``: the shape of a ``configs/safety`` file and of ``build_chain``'s spec."""
        return {"filters": [_entry(f) for f in self.filters]}

    def __len__(self) -> int:
        return len(self.filters)


def _check_commands_held(before: Sequence[SafetyFilter], f: SafetyFilter, i: int, values: dict[str, Any]) -> None:
    """Raise ValueError if filter ``i``'s decoded saved ``values`` hold a command (its ``command_state``, and the
    reset's command it starts from) that a filter ``before`` it does not allow: each was a command the chain sent,
    and a rate limit resumed from a previous output outside the box before it steps outside the box."""
    for name in ("_initial", *f.command_state):
        held = values.get(name)
        if held is None:
            continue
        held = held[~np.isnan(held).all(axis=1)]  # rows reset_rows cleared hold no command
        for j, g in enumerate(before):
            if not np.array_equal(g.admissible(held), held):
                raise ValueError(f"filter {i} ({f.name}): saved filter state {name!r} holds a command filter {j} "
                                 f"({g.name}) does not allow (a damaged checkpoint, or one of another filter setup)")


def _keys(cls: type[SafetyFilter]) -> tuple[list[str], list[str]]:
    """(allowed, required) spec keys of a filter: its constructor's parameters."""
    params = [p for name, p in inspect.signature(cls.__init__).parameters.items()
              if name not in ("self", "action_dim", "obs_dim")]
    return [p.name for p in params], [p.name for p in params if p.default is inspect.Parameter.empty]


def _entry(f: SafetyFilter) -> dict[str, Any]:
    """``f.describe()``, its type as ``module:Class`` for a filter of one's own (not one of ``FILTERS``), so that the
    entry rebuilds it in any process that can import it (a training checkpoint's resume, an export's deploy)."""
    entry = f.describe()
    if FILTERS.get(entry.get("type")) is type(f):
        return entry
    return {**entry, "type": f"{type(f).__module__}:{type(f).__qualname__}"}


def filter_class(kind: Any, where: str = "safety.filters[0]") -> type[SafetyFilter]:
    """The filter class a spec's ``type`` names: one of ``FILTERS``, or ``module:Class`` for a filter of your own (a
    ``SafetyFilter`` subclass in an importable module, as ``env.id=module:Id`` names a task): training, export and
    ``robo-rl deploy`` then import it wherever they build the chain."""
    if isinstance(kind, str) and kind in FILTERS:
        return FILTERS[kind]
    if not (isinstance(kind, str) and ":" in kind):
        raise ValueError(f"{where}: type: unknown filter type {kind!r}; choose one of {', '.join(FILTERS)}, or "
                         "module:Class for a SafetyFilter subclass of your own (e.g. my_filters:LowPass)")
    import importlib

    module, _, name = kind.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"{where}: type: cannot import filter {name!r} from {module!r} ({exc}); is the module "
                         "installed, or on PYTHONPATH?") from None
    if not (isinstance(cls, type) and issubclass(cls, SafetyFilter)) or cls is FilterChain:
        raise ValueError(f"{where}: type: {kind} is {cls!r}, not a sim2real.filters.SafetyFilter subclass")
    return cls


def build_chain(spec: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None, action_dim: int,
                obs_dim: int | None = None, control_dt: float | None = None) -> FilterChain:
    """Build and check a chain from ``[{"type": "box", "low": -1, "high": 1}, ...]``.

    ``spec`` may also be a ``{"filters": [...]}`` mapping (a ``configs/safety`` file, a sidecar's
    ``safety`` entry), and OmegaConf containers work as they are. Every setting is checked here, so a
    bad config fails when the chain is built: ``ValueError`` names the entry (index and type) and the key.
    ``obs_dim``, when known, lets observation indices be checked now rather than on the first call.
    ``control_dt``, when known, must equal the ``dt`` of every filter that takes one (the energy tank's
    work bound and viscous credit and the barrier filter's one-step model are per control period: a tank
    told 0.02 s on a 0.04 s loop bounds a step's work over half the step and credits twice the least
    viscous loss, dq^2 / dt, so it no longer bounds the injected energy).
    """
    spec = specs.plain(spec)
    if spec is None:
        spec = []
    if isinstance(spec, dict):
        extra = sorted(set(spec) - {"filters"})
        if extra:
            raise ValueError(f"safety: unknown key {extra[0]!r}; a safety spec is {{filters: [...]}}")
        if not isinstance(spec.get("filters"), list):  # every export writes {filters: []} for none: a mapping
            # without its list is damaged or mistyped, and read as "no filters" it would pass every command unfiltered
            raise ValueError(f"safety: a safety spec is {{filters: [...]}} ({{filters: []}} for no filters), got "
                             f"{spec!r:.80}")
        spec = spec["filters"]
    if not isinstance(spec, list):
        raise ValueError(f"safety.filters: expected a list of filter entries, got {spec!r}")
    if obs_dim is not None and (isinstance(obs_dim, bool) or not isinstance(obs_dim, (int, np.integer)) or obs_dim < 1):
        raise ValueError(f"obs_dim: expected a positive integer or None, got {obs_dim!r}")
    filters: list[SafetyFilter] = []
    for i, entry in enumerate(spec):
        where = f"safety.filters[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping with a 'type' key, got {entry!r}")
        kind = entry.get("type")
        cls = filter_class(kind, where)
        where = f"{where} ({kind})"
        allowed, required = _keys(cls)
        params = {k: v for k, v in entry.items() if k != "type"}
        for key in params:
            if key not in allowed:
                raise ValueError(f"{where}: unknown key {key!r}; allowed keys: {', '.join(allowed)}")
        for key in required:
            if key not in params:
                raise ValueError(f"{where}: missing key {key!r} (required: {', '.join(required)})")
        if cls.uses_obs:
            params["obs_dim"] = obs_dim
        try:
            filters.append(cls(action_dim, **params))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    if control_dt is not None:
        check_control_dt(filters, control_dt)
    return FilterChain(filters, action_dim=action_dim)


def narrowing_boxes(spec: Any, low: Any, high: Any, task: str) -> list[str]:
    """A warning for each ``box`` entry of the chain ``spec`` whose bounds lie inside the task's action bounds ``low`` /
    ``high`` in some dimension: it clips the policy's actions to a narrower range than the policy acts in (the packaged
    ``configs/safety/box.yaml``'s [-1, 1] on Pusher's [-2, 2] altered every training action, without a word)."""
    entries = specs.plain(spec)
    entries = entries.get("filters") if isinstance(entries, dict) else entries
    low, high = np.asarray(low, np.float64).reshape(-1), np.asarray(high, np.float64).reshape(-1)

    def shown(values: np.ndarray) -> str:
        return f"{values[0]:g}" if (values == values[0]).all() else "[" + ", ".join(f"{v:g}" for v in values) + "]"

    lines = []
    for i, entry in enumerate(entries or []):
        if not (isinstance(entry, dict) and entry.get("type") == "box" and "low" in entry and "high" in entry):
            continue
        try:
            box_low = np.broadcast_to(np.asarray(entry["low"], np.float64), low.shape)
            box_high = np.broadcast_to(np.asarray(entry["high"], np.float64), high.shape)
        except (TypeError, ValueError):  # (build_chain names a malformed entry)
            continue
        inside = np.flatnonzero((box_low > low) | (box_high < high))
        if inside.size:
            lines.append(f"safety.filters[{i}] (box): [{shown(box_low)}, {shown(box_high)}] is narrower than {task}'s "
                         f"action bounds [{shown(low)}, {shown(high)}] in "
                         + ("every dimension" if inside.size == low.size else
                            f"dimension(s) {', '.join(map(str, inside))}") + ", so "
                         "the policy's actions beyond it are clipped; if that is not meant, give the box the task's "
                         "bounds (low/high)")
    return lines


def check_obs_dim(filters: Sequence[Any], obs_dim: int) -> None:
    """Raise ValueError if a filter reads an observation entry beyond ``obs_dim``: a chain built without ``obs_dim``
    and handed to the control loop is held to it when the loop is built, as a spec is, not at its first tick."""
    for i, f in enumerate(filters):
        check = getattr(f, "_check_obs_dim", None)
        if callable(check):
            try:
                check(obs_dim)
            except ValueError as exc:
                raise ValueError(f"safety.filters[{i}]: {exc}") from None


def check_control_dt(filters: Sequence[Any], control_dt: float) -> None:
    """Raise ValueError if a filter's ``dt`` (energy tank, barrier filter) is not ``control_dt``, the period the
    filters are called at. Checked on the built filters, so a chain built without ``control_dt`` and handed to
    the control loop, or a ``dt`` given as a numpy number, is held to it as a spec is."""
    for i, f in enumerate(filters):
        dt = getattr(f, "dt", None)
        if isinstance(dt, (int, float, np.integer, np.floating)) and abs(float(dt) - control_dt) > 1e-9 * max(1.0, control_dt):
            # the period as the check compares it: 1/30 s shown as 0.0333333 was refused again when set so
            period = f"{control_dt:g}" if float(f"{control_dt:g}") == control_dt else repr(float(control_dt))
            raise ValueError(f"safety.filters[{i}] ({getattr(f, 'name', type(f).__name__)}): dt={dt} is not the control "
                             f"period {period} s of this env: set dt: {period} (the filter's accounting is "
                             f"per control step)")
