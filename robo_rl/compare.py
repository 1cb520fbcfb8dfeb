"""`robo-rl compare`: finished runs side by side, seeds grouped (a `-m seed=0,1,2` sweep in one table).

Reads what every run directory already holds (config.yaml, summary.json, metrics.csv, and eval.json
where `robo-rl eval` wrote one); trains and loads nothing. Runs whose resolved configs differ only in
the seed (and where they were written, how they logged) form one group, or the runs agreeing on the
``group_by`` keys do. For each group: the final and best evaluation returns across seeds (mean, std,
each seed's value), steps, wall time and steps/s, and one learning curve (mean over seeds, with the
seeds' min-max band).
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from robo_rl.config import flatten_config, with_schema_defaults
from robo_rl.metrics import (complete_lines, format_duration, format_return, not_a_file, return_decimals,
                             save_figure_atomic)

SUMMARY, METRICS, CONFIG, EVALUATED = "summary.json", "metrics.csv", "config.yaml", "eval.json"
# keys that never separate groups: the seed, where a run was written, and settings that do not change
# what is learned (logging, checkpointing, threads, device)
# how a run was executed, not what it learned: never separates groups
NOT_CONFIG = ("seed", "run_dir", "resume", "config_dir", "threads", "env.threads", "env.vectorization", "compile",
              "algo.fused", "device", "log.", "checkpoint.")  # config_dir: where --config-dir presets were read (config.yaml has them)
LABEL_KEYS = ("algo.name", "env.id", "policy.name")  # named first in a group's label when they differ
CURVES = {"eval": "eval/return_mean", "rollout": "rollout/ep_return_mean"}
MAX_PLOTTED = 10  # groups drawn in compare.png
MAX_LABEL_KEYS = 6  # a label names at most this many of the keys that differ (compare.json has them all)


@dataclass
class Run:
    path: Path
    config: dict[str, Any]  # flattened: "algo.lr" -> value
    summary: dict[str, Any]
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # "eval" -> [(step, return)]
    evaluated: dict[str, Any] | None = None  # eval.json, written by `robo-rl eval`
    warnings: list[str] = field(default_factory=list)  # what was read as not measured, each naming the file
    not_finite: set[str] = field(default_factory=set)  # summary.json keys that held NaN/Inf (read as null)
    latest: dict[str, Any] = field(default_factory=dict)  # without a summary.json: metrics.csv's steps, wall_time_s

    @property
    def seed(self) -> Any:
        return self.config.get("seed", self.summary.get("seed"))

    @property
    def failed(self) -> bool:
        return self.status.startswith("failed")

    @property
    def final(self) -> float | None:
        if self.failed:  # its last evaluation came before it failed: not a final result to average with others
            return None
        value = self.summary.get("final_eval_return_mean")
        # a NaN in summary.json is that evaluation's result: an earlier point of the curve would not be the final one
        if value is None and self.curves.get("eval") and "final_eval_return_mean" not in self.not_finite:
            value = self.curves["eval"][-1][1]
        return None if value is None or not math.isfinite(value) else float(value)

    @property
    def best(self) -> float | None:
        value = self.summary.get("best_eval_return_mean")
        if value is None and self.curves.get("eval") and "best_eval_return_mean" not in self.not_finite:
            value = max(v for _, v in self.curves["eval"])
        return None if value is None or not math.isfinite(value) else float(value)

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "no summary.json (running, or stopped before it was written)"))

    def measured(self, key: str) -> float | None:
        """``steps``, ``wall_time_s`` or ``steps_per_s``: the summary's, or for a run without one yet (in progress, or
        stopped before writing it) its metrics.csv's latest row's, as its summary would give them."""
        if not self.latest:  # (filled only when there is no summary.json)
            return self.summary.get(key)
        steps, wall = self.latest.get("steps"), self.latest.get("wall_time_s")
        if key == "steps_per_s":
            return None if steps is None or not wall else round(steps / wall, 2)
        return {"steps": steps, "wall_time_s": wall}[key]


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories in ``paths``: each one is a run (it has config.yaml) or a directory holding runs."""
    found: list[Path] = []
    expanded: list[str | Path] = []
    for given in paths:  # shell-style patterns (runs=runs/sweep-sac*) are expanded here
        # a directory that exists is itself, brackets and all: a sweep job's (sweep/policy.hidden_sizes=[64]), a
        # sweep's (run_dir='sw[1]'), which as a pattern match no directory or another one
        literal = Path(given).exists() or not glob.has_magic(str(given))
        matches = [given] if literal else sorted(glob.glob(str(given)))
        if not matches:
            raise FileNotFoundError(f"runs={given}: no directory matches")
        expanded += matches
    for given in expanded:
        path = Path(given)
        if path.exists() and not path.is_dir():
            raise FileNotFoundError(f"runs={given}: a file, not a run directory (or a directory holding runs)")
        if not path.is_dir():
            raise FileNotFoundError(f"runs={given}: no such directory")
        if (path / CONFIG).is_file():
            found.append(path)
            continue
        inside = sorted(p.parent for p in path.rglob(CONFIG)  # not a run's own checkpoints/ or export/
                        if not {"checkpoints", "export"} & set(p.relative_to(path).parts))
        if not inside:
            raise FileNotFoundError(f"runs={given}: neither a run directory nor a directory holding runs "
                                    f"(no {CONFIG} in it or below it)")
        found.extend(inside)
    return list(dict.fromkeys(p.resolve() for p in found))  # each run once, in the order given



