"""Wall time and final return of the default `robo-rl train` (PPO, Hopper-v5, 1M steps), per seed.

    python benchmarks/default_run.py                 # seeds 0 1 2, one after another
    python benchmarks/default_run.py --seeds 0

Runs the real command in a subprocess, exactly as a user types it (plus seed= and run_dir=).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, save  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        run_dir = Path(tempfile.mkdtemp()) / f"default-s{seed}"
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "robo_rl.cli", "train", f"seed={seed}", f"run_dir={run_dir}",
                        "log.progress_seconds=60"], check=True)
        wall = time.perf_counter() - t
        summary = json.loads((run_dir / "summary.json").read_text())
        runs.append({"seed": seed, "command_wall_s": wall, **summary})
        print(f"seed {seed}: {wall / 60:.1f} min, final eval {summary['final_eval_return_mean']:.0f} "
              f"± {summary['final_eval_return_std']:.0f}", flush=True)
    rows = [[r["seed"], f"{r['steps']:,}", f"{r['command_wall_s'] / 60:.1f} min", f"{r['steps_per_s']:,.0f}",
             f"{r['final_eval_return_mean']:.0f} ± {r['final_eval_return_std']:.0f}",
             f"{r['best_eval_return_mean']:.0f}"] for r in runs]
    finals = [r["final_eval_return_mean"] for r in runs]
    rows.append(["mean", "", f"{statistics.mean(r['command_wall_s'] for r in runs) / 60:.1f} min", "",
                 f"{statistics.mean(finals):.0f}", ""])
    table = markdown_table(["seed", "env steps", "wall time (whole command)", "steps/s",
                            "final eval return (10 episodes)", "best eval"], rows)
    save("default_run", {"runs": runs}, "`robo-rl train` (PPO, Hopper-v5, defaults)\n\n" + table)


if __name__ == "__main__":
    main()
