"""Multimodal task (robo_rl/TwoGoals-v0): success of unimodal vs generative policies, 3 seeds.

Each method trains on TwoGoals for the same number of env steps, then acts from the start state for
100 episodes (its own acting rule: the mean for Gaussian SAC/PPO, the latent mean then the decoder
for GoRL, the best candidate by Q for EXPO and PA-RL). Reported: success rate (both deterministic
and sampling evaluation), which goal was reached, and a scatter of 300 sampled first actions per
method at the decision state (results/multimodal_actions.png).

    python benchmarks/multimodal.py                         # all methods, 3 seeds
    python benchmarks/multimodal.py --methods sac parl-flow --seeds 0
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, markdown_table, save  # noqa: E402

OFF = ["algo.learning_starts=2000", "algo.critic_hidden=[128,128]"]
METHODS = {
    "sac": ["algo=sac", "policy.hidden_sizes=[128,128]", *OFF],
    "ppo": ["algo=ppo", "env.num_envs=16", "algo.rollout_steps=128"],
    "gorl-flow": ["algo=gorl", "env.num_envs=16", "algo.rollout_steps=128", "algo.refit_every=10",
                  "policy.decoder_hidden=[128,128]"],
    "expo-flow": ["algo=expo", "policy=flow", "policy.hidden_sizes=[128,128]", "policy.steps=4", *OFF],
    "expo-diffusion": ["algo=expo", "policy=diffusion", "policy.hidden_sizes=[128,128]", "policy.inference_steps=5",
                       "policy.train_steps=50", *OFF],
    "parl-flow": ["algo=parl", "policy=flow", "policy.hidden_sizes=[128,128]", "policy.steps=4", *OFF],
    "parl-diffusion": ["algo=parl", "policy=diffusion", "policy.hidden_sizes=[128,128]", "policy.inference_steps=5",
                       "policy.train_steps=50", *OFF],
    "parl-gaussian": ["algo=parl", "policy=gaussian", "policy.hidden_sizes=[128,128]", *OFF],
}
BUDGET = {"sac": 20_000, "expo": 20_000, "parl": 20_000, "ppo": 200_000, "gorl": 200_000}


def run(method: str, seed: int) -> dict:
    from envs import make_env
    from robo_rl.runs import load_learner, load_run_config, resolve_checkpoint
    from robo_rl.train import compose_config, train

    overrides = METHODS[method]
    algo = overrides[0].split("=")[1]
    run_dir = Path(tempfile.mkdtemp()) / f"{method}-{seed}"
    t = time.perf_counter()
    train(compose_config(["env=two_goals", f"steps={BUDGET[algo]}", f"seed={seed}", "eval.episodes=20",
                          "log.progress_seconds=120", *overrides]), run_dir)
    wall = time.perf_counter() - t
    cfg = load_run_config(run_dir)
    env = make_env("robo_rl/TwoGoals-v0", num_envs=20)
    policy = load_learner(cfg, env, resolve_checkpoint(run_dir)).policy
    out = {"method": method, "seed": seed, "wall_s": wall}
    for mode in ("deterministic", "sampled"):
        successes, sides = [], []
        obs = env.reset(seed=10_000 + seed)
        start = obs.clone()
        finished = 0
        first = None
        with torch.no_grad():
            while finished < 100:
                actions = policy.act(obs, deterministic=mode == "deterministic")
                if first is None:
                    first = actions
                obs, reward, term, trunc, info = env.step(actions)
                for i in (term | trunc).nonzero().flatten().tolist():
                    if finished < 100:
                        success = bool(info["episode"]["return"][i] > 0.5) and bool(term[i]) and float(reward[i]) == 1.0
                        successes.append(success)
                        if success:
                            sides.append(float(info["final_obs"][i, 1]) > 0)
                        finished += 1
        out[f"success_{mode}"] = float(np.mean(successes))
        out[f"upper_goal_share_{mode}"] = float(np.mean(sides)) if sides else None
    with torch.no_grad():
        out["decision_actions"] = policy.act(start[:1].expand(300, -1), deterministic=False).tolist()
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from envs.tasks.two_goals import GOALS, OBSTACLE, STEP

    methods = list(dict.fromkeys(r["method"] for r in results))
    fig, axes = plt.subplots(1, len(methods), figsize=(2.6 * len(methods), 2.8), squeeze=False)
    for ax, method in zip(axes[0], methods):
        pts = np.array([a for r in results if r["method"] == method and r["seed"] == 0 for a in r["decision_actions"]])
        center, radius = OBSTACLE
        ax.add_patch(plt.Circle(center / STEP / 10, radius / STEP / 10, color="tab:red", alpha=0.25))  # scaled to one step
        for g in GOALS:
            ax.plot(*(g / np.linalg.norm(g)), "*", color="tab:green", ms=10)
        if len(pts):
            ax.scatter(pts[:, 0], pts[:, 1], s=4, alpha=0.5)
        ax.set_xlim(-1.05, 1.05)
        ax.set_ylim(-1.05, 1.05)
        ax.set_aspect("equal")
        ax.set_title(method, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("first action at the decision state (seed 0, 300 samples); stars: goal directions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    from robo_rl.perf import tune_malloc

    tune_malloc()
    logging.getLogger("robo_rl").setLevel(logging.WARNING)
    results = []
    for method in args.methods:
        for seed in args.seeds:
            results.append(run(method, seed))
            r = results[-1]
            print(f"{method} seed {seed}: success {r['success_deterministic']:.2f} (deterministic) "
                  f"{r['success_sampled']:.2f} (sampled), upper-goal share {r['upper_goal_share_sampled']}, "
                  f"{r['wall_s']:.0f} s", flush=True)
    rows = []
    for method in args.methods:
        rs = [r for r in results if r["method"] == method]

        def fmt(key: str) -> str:
            vals = [r[key] for r in rs]
            return f"{statistics.mean(vals):.2f} ± {statistics.pstdev(vals):.2f}"

        shares = [r["upper_goal_share_sampled"] for r in rs if r["upper_goal_share_sampled"] is not None]
        rows.append([method, f"{BUDGET[METHODS[method][0].split('=')[1]]:,}", fmt("success_deterministic"),
                     fmt("success_sampled"), f"{statistics.mean(shares):.2f}" if shares else "-",
                     f"{statistics.mean(r['wall_s'] for r in rs):.0f} s"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(results, RESULTS / "multimodal_actions.png")
    table = markdown_table(["method", "env steps", "success (acting rule)", "success (sampling)",
                            "share of successes at the upper goal", "wall time / run"], rows)
    for r in results:
        r.pop("decision_actions", None) if r["seed"] != 0 else None
    save("multimodal", {"results": results}, table)


if __name__ == "__main__":
    main()