def _read_curves(path: Path, warnings: list[str] | None = None,
                 latest: dict[str, Any] | None = None) -> dict[str, list[tuple[float, float]]]:
    """The CURVES columns of a metrics.csv as (step, value) points. A damaged file is a ValueError naming it; a NaN/Inf
    value (a diverged evaluation or episode) is left out of the curve with a note in ``warnings``. ``latest`` (when
    given) gets the furthest row's ``steps`` and ``wall_time_s``: what a run without a summary.json has reached."""
    curves: dict[str, list[tuple[float, float]]] = {name: [] for name in CURVES}
    if not os.path.lexists(path):  # missing: not written yet; anything else there is read, or named (a directory)
        return curves
    _refuse_not_a_file(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            lines, cut = complete_lines(f.read())  # a row cut off mid-write is no point of the curve
        reader = csv.DictReader(lines)
        rows = list(reader)
        columns = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error, OSError) as exc:
        raise ValueError(f"{path}: not a readable metrics file ({exc})") from None
    if cut and warnings is not None:
        warnings.append(f"{path}: its last row (line {len(lines) + 1}) is cut off, without a line end (the run was "
                        "stopped, or its disk filled, while writing it; or it is being written now); left out")
    if rows and "step" not in columns:
        raise ValueError(f"{path}: not a metrics file a run writes (no 'step' column; the header is "
                         f"{','.join(str(c) for c in columns)[:120]!r})")
    skipped: dict[str, list[str]] = {}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        for name, column in CURVES.items():
            value = row.get(column)
            if value in (None, ""):
                continue
            try:
                step = float(row["step"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}: line {line}: step is {row['step']!r}, not a number") from None
            try:
                ret = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{path}: line {line} (step {row['step']}): {column} is {value!r}, "
                                 "not a number") from None
            if not math.isfinite(step) or step < 0:  # a row the run could not have written: the file is damaged
                raise ValueError(f"{path}: line {line}: a row with step {row['step']!r} (steps are counts >= 0)")
            if math.isfinite(ret):
                curves[name].append((step, ret))
            else:  # not a point of the curve, but not passed over in silence either
                skipped.setdefault(column, []).append(row["step"])
    if latest is not None and rows:
        latest.update(_latest_row(path, rows))
    for points in curves.values():  # np.interp needs increasing steps; a file written out of order is read in order
        points.sort(key=lambda point: point[0])
    for column, steps in skipped.items():
        if warnings is not None:
            warnings.append(f"{path}: {column} is NaN or infinite in {len(steps)} row(s) (first at step "
                            f"{steps[0]}); left out of the curve")
    return curves


def _refuse_not_a_file(path: Path) -> None:
    """A ValueError naming ``path`` if it is no regular file (a link to /dev/zero was read until memory ran out)."""
    problem = not_a_file(path)
    if problem is not None:
        raise ValueError(f"{path}: cannot be read ({problem}); a run writes a file there: move it aside")


