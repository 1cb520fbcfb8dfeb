"""`robo-rl compare runs=...`: finished runs side by side (robo_rl/compare.py does the reading and the tables)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from robo_rl.commands.common import EXIT_FAILED, EXIT_USAGE, error, parse_options

COMPARE_HELP = """\
usage: robo-rl compare runs=<dir>[,<dir>...] [key=value ...]

Put finished runs side by side. Each runs= entry is a run directory or a directory holding runs (a
`robo-rl train -m ...` sweep). Runs whose configs differ only in the seed form one group; for each
group the table gives the final and best evaluation return (mean ± population std over seeds, and
each seed's), env steps, wall time and steps/s, and the runs' `robo-rl eval` results where eval.json
exists. Reads config.yaml, summary.json, metrics.csv and eval.json; trains nothing.
Writes compare.md (the table), compare.json (all numbers, each run's path) and compare.png (each
group's mean curve over seeds with the min-max band, the first 10 groups; no plot, and an earlier
one there removed, when no run has a curve, e.g. curve=rollout before any training episode ended).

keys:
  runs=<dir>[,<dir>...]  run directories or sweep directories (required; also runs=[a,b]; patterns
                         such as 'runs=runs/sweep-*' are expanded)
  group_by=null          config keys that define a group instead, e.g. group_by=algo.name or
                         group_by=[algo.name,env.id] (runs agreeing on them are pooled)
  curve=eval             the plotted curve: eval (evaluation return) or rollout (training episodes)
  out_dir=null           where to write (default: the runs= directory when there is one, else
                         runs/compare-<date-time>)
"""



@dataclass
class CompareCommandConfig:
    runs: Any = "???"
    group_by: Any = None
    curve: str = "eval"
    out_dir: Optional[str] = None


def _listed(value: Any) -> list[str]:
    """A key given as a,b or [a,b] (or one value) as a list of non-empty strings. A sweep job's directory has
    commas in its name (runs/s/algo=sac,seed=1): the longest run of comma-separated pieces that names an existing
    directory is kept as one entry, so a list of such directories works too."""
    from omegaconf import ListConfig

    if isinstance(value, (list, tuple, ListConfig)):
        items = [str(v) for v in value]
    else:
        pieces, items, i = str(value).split(","), [], 0
        while i < len(pieces):
            j = next((j for j in range(len(pieces), i + 1, -1) if Path(",".join(pieces[i:j]).strip()).is_dir()), i + 1)
            items.append(",".join(pieces[i:j]))
            i = j
    return [v.strip() for v in items if v.strip()]


def compare_main(args: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(COMPARE_HELP)
        return 0
    import errno
    import glob
    import os
    import time

    from robo_rl.compare import compare, table, write

    try:
        opts = parse_options(args, CompareCommandConfig, "compare")
        runs = _listed(opts.runs) if opts.runs is not None else []
        if not runs:
            raise ValueError("runs= names no run: give run directories or directories holding runs, e.g. "
                             "runs=runs/sweep-sac-Hopper-v5-<time> (see robo-rl compare --help)")
        group_by = _listed(opts.group_by) if opts.group_by is not None else None
        if opts.out_dir:
            out = Path(opts.out_dir)
        elif len(runs) == 1 and (not glob.has_magic(runs[0]) or Path(runs[0]).is_dir()):
            out = Path(runs[0])  # one directory (a sweep's, its name may hold brackets: sw[1]): the outputs go in it
        elif len(runs) == 1 and len(matched := glob.glob(runs[0])) == 1 and Path(matched[0]).is_dir():
            out = Path(matched[0])  # a pattern matching one directory, not a directory named after the pattern
        else:  # a new directory: two comparisons in one second (a script's) wrote the second over the first
            stamp, n = time.strftime('%Y%m%d-%H%M%S'), 1
            out = Path("runs") / f"compare-{stamp}"
            while os.path.lexists(out):
                n += 1
                out = Path("runs") / f"compare-{stamp}-{n}"
        from sim2real.export import check_out_dir

        holds = "compare writes compare.json, compare.md and compare.png into it"
        if opts.out_dir:  # before any run is read (a runs= directory is checked as a run directory)
            check_out_dir(out, holds=holds)
        elif out.is_dir() or not out.exists() and out.parent == Path("runs"):  # the default place: also checked now
            try:
                check_out_dir(out, holds=holds)
            except ValueError as exc:
                raise ValueError(f"out_dir is unset, so the outputs go to {out}, but "
                                 f"{str(exc).split(': ', 1)[-1]}".replace("choose another out_dir",
                                                                          "give out_dir=<dir>")) from None
        result = compare(runs, group_by, opts.curve)
    except (FileNotFoundError, ValueError) as exc:
        return error(str(exc), EXIT_USAGE)
    for warning in result["warnings"]:  # read as not measured, never in silence
        print(f"robo-rl: warning: {warning}", file=sys.stderr)
    try:
        written = write(result, out)
    except ValueError as exc:
        return error(str(exc), EXIT_FAILED)
    except OSError as exc:  # the place cannot hold the outputs (no such place, permissions), or a full disk
        where = f"out_dir={opts.out_dir}" if opts.out_dir else f"{out} (the default, out_dir unset)"
        reason = exc.strerror or str(exc)
        if isinstance(exc, (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError)) \
                or exc.errno == errno.EROFS:
            return error(f"{where}: cannot write compare.json there ({reason}); choose another out_dir", EXIT_USAGE)
        return error(f"{where}: writing the comparison failed ({reason})", EXIT_FAILED)
    print(table(result))
    curves = [g["curve"] for g in result["groups"] if g["curve"]]
    if opts.curve == "eval" and curves and all(len(c["step"]) < 2 for c in curves):
        if all(r["curve_points"] < 2 for g in result["groups"] for r in g["runs"]):
            print("\nnote: each run has one evaluation, so the plot has one point per group; "
                  "curve=rollout plots the training episodes' returns instead")
        else:  # a shorter run (failed, unfinished, a smaller steps=) ends its group's curve where the runs overlap
            print("\nnote: the plot has one point per group: a group's curve spans only the steps all its runs have "
                  "reached, and there its runs share one evaluation (a failed, unfinished or shorter run ends it)")
    print(f"\n{result['runs']} run{'s' if result['runs'] != 1 else ''} in {len(result['groups'])} group(s); wrote "
          + ", ".join(str(p) for p in written.values()))
    return 0
