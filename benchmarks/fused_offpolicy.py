"""SAC's, TD3's and EXPO's update: the fused step (hand-derived gradients) against the autograd path, in one process.

robo_rl/learners/offpolicy_fused.py computes the update without autograd (``algo.fused=auto``, the default,
where it applies). This script times both paths on the same learner, replay and batches, segments of
updates interleaved round by round (the shared host's load moves both alike), at throughput.py's
settings (Hopper-v5, batch 256, 256x256 actor and twin critics, a runner warmed up past its random steps; EXPO at its
defaults, a 256x256x256 flow base, 256x256 edit policy and twin critics), in float32 and with ``precision=bf16``
(SAC, TD3: EXPO runs float32 only), and prints the median milliseconds per update of each path and
their ratio. With ``--compiled``, also the fused step as ``compile=true`` runs it (its gradient computations as
torch.compile'd C++ graphs; compiled in the warm-up, outside the timed rounds) and its ratio to the eager fused
step. The whole-step ratio against Stable-Baselines3 is throughput.py's business.

    python benchmarks/fused_offpolicy.py                     # SAC and TD3, float32 and bf16, 9 rounds
    python benchmarks/fused_offpolicy.py --algos td3 --precisions fp32 --rounds 3
    python benchmarks/fused_offpolicy.py --compiled          # and compile=true's step (needs gcc or clang)
    python benchmarks/fused_offpolicy.py --algos expo --rounds 30 --updates 10   # EXPO (its flow base's step included)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, save, whole_number  # noqa: E402
from benchmarks.throughput import ours_runner  # noqa: E402
from robo_rl.perf import tune_malloc  # noqa: E402


def measure(algo: str, precision: str, env_id: str, rounds: int, updates: int, hidden: int, batch: int,
            compiled: bool = False) -> dict:
    runner, _ = ours_runner(algo, env_id, "gymnasium", False, hidden=hidden, batch=batch, precision=precision)
    torch.set_num_threads(runner.threads)  # robo-rl's default for this learner, as throughput.py's runs train with
    learner = runner.learner
    step = learner._fused_step
    if step is None:
        raise SystemExit(f"{algo}: the fused step does not apply to this learner (algo.fused=auto fell back)")
    steps = {"autograd": None, "fused": step}  # None: update() takes the autograd path
    if compiled:  # a second step on the same learner, as compile=true builds it
        twin = type(step)(learner)
        twin.dtype = step.dtype
        twin.compile()
        steps["compiled"] = twin

    def segment(path: str) -> float:
        learner._fused_step = steps[path]
        batches = [runner.replay.sample(batch) for _ in range(updates)]
        start = time.perf_counter()
        for b in batches:
            learner.update(b)
        return (time.perf_counter() - start) / updates * 1e3

    for path in steps:  # warm-up (and the compile)
        segment(path)
    times: dict[str, list[float]] = {path: [] for path in steps}
    for r in range(rounds):
        for path in steps:
            times[path].append(segment(path))
        print(f"{algo} {precision} round {r + 1}/{rounds}: " + ", ".join(f"{path} {t[-1]:.2f} ms" for path, t in times.items()),
              flush=True)
    learner._fused_step = step
    med = {k: statistics.median(v) for k, v in times.items()}
    per_round = [a / f for a, f in zip(times["autograd"], times["fused"])]
    out = {"algo": algo, "precision": precision, "env": env_id, "hidden": hidden, "batch": batch,
           "threads": torch.get_num_threads(), "updates_per_segment": updates, "rounds_ms": times, "median_ms": med,
           "speedup": med["autograd"] / med["fused"], "speedup_per_round": [min(per_round), max(per_round)]}
    if compiled:
        per_round = [f / c for f, c in zip(times["fused"], times["compiled"])]
        out["compiled_speedup"] = med["fused"] / med["compiled"]
        out["compiled_speedup_per_round"] = [min(per_round), max(per_round)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=["sac", "td3"], choices=["sac", "td3", "expo"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--rounds", type=whole_number(), default=9)
    parser.add_argument("--updates", type=whole_number(), default=40, help="updates per timed segment")
    parser.add_argument("--hidden", type=whole_number(), default=256)
    parser.add_argument("--batch", type=whole_number(), default=256)
    parser.add_argument("--name", default="fused_offpolicy")
    parser.add_argument("--compiled", action="store_true", help="also time compile=true's fused step")
    args = parser.parse_args()
    tune_malloc()  # as the robo-rl command does
    results = [measure(a, p, args.env, args.rounds, args.updates, args.hidden, args.batch, args.compiled)
               for a in args.algos for p in args.precisions if (a, p) != ("expo", "bf16")]  # EXPO refuses bf16
    rows = [[r["algo"].upper(), r["precision"], f"{r['median_ms']['autograd']:.2f}", f"{r['median_ms']['fused']:.2f}",
             f"**{r['speedup']:.2f}x**", f"{r['speedup_per_round'][0]:.2f}-{r['speedup_per_round'][1]:.2f}x"]
            + ([f"{r['median_ms']['compiled']:.2f}", f"**{r['compiled_speedup']:.2f}x**",
                f"{r['compiled_speedup_per_round'][0]:.2f}-{r['compiled_speedup_per_round'][1]:.2f}x"]
               if args.compiled else [])
            for r in results]
    table = markdown_table(
        [f"learner ({args.env}, batch {args.batch}, {args.hidden}x{args.hidden})", "precision", "autograd ms / update",
         "fused ms / update", "speedup (medians)", "speedup, per round"]
        + (["compiled fused ms / update", "compiled vs fused (medians)", "compiled vs fused, per round"]
           if args.compiled else []), rows)
    save(args.name, {"results": results}, table)


if __name__ == "__main__":
    main()