def _latest_row(path: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The steps and wall time (seconds of training, over all of a resumed run's segments) of the furthest row."""
    steps: list[float] = []
    for line, row in enumerate(rows, start=2):
        try:
            step = float(row["step"])
        except (TypeError, ValueError):
            raise ValueError(f"{path}: line {line}: step is {row['step']!r}, not a number") from None
        if not math.isfinite(step) or step < 0:
            raise ValueError(f"{path}: line {line}: a row with step {row['step']!r} (steps are counts >= 0)")
        steps.append(step)
    i = max(range(len(rows)), key=steps.__getitem__)  # the first of the furthest rows (an eval row repeats it)
    wall: Any = rows[i].get("wall_time")
    if wall not in (None, ""):
        try:
            wall = float(wall)
        except (TypeError, ValueError):
            wall = math.nan
        if not math.isfinite(wall) or wall < 0:
            raise ValueError(f"{path}: line {i + 2} (step {rows[i]['step']}): wall_time is {rows[i]['wall_time']!r}, "
                             "not a number of seconds")
    step = steps[i]
    return {"steps": int(step) if step.is_integer() else step, "wall_time_s": None if wall in (None, "") else wall}


def load_run(path: Path) -> Run:
    from omegaconf import OmegaConf

    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path / CONFIG), resolve=False)
    except Exception as exc:  # a YAML error names the file
        raise ValueError(f"{path / CONFIG}: not a readable config ({str(exc).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path / CONFIG}: not a run config (a {type(loaded).__name__}, not a mapping of keys)")
    config = flatten_config(loaded)
    missing = [k for k in ("algo.name", "env.id") if config.get(k) in (None, "")]
    if missing:
        raise ValueError(f"{path / CONFIG}: not a run config (no {' or '.join(missing)} in it; a run's "
                         f"{CONFIG} holds its whole resolved config)")
    config = flatten_config(with_schema_defaults(loaded))  # (a run saved before a key: the value it trained with)
    warnings: list[str] = []
    not_finite: list[str] = []
    summary = _read_json(path / SUMMARY, numbers=SUMMARY_NUMBERS, not_finite=not_finite)
    has_summary = summary is not None
    if summary is None:  # in progress, or stopped before writing it: its metrics.csv says how far it got
        summary = {}
    if not_finite:
        warnings.append(f"{path / SUMMARY}: {_are(not_finite)} NaN or infinite; shown as not measured ('-')")
    eval_not_finite: list[str] = []
    evaluated = _read_json(path / EVALUATED, numbers=("return_mean", "return_std", "episodes", "checkpoint_step"),
                           not_finite=eval_not_finite, flags=("deterministic",))
    if eval_not_finite:
        warnings.append(f"{path / EVALUATED}: {_are(eval_not_finite)} NaN or infinite; shown as not measured ('-')")
    _refuse_another_runs(path, config, summary, evaluated)
    latest: dict[str, Any] = {}
    curves = _read_curves(path / METRICS, warnings, latest=None if has_summary else latest)
    run = Run(path, config, summary, curves, evaluated, warnings, set(not_finite), latest)
    evaluated_at, trained = (evaluated or {}).get("checkpoint_step"), run.measured("steps")
    if evaluated_at is not None and trained is not None and evaluated_at < trained:  # resumed after `robo-rl eval`
        warnings.append(f"{path / EVALUATED}: evaluates the checkpoint at step {int(evaluated_at):,}, but the run has "
                        f"since trained to step {int(trained):,}; `robo-rl eval {shlex.quote(f'run_dir={path}')}` evaluates its "
                        + ("final policy" if (summary or {}).get("status") == "completed"
                           else "newest checkpoint (the run has not completed)"))
    return run


