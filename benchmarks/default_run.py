"""Wall time and final return of the default `robo-rl train` (PPO, 1M steps), per task and seed.

    python benchmarks/default_run.py                          # Hopper-v5, seeds 0 1 2, one after another
    python benchmarks/default_run.py --seeds 0
    python benchmarks/default_run.py --envs walker2d halfcheetah ant --seeds 0 --name default_run_tasks

Runs the real command in a subprocess, exactly as a user types it (plus env=, seed= and run_dir=):
every setting is the default, so the table says what `robo-rl train env=<task>` gives out of the box.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, save, scratch_dir, whole_number  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["hopper"], help="env config names (configs/env/*.yaml)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--name", default="default_run", help="results file name under benchmarks/results/")
    parser.add_argument("--steps", type=whole_number(), default=None,
                        help="pass steps=N (default: none, the config's 1M); for a quick check of this script only")
    args = parser.parse_args()
    steps = [] if args.steps is None else [f"steps={args.steps}"]
    runs = []
    for env in args.envs:
        for seed in args.seeds:
            run_dir = scratch_dir() / f"default-{env}-s{seed}"
            t = time.perf_counter()
            code = subprocess.run([sys.executable, "-m", "robo_rl.cli", "train", f"env={env}", f"seed={seed}",
                                   f"run_dir={run_dir}", "log.progress_seconds=60", *steps]).returncode
            if code:  # robo-rl has said why
                sys.exit(code)
            wall = time.perf_counter() - t
            summary = json.loads((run_dir / "summary.json").read_text())
            runs.append({"env_config": env, "seed": seed, "command_wall_s": wall, **summary})
            print(f"{summary['env']} seed {seed}: {wall / 60:.1f} min, final eval "
                  f"{summary['final_eval_return_mean']:.0f} ± {summary['final_eval_return_std']:.0f}", flush=True)
    rows = []
    for env in args.envs:
        mine = [r for r in runs if r["env_config"] == env]
        rows += [[r["env"], r["seed"], f"{r['steps']:,}", f"{r['command_wall_s'] / 60:.1f} min",
                  f"{r['eval_time_s']:.0f} s" if "eval_time_s" in r else "-", f"{r['steps_per_s']:,.0f}",
                  f"{r['final_eval_return_mean']:.1f} ± {r['final_eval_return_std']:.1f}",
                  f"{r['best_eval_return_mean']:.1f}"] for r in mine]
        if len(mine) > 1:
            finals = [r["final_eval_return_mean"] for r in mine]
            rows.append([mine[0]["env"], "mean", "", f"{statistics.mean(r['command_wall_s'] for r in mine) / 60:.1f} min",
                         "", "", f"{statistics.mean(finals):.1f}", ""])
    table = markdown_table(["task", "seed", "env steps", "wall time (whole command)", "of which evaluations", "steps/s",
                            "final eval return (10 episodes)", "best eval"], rows)
    title = "`robo-rl train` (PPO, defaults)" if args.envs != ["hopper"] else "`robo-rl train` (PPO, Hopper-v5, defaults)"
    save(args.name, {"runs": runs}, title + "\n\n" + table)


if __name__ == "__main__":
    main()
