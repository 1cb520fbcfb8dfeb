"""SAC's and TD3's update: the fused step (hand-derived gradients) against the autograd path, in one process.

robo_rl/learners/offpolicy_fused.py computes the update without autograd (``algo.fused=auto``, the default,
where it applies). This script times both paths on the same learner, replay and batches, segments of
updates interleaved round by round (the shared host's load moves both alike), at throughput.py's
settings (Hopper-v5, batch 256, 256x256 actor and twin critics, a runner warmed up past its random steps),
in float32 and with ``precision=bf16``, and prints the median milliseconds per update of each path and
their ratio. The whole-step ratio against Stable-Baselines3 is throughput.py's business.

    python benchmarks/fused_offpolicy.py                     # SAC and TD3, float32 and bf16, 9 rounds
    python benchmarks/fused_offpolicy.py --algos td3 --precisions fp32 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, save  # noqa: E402
from benchmarks.throughput import ours_runner  # noqa: E402
from robo_rl.perf import tune_malloc  # noqa: E402


def measure(algo: str, precision: str, env_id: str, rounds: int, updates: int, hidden: int, batch: int) -> dict:
    runner, _ = ours_runner(algo, env_id, "gymnasium", False, hidden=hidden, batch=batch, precision=precision)
    torch.set_num_threads(runner.threads)  # robo-rl's default for this learner, as throughput.py's runs train with
    learner = runner.learner
    step = learner._fused_step
    if step is None:
        raise SystemExit(f"{algo}: the fused step does not apply to this learner (algo.fused=auto fell back)")

    def segment(fused: bool) -> float:
        learner._fused_step = step if fused else None  # None: update() takes the autograd path
        batches = [runner.replay.sample(batch) for _ in range(updates)]
        start = time.perf_counter()
        for b in batches:
            learner.update(b)
        return (time.perf_counter() - start) / updates * 1e3

    segment(True), segment(False)  # warm-up
    times: dict[str, list[float]] = {"autograd": [], "fused": []}
    for r in range(rounds):
        times["autograd"].append(segment(False))
        times["fused"].append(segment(True))
        print(f"{algo} {precision} round {r + 1}/{rounds}: autograd {times['autograd'][-1]:.2f} ms, "
              f"fused {times['fused'][-1]:.2f} ms", flush=True)
    learner._fused_step = step
    med = {k: statistics.median(v) for k, v in times.items()}
    per_round = [a / f for a, f in zip(times["autograd"], times["fused"])]
    return {"algo": algo, "precision": precision, "env": env_id, "hidden": hidden, "batch": batch,
            "threads": torch.get_num_threads(), "updates_per_segment": updates, "rounds_ms": times, "median_ms": med,
            "speedup": med["autograd"] / med["fused"], "speedup_per_round": [min(per_round), max(per_round)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=["sac", "td3"], choices=["sac", "td3"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--updates", type=int, default=40, help="updates per timed segment")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--name", default="fused_offpolicy")
    args = parser.parse_args()
    tune_malloc()  # as the robo-rl command does
    results = [measure(a, p, args.env, args.rounds, args.updates, args.hidden, args.batch)
               for a in args.algos for p in args.precisions]
    rows = [[r["algo"].upper(), r["precision"], f"{r['median_ms']['autograd']:.2f}", f"{r['median_ms']['fused']:.2f}",
             f"**{r['speedup']:.2f}x**", f"{r['speedup_per_round'][0]:.2f}-{r['speedup_per_round'][1]:.2f}x"]
            for r in results]
    table = markdown_table(
        [f"learner ({args.env}, batch {args.batch}, {args.hidden}x{args.hidden})", "precision", "autograd ms / update",
         "fused ms / update", "speedup (medians)", "speedup, per round"], rows)
    save(args.name, {"results": results}, table)


if __name__ == "__main__":
    main()