def _refuse_another_runs(path: Path, config: dict[str, Any], summary: dict[str, Any],
                         evaluated: dict[str, Any] | None) -> None:
    """A summary.json or eval.json of another run (copied in, or left by a run that was replaced) is a ValueError
    naming it: its numbers would be given as this run's. Told by the learner and seed config.yaml names, and by the
    task the run's summary names (the env's id as built, which config.yaml's env.id need not spell the same)."""
    found = [(SUMMARY, summary, "algo", "algo.name"), (SUMMARY, summary, "seed", "seed"),
             (EVALUATED, evaluated or {}, "algo", "algo.name")]
    for name, data, key, config_key in found:
        theirs, mine = data.get(key), config.get(config_key)
        if theirs is not None and mine is not None and theirs != mine:
            rerun = f" (`robo-rl eval {shlex.quote(f'run_dir={path}')}` writes this run's)" if name == EVALUATED else ""
            raise ValueError(f"{path / name}: {key} is {theirs!r}, and {path / CONFIG} has {config_key}={mine!r}: the "
                             f"file of another run; move it aside{rerun}")
    trained, evaluated_on = summary.get("env"), (evaluated or {}).get("env")
    if trained is not None and evaluated_on is not None and trained != evaluated_on:
        raise ValueError(f"{path / EVALUATED}: env is {evaluated_on!r}, and the run trained on {trained!r} "
                         f"({path / SUMMARY}): the file of another run; move it aside (`robo-rl eval {shlex.quote(f'run_dir={path}')}` "
                         "writes this run's)")


def _are(keys: list[str]) -> str:
    return f"{', '.join(keys)} {'is' if len(keys) == 1 else 'are'}"


#: summary.json keys compare reads as numbers
SUMMARY_NUMBERS = ("final_eval_return_mean", "best_eval_return_mean", "steps", "wall_time_s", "steps_per_s", "seed")


