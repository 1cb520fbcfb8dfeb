"""Checking filter settings once, up front, with errors that name the key.

A safety filter that is misconfigured must fail when the chain is built (on the desk), never on the
robot with a half-applied limit. Each helper turns one config value into a checked numpy value or
raises ``ValueError("<key>: <what was wrong>")``; ``build_chain`` prefixes the filter entry.
Values may come from YAML/Hydra (OmegaConf containers), JSON or Python: any sequence works.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def plain(value: Any) -> Any:
    """OmegaConf containers (or any Mapping/Sequence) as plain dicts and lists, without importing omegaconf."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (str, bytes)):
        return value
    if isinstance(value, Sequence):
        return [plain(v) for v in value]
    return value


def _leaves(value: Any) -> list:
    if isinstance(value, np.ndarray):
        return value.ravel().tolist()
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def _number_array(key: str, value: Any) -> np.ndarray:
    value = plain(value)
    for v in _leaves(value):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError(f"{key}: expected numbers, got {v!r}")
    try:
        return np.asarray(value, dtype=np.float64)
    except ValueError:  # ragged nested lists
        raise ValueError(f"{key}: expected a rectangular array of numbers (rows of equal length), got {value!r}") from None


def vector(key: str, value: Any, dim: int, *, finite: bool = True, low: float | None = None,
           low_open: bool = False) -> np.ndarray:
    """A scalar (broadcast) or a list of exactly ``dim`` numbers -> float64 ``[dim]``.

    ``low``: every entry must be >= low (> low when ``low_open``).
    """
    arr = _number_array(key, value)
    if arr.ndim == 0:
        arr = np.full(dim, float(arr))
    elif arr.ndim != 1 or arr.shape[0] != dim:
        raise ValueError(f"{key}: expected a number or a list of {dim} numbers, got shape {list(arr.shape)}")
    if finite and not np.isfinite(arr).all():
        raise ValueError(f"{key}: every entry must be finite, got {arr.tolist()}")
    if np.isnan(arr).any():
        raise ValueError(f"{key}: NaN is not a valid setting")
    if low is not None:
        bad = arr <= low if low_open else arr < low
        if bad.any():
            rel = ">" if low_open else ">="
            raise ValueError(f"{key}: every entry must be {rel} {low}, got {arr.tolist()}")
    return arr


def scalar(key: str, value: Any, *, low: float | None = None, low_open: bool = False,
           high: float | None = None) -> float:
    """One finite number, optionally with ``low <= x`` (``low < x``) and ``x <= high``."""
    arr = _number_array(key, value)
    if arr.ndim != 0:
        raise ValueError(f"{key}: expected one number, got {plain(value)!r}")
    x = float(arr)
    if not np.isfinite(x):
        raise ValueError(f"{key}: must be finite, got {x}")
    if low is not None and (x <= low if low_open else x < low):
        raise ValueError(f"{key}: must be {'>' if low_open else '>='} {low}, got {x}")
    if high is not None and x > high:
        raise ValueError(f"{key}: must be <= {high}, got {x}")
    return x


def matrix(key: str, value: Any, rows: int | None, cols: int) -> np.ndarray:
    """A finite ``[rows, cols]`` matrix (``rows=None``: any number of rows, at least one)."""
    arr = _number_array(key, value)
    if arr.ndim != 2 or arr.shape[1] != cols or (rows is not None and arr.shape[0] != rows) or arr.shape[0] == 0:
        want = f"[{rows if rows is not None else 'm'}, {cols}]"
        raise ValueError(f"{key}: expected a list of rows, shape {want}, got shape {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{key}: every entry must be finite")
    return arr


def indices(key: str, value: Any, limit: int | None, what: str) -> np.ndarray:
    """A non-empty list of distinct non-negative integers, each < ``limit`` (the ``what`` dimension)."""
    value = plain(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, np.ndarray)) or len(value) == 0:
        raise ValueError(f"{key}: expected a non-empty list of {what} indices, got {value!r}")
    out = []
    for v in list(value):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{key}: indices must be integers, got {v!r}")
        if v < 0:
            raise ValueError(f"{key}: index {v} is negative; give indices counted from 0")
        if limit is not None and v >= limit:
            raise ValueError(f"{key}: index {v} is out of range of {what}={limit}")
        out.append(int(v))
    if len(set(out)) != len(out):
        raise ValueError(f"{key}: indices repeat: {out}")
    return np.asarray(out, dtype=np.int64)


def choice(key: str, value: Any, options: Sequence[str]) -> str:
    if value not in options:
        raise ValueError(f"{key}: expected one of {', '.join(options)}, got {value!r}")
    return str(value)


def box_bounds(low: Any, high: Any, dim: int, low_key: str = "low", high_key: str = "high") -> tuple[np.ndarray, np.ndarray]:
    """Finite per-dimension bounds with low <= high."""
    lo = vector(low_key, low, dim)
    hi = vector(high_key, high, dim)
    bad = lo > hi
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{low_key} > {high_key} in dimension {i}: {lo[i]} > {hi[i]}")
    return lo, hi


def floats(arr: np.ndarray) -> list:
    """A numpy array as (nested) lists of Python floats, for describe()."""
    return np.asarray(arr, dtype=np.float64).tolist()


def yaml_error(source: str, exc: Exception) -> str:
    """One line for a YAML syntax error (``yaml.YAMLError``) in ``source``: where and what, not the parser's excerpt.

    ``source`` names the file the text came from; when the parser read a file itself, its mark
    names that file instead. No yaml import is needed: only the exception's attributes are read.
    """
    problem_mark, context_mark = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
    mark = problem_mark or context_mark
    name = str(getattr(mark, "name", "") or "")
    where = name if name and not name.startswith("<") else source

    def at(m: Any) -> str:
        return f"line {m.line + 1}, column {m.column + 1}"

    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    message = f"{where} is not valid YAML" + (f" at {at(mark)}" if mark is not None else "") + f": {problem}"
    context = getattr(exc, "context", None)
    if context and context_mark is not None and problem_mark is not None:
        message += f" ({context} at {at(context_mark)})"
    elif context:
        message += f" ({context})"
    return message + "; fix the file's syntax"
