"""Where the time of one SAC/TD3 update goes: matmuls, fixed per-operation cost, and the rest.

The throughput benchmark shows robo-rl's SAC/TD3 spending under half of a step in matrix multiplies.
This script splits one update (Hopper-v5, batch 256, 256x256 actor and twin critics, the settings of
benchmarks/throughput.py) into three parts, measured in the same process with rounds interleaved:

  matmuls       every mm/addmm/bmm/baddbmm of the update, recorded with their shapes and memory
                layouts and replayed alone (throughput.py's matmul floor)
  fixed cost    the same update with 8x8 networks and batch 8: Python, dispatch, autograd and
                optimizer bookkeeping per operation, with almost nothing to compute
  the rest      update - matmuls - fixed cost: element-wise work on [2, 256, 256] activations
                (ReLU and its backward, bias gradients, Adam, loss terms) and memory traffic

and times a few element-wise operations on one [2, 256, 256] tensor (512 KiB) with their operands in
cache and after other data has evicted them (writing a buffer of 2 MiB: out of L2; 64 MiB: out of L3),
next to what the torch profiler measures for the same operations inside updates.

    python benchmarks/update_anatomy.py                 # SAC and TD3, 5 rounds
    python benchmarks/update_anatomy.py --algos sac --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, save, whole_number  # noqa: E402
from benchmarks.throughput import MatmulRecorder, matmul_flops, ours_runner, replay_seconds  # noqa: E402
from robo_rl.perf import tune_malloc  # noqa: E402

UPDATES = 40  # updates per timed segment
SHAPE = (2, 256, 256)  # a twin critic's hidden activations at batch 256
EVICT_MIB = (0, 2, 8, 64)  # buffer written before each timed call (0: operands stay in cache)


def build(algo: str, hidden: int, batch: int):
    """A learner and a sampler of its replay buffer, filled by throughput.py's warmed-up runner."""
    runner, _ = ours_runner(algo, "Hopper-v5", "gymnasium", False, hidden=hidden, batch=batch)
    return runner.learner, lambda: runner.replay.sample(batch)


def update_segment(learner, sample: Callable) -> Callable[[], float]:
    def run() -> float:
        batches = [sample() for _ in range(UPDATES)]
        t = time.perf_counter()
        for batch in batches:
            learner.update(batch)
        return (time.perf_counter() - t) / UPDATES * 1e3
    return run


def matmul_segment(learner, sample: Callable, threads: int) -> Callable[[], float]:
    with MatmulRecorder() as rec:
        for _ in range(UPDATES):
            learner.update(sample())
    calls = rec.calls
    flops = sum(matmul_flops(func, layout) for func, layout, _ in calls) / UPDATES

    def run() -> float:
        return replay_seconds(calls, threads, passes=3) / UPDATES * 1e3
    run.gflop = flops / 1e9  # type: ignore[attr-defined]
    return run


def elementwise_ops() -> dict[str, Callable[[], torch.Tensor]]:
    g = torch.randn(SHAPE)
    h = torch.randn(SHAPE).relu_()
    return {
        "relu": lambda: torch.relu(g),
        "add": lambda: torch.add(g, h),
        "threshold_backward (ReLU backward)": lambda: torch.ops.aten.threshold_backward(g, h, 0.0),
    }


def time_evicted(fn: Callable[[], torch.Tensor], evict_mib: int, calls: int = 300) -> float:
    """Mean µs per call, with ``evict_mib`` MiB written between calls (0: nothing)."""
    buf = torch.empty(evict_mib << 18) if evict_mib else None
    total = 0.0
    for i in range(calls + 20):
        if buf is not None:
            buf.add_(1.0)
        t = time.perf_counter()
        fn()
        if i >= 20:
            total += time.perf_counter() - t
    return total / calls * 1e6


def in_update_times(learner, sample: Callable) -> dict[str, float]:
    """Mean µs per call of the same element-wise ops on [2, 256, 256] inside updates (torch profiler)."""
    from torch.profiler import ProfilerActivity, profile

    names = {"aten::clamp_min": "relu", "aten::threshold_backward": "threshold_backward (ReLU backward)"}
    batches = [sample() for _ in range(UPDATES)]
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for batch in batches:
            learner.update(batch)
    out = {}
    for event in prof.key_averages(group_by_input_shape=True):
        if event.key in names and event.input_shapes and list(event.input_shapes[0]) == list(SHAPE):
            out[names[event.key]] = event.self_cpu_time_total / event.count
    return out


def measure(algo: str, rounds: int) -> dict:
    threads = torch.get_num_threads()
    learner, sample = build(algo, 256, 256)
    tiny, tiny_sample = build(algo, 8, 8)
    matmuls = matmul_segment(learner, sample, threads)
    segments = {"update": update_segment(learner, sample), "matmuls": matmuls,
                "fixed": update_segment(tiny, tiny_sample)}
    for fn in segments.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in segments}
    for r in range(rounds):
        for name, fn in segments.items():
            times[name].append(fn())
        print(f"{algo} round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.2f} ms" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"algo": algo, "threads": threads, "gflop_per_update": matmuls.gflop, "rounds": times, "median_ms": med,
            "rest_ms": med["update"] - med["matmuls"] - med["fixed"], "in_update_us": in_update_times(learner, sample)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=["sac", "td3"], choices=["sac", "td3"])
    parser.add_argument("--rounds", type=whole_number(), default=5)
    parser.add_argument("--name", default="update_anatomy", help="results file name under benchmarks/results/")
    args = parser.parse_args()
    tune_malloc()  # as the robo-rl command does
    results = [measure(algo, args.rounds) for algo in args.algos]

    rows = []
    for r in results:
        m, total = r["median_ms"], r["median_ms"]["update"]
        def share(x: float) -> str:
            return f"{x:.2f} ({100 * x / total:.0f}%)"
        rows.append([r["algo"].upper(), r["threads"], f"{r['gflop_per_update']:.3f}", f"{total:.2f}",
                     share(m["matmuls"]), share(m["fixed"]), share(r["rest_ms"])])
    table = markdown_table(["learner (Hopper-v5, batch 256, 256x256)", "torch threads", "matmul GFLOP / update",
                            "update ms", "matmuls alone ms", "fixed cost ms (8x8 nets, batch 8)",
                            "the rest ms (element-wise, memory)"], rows)

    threads = torch.get_num_threads()
    ops = elementwise_ops()
    cache = {name: {mib: time_evicted(fn, mib) for mib in EVICT_MIB} for name, fn in ops.items()}
    inside = results[0]["in_update_us"]
    header = ["op on one [2, 256, 256] tensor (µs)", "in cache"] + [f"after writing {mib} MiB" for mib in EVICT_MIB[1:]]
    header.append(f"inside {results[0]['algo'].upper()} updates (profiler)")
    op_rows = [[name] + [f"{cache[name][mib]:.0f}" for mib in EVICT_MIB]
               + [f"{inside[name]:.0f}" if name in inside else "-"] for name in ops]
    op_table = markdown_table(header, op_rows)

    save(args.name, {"results": results, "elementwise_us": cache, "elementwise_threads": threads},
         "One update, split (medians of interleaved rounds)\n\n" + table
         + f"\n\nElement-wise operations, {threads} torch threads\n\n" + op_table)


if __name__ == "__main__":
    main()