def _read_json(path: Path, numbers: Sequence[str] = (), not_finite: list[str] | None = None,
               flags: Sequence[str] = ()) -> dict[str, Any] | None:
    """A JSON object, with ``numbers`` (where present and not null) numbers and ``flags`` true/false; NaN/Inf among
    the numbers read as null (not measured; their keys are added to ``not_finite``), so compare.json stays valid JSON.
    Anything else is a ValueError naming the file."""
    if not os.path.lexists(path):  # missing: not written yet; anything else there is read, or named (a directory)
        return None
    _refuse_not_a_file(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:  # e.g. a directory by that name
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found a {type(data).__name__}")
    for key in numbers:
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{path}: {key} is {value!r}, expected a number")
        if not math.isfinite(value):
            data[key] = None
            if not_finite is not None:
                not_finite.append(key)
    for key in flags:
        if data.get(key) is not None and not isinstance(data[key], bool):
            raise ValueError(f"{path}: {key} is {data[key]!r}, expected true or false")
    return data


@dataclass
class Group:
    label: str
    keys: dict[str, Any]  # the config values that set this group apart
    runs: list[Run]


def group_runs(runs: list[Run], group_by: Sequence[str] | None = None) -> list[Group]:
    """Runs with equal configs apart from the seed (or equal ``group_by`` values) form one group."""
    if group_by:
        unknown = [k for k in group_by if not any(k in r.config for r in runs)]
        if unknown:
            keys = sorted({k for r in runs for k in r.config})
            raise ValueError(f"group_by: no run has the key(s) {', '.join(unknown)}; config keys look like "
                             f"{', '.join(keys[:8])}, ...")
        varying = list(group_by)
    else:
        keys = sorted({k for r in runs for k in r.config if not _ignored(k)})
        varying = [k for k in keys if len({json.dumps(r.config.get(k), default=str) for r in runs}) > 1]
        varying.sort(key=lambda k: (LABEL_KEYS.index(k) if k in LABEL_KEYS else len(LABEL_KEYS), k))
    named = varying if group_by else [k for k in varying if not _implied(k, runs)]
    groups: dict[str, Group] = {}
    for run in runs:
        values = {k: run.config.get(k) for k in varying}
        ident = json.dumps(values, sort_keys=True, default=str)
        if ident not in groups:
            groups[ident] = Group(_label({k: values[k] for k in named}, run), values, [])
        groups[ident].runs.append(run)
    for group in groups.values():
        group.runs.sort(key=_seed_order)
    return list(groups.values())


def _seed_order(run: Run) -> tuple[int, float, str]:
    """Numeric seeds first, in order; anything else (a seed a config spells as text) after them, by its text."""
    seed = run.seed
    if isinstance(seed, (int, float)) and not isinstance(seed, bool) and math.isfinite(seed):
        return (0, float(seed), "")
    return (1, 0.0, json.dumps(seed, default=str))


def _ignored(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in NOT_CONFIG)


def _implied(key: str, runs: list[Run]) -> bool:
    """Whether ``key`` (e.g. algo.tau, a learner-specific default elsewhere, or a learner's settings for a task) only
    differs between runs of different algorithms, heads or tasks, where their names already say it: it is then
    left out of the labels (compare.json keeps every key)."""
    if key in LABEL_KEYS:
        return False
    seen: dict[str, str] = {}
    for run in runs:
        owner = f"{run.config.get('algo.name')}/{run.config.get('policy.name')}/{run.config.get('env.id')}"
        value = json.dumps(run.config.get(key), default=str)
        if seen.setdefault(owner, value) != value:
            return False
    return len(seen) > 1


def _label(values: dict[str, Any], run: Run) -> str:
    if not values:
        return f"{run.config.get('algo.name')} {run.config.get('env.id')}"
    shown = [f"{k}={_shown(v)}" for k, v in list(values.items())[:MAX_LABEL_KEYS]]
    more = len(values) - len(shown)
    return " ".join(shown) + (f" (+{more} more keys)" if more > 0 else "")


def _shown(value: Any) -> str:
    """A config value as a label shows it, in the config's spelling (true, null, [0.8, 1.2]); a filter chain by its
    filters' types (box+rate+energy_tank), where its JSON ran to hundreds of characters."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, str) and value.startswith("[{"):  # a list, as flatten_config keeps it: its JSON text
        try:
            entries = json.loads(value)
        except ValueError:
            return value
        if all(isinstance(v, dict) and "type" in v for v in entries):
            return "+".join(str(v["type"]) for v in entries)
    return str(value)


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "std": None}
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std())}


def mean_curve(curves: list[list[tuple[float, float]]]) -> dict[str, list[float]] | None:
    """Mean and min-max over runs on the steps all runs cover (each run interpolated onto every step any run has
    there, so the curve does not depend on the runs' order); an empty curve (a run not evaluated yet) is left out.

    Covered: from the latest first point to the earliest last one; np.interp would otherwise hold a run's first value
    flat before it, a value that run never had at those steps."""
    curves = [c for c in curves if c]
    if not curves:
        return None
    start, end = max(c[0][0] for c in curves), min(c[-1][0] for c in curves)
    # the union: with the first run's steps, a run evaluated every 300 steps beside a 500-step run evaluated at 400
    # and 500 had none between them, and the group's curve was left out or not by the order of the seeds
    steps = np.asarray(sorted({s for c in curves for s, _ in c if start <= s <= end}), dtype=np.float64)
    if steps.size == 0:
        return None
    ys = np.stack([np.interp(steps, [s for s, _ in c], [v for _, v in c]) for c in curves])
    return {"step": steps.tolist(), "mean": ys.mean(0).tolist(), "min": ys.min(0).tolist(), "max": ys.max(0).tolist()}


def compare(paths: str | Path | Sequence[str | Path], group_by: str | Sequence[str] | None = None,
            curve: str = "eval") -> dict[str, Any]:
    if not isinstance(curve, str) or curve not in CURVES:
        raise ValueError(f"curve={curve if isinstance(curve, str) else repr(curve)}: expected one of {', '.join(CURVES)}")
    if isinstance(paths, (str, Path)):  # one directory, not a sequence of its characters
        paths = [paths]
    if isinstance(group_by, str):
        group_by = [group_by]
    paths = list(paths)
    if not paths:
        raise ValueError("compare: no run directories given (pass run directories or directories holding runs)")
    runs = [load_run(p) for p in find_runs(paths)]
    out_groups = []
    warnings = [w for r in runs for w in r.warnings]
    for group in group_runs(runs, group_by):
        finals = [r.final for r in group.runs if r.final is not None]
        evaluated = [r.evaluated for r in group.runs if r.evaluated and r.evaluated.get("return_mean") is not None]
        sampled = [str(r.path / EVALUATED) for r in group.runs
                   if r.evaluated and r.evaluated.get("return_mean") is not None and r.evaluated.get("deterministic") is False]
        if sampled and len(sampled) < len(evaluated):  # one mean of two different measures
            warnings.append(f"group {group.label}: {', '.join(sampled)} {'is' if len(sampled) == 1 else 'are'} of "
                            "stochastic evaluations (deterministic=false), the group's other eval.json deterministic "
                            "ones; the `robo-rl eval` mean averages both (evaluate every run alike)")
        tasks = sorted({str(r.config.get("env.id")) for r in group.runs})
        if len(tasks) > 1:  # a group_by= that leaves env.id out: one mean of returns on different scales
            warnings.append(f"group {group.label}: its runs are on {len(tasks)} tasks ({', '.join(tasks)}), whose returns "
                            "its means average together; add env.id to group_by= to compare each task's runs")
        by_seed: dict[str, list[str]] = {}
        for r in group.runs:
            by_seed.setdefault(json.dumps(r.seed, default=str), []).append(str(r.path))
        repeated = {seed: where for seed, where in by_seed.items() if len(where) > 1}
        if repeated and not group_by:  # one config, one seed, twice: copies of one run (or one seed run twice),
            # counted as seeds they shrink the std (with group_by= the runs may differ in other settings)
            warnings.append(f"group {group.label}: " + "; ".join(
                f"{len(where)} runs share seed {seed} ({', '.join(where)})" for seed, where in repeated.items())
                + ": copies of one run? each counts as a seed in the group's mean and std")
        bests = [r.best for r in group.runs if r.best is not None]
        out_groups.append({
            "label": group.label,
            "config": group.keys,
            "runs": [{"path": str(r.path), "seed": r.seed, "status": r.status, "final_eval_return": r.final,
                      "best_eval_return": r.best, "steps": r.measured("steps"),
                      "robo_rl_eval": None if not r.evaluated else {
                          k: r.evaluated.get(k) for k in ("return_mean", "return_std", "episodes", "deterministic",
                                                          "checkpoint_step")},
                      "wall_time_s": r.measured("wall_time_s"), "steps_per_s": r.measured("steps_per_s"),
                      "curve_points": len(r.curves[curve])}
                     for r in group.runs],
            "final_eval_return": _stats(finals),
            "best_eval_return": _stats(bests),
            "robo_rl_eval_return": _stats([float(e["return_mean"]) for e in evaluated]),
            "robo_rl_eval_runs": len(evaluated),
            "steps": _stats([float(r.measured("steps")) for r in group.runs if r.measured("steps") is not None]),
            "wall_time_s": _stats([float(r.measured("wall_time_s")) for r in group.runs if r.measured("wall_time_s")]),
            "steps_per_s": _stats([float(r.measured("steps_per_s")) for r in group.runs if r.measured("steps_per_s")]),
            "curve": mean_curve([r.curves[curve] for r in group.runs]),
            "curve_runs": sum(bool(r.curves[curve]) for r in group.runs),  # the runs it averages
        })
    return {"curve": curve, "curve_column": CURVES[curve], "runs": len(runs), "groups": out_groups,
            "warnings": warnings, "date": time.strftime("%Y-%m-%d %H:%M")}


def _fmt(stats: dict[str, float | None], n: int) -> str:
    if stats["mean"] is None:
        return "-"
    return format_return(stats["mean"], stats["std"] if n > 1 else None)


def _steps(runs: list[dict[str, Any]]) -> str:
    """The runs' env steps: one number, or the range when they differ (a pooled group's mean is no run's budget)."""
    steps = [r["steps"] for r in runs if r["steps"] is not None]
    if not steps:
        return "-"
    low, high = min(steps), max(steps)
    return f"{low:,.0f}" if low == high else f"{low:,.0f}-{high:,.0f}"


def table(result: dict[str, Any]) -> str:
    """The comparison as a markdown table (one row per group)."""
    head = ["group", "runs (seeds)", "final eval return", "per seed", "best eval return", "env steps", "wall time / run",
            "steps/s"]
    with_eval = any(g["robo_rl_eval_runs"] for g in result["groups"])
    if with_eval:
        head.insert(5, "`robo-rl eval` return (runs)")
    rows = []
    for g in result["groups"]:
        seeds = ", ".join(str(r["seed"]) for r in g["runs"])
        d = return_decimals(*(r["final_eval_return"] for r in g["runs"]), minimum=0)
        per_seed = ", ".join(("failed" if r["status"].startswith("failed") else "-") if r["final_eval_return"] is None
                             else f"{r['final_eval_return']:.{d}f}" for r in g["runs"])
        failed = [r for r in g["runs"] if r["status"].startswith("failed")]
        not_done = [r for r in g["runs"] if r["status"] != "completed" and r not in failed]
        notes = [f"{len(which)} {what} (seed {', '.join(str(r['seed']) for r in which)})"
                 for what, which in (("failed", failed), ("not completed", not_done)) if which]
        wall = g["wall_time_s"]["mean"]
        n_final = sum(r["final_eval_return"] is not None for r in g["runs"])
        n_best = sum(r["best_eval_return"] is not None for r in g["runs"])
        rows.append([g["label"] + (f" ({', '.join(notes)})" if notes else ""), f"{len(g['runs'])} ({seeds})",
                     _fmt(g["final_eval_return"], n_final), per_seed, _fmt(g["best_eval_return"], n_best),
                     _steps(g["runs"]),
                     "-" if wall is None else format_duration(wall),
                     "-" if g["steps_per_s"]["mean"] is None else f"{g['steps_per_s']['mean']:,.0f}"])
        if with_eval:
            n = g["robo_rl_eval_runs"]
            rows[-1].insert(5, f"{_fmt(g['robo_rl_eval_return'], n)} ({n})" if n else "-")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path | None:
    """Each group's mean curve with the min-max band of its runs."""
    from matplotlib.figure import Figure  # not pyplot's: that switched the caller's backend (see plot_learning_curve)

    groups = [g for g in result["groups"] if g["curve"]]
    if not groups:
        return None
    shown = groups[:MAX_PLOTTED]
    fig = Figure(figsize=(8, 4.5), dpi=120)
    ax = fig.subplots()
    for g in shown:
        c = g["curve"]
        n = g.get("curve_runs", len(g["runs"]))  # the runs the curve averages (a run without a curve yet is not)
        line, = ax.plot(c["step"], c["mean"], marker="o" if len(c["step"]) < 30 else None, ms=3,
                        label=f"{g['label']} (n={n}" + (f" of {len(g['runs'])})" if n < len(g["runs"]) else ")"))
        if n > 1:
            ax.fill_between(c["step"], c["min"], c["max"], color=line.get_color(), alpha=0.2)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("evaluation return" if result["curve"] == "eval" else "training episode return")
    title = "mean over seeds, band: min-max"
    if len(shown) < len(groups):
        title += f" (first {len(shown)} of {len(groups)} groups; compare.json has all)"
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.14), fontsize=7, frameon=False)
    save_figure_atomic(fig, path, bbox_inches="tight")
    return path


