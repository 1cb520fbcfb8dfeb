"""Does a warm start from demonstrations survive the first online updates? With and without demos.critic_steps.

    python benchmarks/demos_warm_start.py                              # TD3 and SAC on Pendulum-v1, seed 0
    python benchmarks/demos_warm_start.py --algos td3 expo --seeds 0 1

A scripted Pendulum-v1 controller (energy pumping, then a PD controller near the top) records 20 episodes
of demonstrations. Each learner then pretrains on them (demos.pretrain_steps, default 2000), preloads them
into replay, acts with the pretrained policy from the first step (algo.learning_starts=0) and trains for
--steps env steps, evaluated every 250 (10 deterministic episodes). The table gives the demonstrator's return and
each run's evaluations, with demos.critic_steps=0 (the actor's first updates follow untrained critics) and at its
default.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, save, scratch_dir, whole_number  # noqa: E402

EVAL_EVERY = 250


def controller(obs: torch.Tensor) -> torch.Tensor:
    """Pendulum-v1 swing-up: pump energy toward the upright level, then a saturated PD controller near the top."""
    cos, sin, speed = obs.unbind(-1)
    angle = torch.atan2(sin, cos)
    energy = 0.5 * speed**2 + 15.0 * cos  # (g / l = 10, scaled as the task's dynamics)
    pump = 2.0 * torch.sign(speed * (15.0 - energy) + 1e-6)
    hold = (-(10.0 * angle + 2.0 * speed)).clamp(-2.0, 2.0)
    return torch.where(cos > 0.85, hold, pump).unsqueeze(-1)


def record(path: Path, episodes: int, seed: int) -> float:
    """Record the controller's episodes as a demonstrations file; returns their mean return."""
    from envs import make_env
    from robo_rl.demos import save_demos

    env = make_env("Pendulum-v1", num_envs=episodes)
    obs = env.reset(seed=seed)
    done, total, rows = torch.zeros(episodes, dtype=torch.bool), torch.zeros(episodes), []
    while not bool(done.all()):
        actions = controller(obs)
        next_obs, reward, terminated, truncated, info = env.step(actions)
        live = ~done
        rows.append((obs[live], actions[live], reward[live], info["final_obs"][live], terminated[live]))
        total += reward * live
        done |= terminated | truncated
        obs = next_obs
    env.close()
    keys = ("obs", "actions", "rewards", "next_obs", "terminated")
    save_demos(path, **{k: torch.cat([r[j] for r in rows]).numpy() for j, k in enumerate(keys)})
    return float(total.mean())


def run(algo: str, critic_steps: int | None, seed: int, steps: int, demos: Path) -> dict:
    import csv

    from robo_rl.train import compose_config, train

    overrides = [f"algo={algo}", "env=pendulum", f"demos.path={demos}", "algo.learning_starts=0", f"steps={steps}",
                 f"eval.every={EVAL_EVERY}", f"seed={seed}", "threads=1", "log.progress_seconds=1000"]
    if critic_steps is not None:
        overrides.append(f"demos.critic_steps={critic_steps}")
    run_dir = scratch_dir() / f"{algo}-{critic_steps}-{seed}"
    t = time.perf_counter()
    train(compose_config(overrides), run_dir)
    with open(run_dir / "metrics.csv", newline="") as f:
        evals = [(int(float(r["step"])), float(r["eval/return_mean"])) for r in csv.DictReader(f) if r.get("eval/return_mean")]
    return {"algo": algo, "critic_steps": critic_steps, "seed": seed, "overrides": overrides,
            "wall_s": time.perf_counter() - t, "evals": evals}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=["td3", "sac"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=whole_number(), default=1500)
    parser.add_argument("--name", default="demos_warm_start", help="results file name under benchmarks/results/")
    args = parser.parse_args()
    torch.set_num_threads(1)
    demos = scratch_dir() / "pendulum_demos.npz"
    demonstrator = record(demos, episodes=20, seed=0)
    print(f"demonstrator: {demonstrator:.1f} mean return over 20 episodes", flush=True)
    runs = [run(algo, critic_steps, seed, args.steps, demos)
            for algo in args.algos for seed in args.seeds for critic_steps in (0, None)]
    steps = [s for s, _ in runs[0]["evals"]]
    headers = ["learner", "seed", "demos.critic_steps", *[f"eval at {s:,}" for s in steps]]
    rows = [[r["algo"], r["seed"], r["critic_steps"] if r["critic_steps"] is not None else "2000 (default)",
             *[f"{v:.0f}" for _, v in r["evals"]]] for r in runs]
    table = (f"Demonstrator (scripted): {demonstrator:.0f}. Pendulum-v1, 20 demonstration episodes, "
             f"algo.learning_starts=0, {args.steps:,} steps\n\n" + markdown_table(headers, rows))
    save(args.name, {"demonstrator_return": demonstrator, "runs": runs}, table)


if __name__ == "__main__":
    main()
