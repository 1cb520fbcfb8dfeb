"""Environment steps per second with random actions: gymnasium vs robo-rl's batched MuJoCo backend.

For each task and N envs, side by side in one process, alternating 1-second segments:
  gymnasium SyncVectorEnv (N envs, one process)
  gymnasium AsyncVectorEnv with 2 worker processes (each worker steps N/2 envs)
  robo-rl env.backend=mujoco (torch tensors out, task logic, autoreset)
  raw physics: the same number of mujoco.batch steps with no task logic (the ceiling)
and the resident memory per env of the batched backend.

    python benchmarks/env_speed.py
    python benchmarks/env_speed.py --tasks Hopper-v5 --sizes 64 --rounds 2
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, median, save, whole_number  # noqa: E402


class _Chunk(gym.Env):
    """One worker's share of the envs: k gymnasium envs stepped in turn, batched arrays out."""

    def __init__(self, task_id: str, k: int) -> None:
        from gymnasium.vector import AutoresetMode, SyncVectorEnv

        self.vec = SyncVectorEnv([lambda: gym.make(task_id)] * k, autoreset_mode=AutoresetMode.SAME_STEP)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (k, *self.vec.single_observation_space.shape))
        self.action_space = gym.spaces.Box(-1.0, 1.0, (k, *self.vec.single_action_space.shape), np.float32)

    def reset(self, *, seed=None, options=None):
        obs, _ = self.vec.reset(seed=seed)
        return obs, {}

    def step(self, action):
        obs, rew, term, trunc, _ = self.vec.step(action)
        return obs, float(rew.sum()), False, False, {}


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
    return 0


def segment(step, n: int, seconds: float) -> float:
    step()
    t = time.perf_counter()
    k = 0
    while time.perf_counter() - t < seconds:
        step()
        k += 1
    return k * n / (time.perf_counter() - t)


def measure(task_id: str, n: int, rounds: int, seconds: float) -> dict:
    import mujoco.batch
    import torch
    from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

    from envs.mujoco import MujocoBatchedEnv

    ours = MujocoBatchedEnv(task_id, n)
    ours.reset(seed=0)
    low, high = ours.action_space.low, ours.action_space.high
    rng = np.random.default_rng(0)
    actions = rng.uniform(low, high, size=(64, n, len(low))).astype(np.float32)
    torch_actions = torch.from_numpy(actions)
    counter = [0]

    def next_actions():
        counter[0] = (counter[0] + 1) % 64
        return actions[counter[0]]

    sync = SyncVectorEnv([lambda: gym.make(task_id)] * n, autoreset_mode=AutoresetMode.SAME_STEP)
    sync.reset(seed=0)
    workers = min(2, n)
    chunks = [n // workers + (1 if i < n % workers else 0) for i in range(workers)]
    async_env = AsyncVectorEnv([lambda k=k: _Chunk(task_id, k) for k in chunks])
    async_env.reset(seed=0)
    raw = mujoco.batch.Batch(ours.model, n, nthread=ours.batch.nthread)  # the threads ours steps on
    raw_ctrl = raw.bind("ctrl")
    raw.reset()

    def raw_step():
        raw_ctrl[:] = next_actions()
        raw.step(nstep=ours.task.frame_skip)

    def async_step():
        a = next_actions()
        split = np.split(a, np.cumsum(chunks)[:-1])
        async_env.step(np.stack(split) if len({len(s) for s in split}) == 1 else np.array(split, dtype=object))

    def ours_step():
        next_actions()
        ours.step(torch_actions[counter[0]])

    segments = {
        "sync": lambda: segment(lambda: sync.step(next_actions()), n, seconds),
        "async_2_workers": lambda: segment(async_step, n, seconds),
        "robo_rl": lambda: segment(ours_step, n, seconds),
        "raw_physics": lambda: segment(raw_step, n, seconds),
    }
    rates = {k: [] for k in segments}
    for _ in range(rounds):
        for k, fn in segments.items():
            rates[k].append(fn())
    sync.close()
    async_env.close()
    med = {k: median(v) for k, v in rates.items()}
    return {"task": task_id, "num_envs": n, "rates": rates, **{f"{k}_steps_per_s": v for k, v in med.items()},
            "vs_sync": med["robo_rl"] / med["sync"], "vs_async": med["robo_rl"] / med["async_2_workers"],
            "of_raw": med["robo_rl"] / med["raw_physics"]}


def memory_per_env(task_id: str) -> float:
    """Resident memory per env copy, measured in a fresh interpreter: in this process the allocator
    reuses pages freed by earlier measurements, so growth here reads as 0."""
    import json
    import subprocess

    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r}); "
            f"from benchmarks.env_speed import _memory_per_env; print(_memory_per_env({task_id!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(json.loads(out.strip().splitlines()[-1]))


def _memory_per_env(task_id: str) -> float:
    from envs.mujoco import MujocoBatchedEnv

    gc.collect()
    base = rss_bytes()
    small = MujocoBatchedEnv(task_id, 16)
    mid = rss_bytes()
    large = MujocoBatchedEnv(task_id, 272)
    large.reset(seed=0)
    after = rss_bytes()
    del small, large
    return (after - mid) / 256 if after > mid else float(mid - base) / 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["Hopper-v5", "HalfCheetah-v5", "Ant-v5"])
    parser.add_argument("--sizes", nargs="+", type=whole_number(), default=[1, 16, 64, 256])
    parser.add_argument("--rounds", type=whole_number(), default=3)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--name", default="env_speed", help="results file name under benchmarks/results/")
    args = parser.parse_args()
    from robo_rl.perf import tune_malloc

    tune_malloc()
    results, memory = [], {}
    for task_id in args.tasks:
        memory[task_id] = memory_per_env(task_id)
        for n in args.sizes:
            r = measure(task_id, n, args.rounds, args.seconds)
            results.append(r)
            print(f"{task_id} N={n}: sync {r['sync_steps_per_s']:.0f}, async(2) {r['async_2_workers_steps_per_s']:.0f}, "
                  f"robo-rl {r['robo_rl_steps_per_s']:.0f} ({r['vs_sync']:.1f}x sync, {r['of_raw']:.0%} of raw), "
                  f"raw {r['raw_physics_steps_per_s']:.0f}", flush=True)
    rows = [[r["task"], r["num_envs"], f"{r['sync_steps_per_s']:,.0f}", f"{r['async_2_workers_steps_per_s']:,.0f}",
             f"{r['robo_rl_steps_per_s']:,.0f}", f"{r['raw_physics_steps_per_s']:,.0f}",
             f"**{r['vs_sync']:.1f}x**", f"{r['vs_async']:.1f}x", f"**{r['of_raw']:.0%}**"] for r in results]
    table = markdown_table(["task", "N", "gymnasium sync", "gymnasium async (2 workers)", "robo-rl mujoco",
                            "raw mujoco.batch", "robo-rl / sync", "robo-rl / async", "robo-rl / raw"], rows)
    mem = markdown_table(["task", "memory per env (batched backend)"],
                         [[t, f"{m / 1024:.0f} KiB"] for t, m in memory.items()])
    save(args.name, {"results": results, "memory_per_env_bytes": memory},
         "Env steps/s, random actions\n\n" + table + "\n\n" + mem)


if __name__ == "__main__":
    main()