def write(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """compare.json, compare.md and compare.png (when there is a curve) in ``out_dir``: all of them, or, when a write
    fails (a full disk), none of them, with the earlier comparison there left whole and the directories made for it
    (a new runs/compare-<time>/) removed."""
    try:  # rendered before anything is written; strict JSON: a bare NaN/Infinity is not JSON
        text, md = json.dumps(result, indent=2, allow_nan=False), table(result) + "\n"
    except ValueError as exc:
        raise ValueError(f"compare.json would not be valid JSON ({exc}); nothing was written") from None
    made = []  # the directories this write makes, deepest first
    parent = Path(out_dir)
    while not os.path.lexists(parent) and parent != parent.parent:
        made.append(parent)
        parent = parent.parent
    stage = None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # each file is written whole into a hidden directory first, the plot (the one most likely to fail) first, and
        # only then moved over the earlier ones: a failed write (a full disk) left a cut compare.png, or a new
        # compare.png beside the earlier compare.json when compare.json failed
        stage = Path(tempfile.mkdtemp(prefix=".compare-", suffix=".tmp", dir=out_dir))
        png = plot(result, stage / "compare.png")
        (stage / "compare.json").write_text(text, encoding="utf-8", newline="")
        (stage / "compare.md").write_text(md, encoding="utf-8", newline="")
        written = {"json": out_dir / "compare.json", "md": out_dir / "compare.md"}
        if png is not None:
            written["png"] = out_dir / "compare.png"
        for path in written.values():
            (stage / path.name).replace(path)
        if png is None:  # an earlier comparison's plot is not this one's (it had curves this one has not)
            (out_dir / "compare.png").unlink(missing_ok=True)
    except BaseException:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        for directory in made:  # only what is still empty (nothing of another's put there meanwhile)
            try:
                directory.rmdir()
            except OSError:
                break
        raise
    shutil.rmtree(stage, ignore_errors=True)
    return written
