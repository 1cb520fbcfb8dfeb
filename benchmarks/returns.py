"""Returns at equal budgets, robo-rl vs Stable-Baselines3 with the same hyperparameters, 3 seeds.

  SAC on Hopper-v5 for 30k env steps: 1 env, batch 256, 256x256, lr 3e-4, tau 0.005, gamma 0.99,
      automatic entropy (target -|A|), 5000 uniform-random warm-up steps, 1 update per step.
  PPO on Hopper-v5 for 300k env steps: 16 envs x 128 steps, minibatch 64, 10 epochs, 64x64 tanh,
      lr 3e-4 annealed linearly to 0, clip 0.2, GAE 0.95, gamma 0.99, observation and reward
      normalization (SB3: VecNormalize), orthogonal init, max grad norm 0.5.

Both are scored by the same final evaluation: 10 deterministic episodes on a fresh env.
SB3's runs are slow and do not change between robo-rl commits, so they are cached in
results/returns_sb3.json together with the machine they ran on (--rerun-sb3 to redo them); a cached run
is used only if it was trained for today's budget and scored on as many episodes (each run records both).

    python benchmarks/returns.py                 # everything (about an hour on 2 cores)
    python benchmarks/returns.py --algos ppo --seeds 0
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import EVAL_SEEDING, RESULTS, machine, markdown_table, save, scratch_dir  # noqa: E402
from robo_rl.perf import tune_malloc  # noqa: E402

ENV = "Hopper-v5"
BUDGET = {"sac": 30_000, "ppo": 300_000}
EVAL_EPISODES = 10
# the budgets of cached SB3 runs recorded before each run recorded its own (2026-12-02; BUDGET since bb71bbe)
SB3_CACHE_UNRECORDED = {"budget": {"sac": 30_000, "ppo": 300_000}, "eval_episodes": 10}


def run_ours(algo: str, seed: int) -> dict:
    from robo_rl.train import compose_config, train

    overrides = [f"algo={algo}", f"env.id={ENV}", f"steps={BUDGET[algo]}", f"seed={seed}",
                 f"eval.episodes={EVAL_EPISODES}", f"eval.every={BUDGET[algo]}", "log.progress_seconds=60"]
    if algo == "sac":
        overrides += ["algo.learning_starts=5000"]
    else:  # SB3's layout: 16 envs x 128 steps (robo-rl's own default is 64 x 32, the same 2048 per update)
        overrides += ["env.num_envs=16", "algo.rollout_steps=128"]
    t = time.perf_counter()
    summary = train(compose_config(overrides), scratch_dir() / f"{algo}-{seed}")
    return {"seed": seed, "return": summary["final_eval_return_mean"], "wall_s": time.perf_counter() - t,
            "eval_seeding": EVAL_SEEDING}


def run_sb3(algo: str, seed: int) -> dict:
    import gymnasium as gym
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    t = time.perf_counter()
    if algo == "sac":
        model = SAC("MlpPolicy", gym.make(ENV), learning_rate=3e-4, buffer_size=1_000_000, learning_starts=5000,
                    batch_size=256, tau=0.005, gamma=0.99, train_freq=1, gradient_steps=1, ent_coef="auto",
                    policy_kwargs=dict(net_arch=[256, 256]), seed=seed, device="cpu", verbose=0)
        model.learn(BUDGET[algo])
        eval_env = make_vec_env(ENV, n_envs=1, seed=seed + 10_000)  # seeded, as PPO's (a bare env reset unseeded)
    else:
        venv = VecNormalize(make_vec_env(ENV, n_envs=16, seed=seed), gamma=0.99, clip_obs=10.0, clip_reward=10.0)
        model = PPO("MlpPolicy", venv, learning_rate=lambda progress: 3e-4 * progress, n_steps=128, batch_size=64,
                    n_epochs=10, gamma=0.99, gae_lambda=0.95, clip_range=0.2, ent_coef=0.0, vf_coef=0.5,
                    max_grad_norm=0.5, policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64])),
                    seed=seed, device="cpu", verbose=0)
        model.learn(BUDGET[algo])
        eval_env = VecNormalize(make_vec_env(ENV, n_envs=1, seed=seed + 10_000), training=False, norm_reward=False)
        eval_env.obs_rms = venv.obs_rms
    mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True)
    return {"seed": seed, "return": float(mean), "wall_s": time.perf_counter() - t, "budget": BUDGET[algo],
            "eval_episodes": EVAL_EPISODES, "eval_seed": seed + 10_000}


def cached_sb3(cache: dict, algo: str, seed: int) -> dict | None:
    """The cached SB3 run of ``algo`` and ``seed`` if it was trained for today's budget and scored on as many
    episodes, else None (trained again): a run of another budget would compare the libraries at unequal ones."""
    run = cache["runs"].get(f"{algo}/{seed}")
    if run is None:
        return None
    budget = run.get("budget", SB3_CACHE_UNRECORDED["budget"][algo])
    episodes = run.get("eval_episodes", SB3_CACHE_UNRECORDED["eval_episodes"])
    if (budget, episodes) != (BUDGET[algo], EVAL_EPISODES):
        print(f"SB3 {algo} seed {seed}: the cached run had {budget:,} steps and {episodes} evaluation episodes, not "
              f"{BUDGET[algo]:,} and {EVAL_EPISODES}: trained again", flush=True)
        return None
    if algo == "sac" and "eval_seed" not in run:  # scored on an unseeded env before 2026-12-06: not reproducible
        print(f"SB3 sac seed {seed}: the cached run was evaluated on an unseeded env: trained again", flush=True)
        return None
    return run


def stats(runs: list[dict]) -> tuple[float, float]:
    values = [r["return"] for r in runs]
    return statistics.mean(values), statistics.pstdev(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=["sac", "ppo"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rerun-sb3", action="store_true")
    parser.add_argument("--name", default="returns", help="results file name under benchmarks/results/")
    args = parser.parse_args()
    tune_malloc()
    import torch

    torch.set_num_threads(1)  # returns do not depend on it; one thread cannot stall on a shared 2-core machine
    logging.getLogger("robo_rl").setLevel(logging.WARNING)

    cache_path = RESULTS / "returns_sb3.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() and not args.rerun_sb3 else {"runs": {}}
    results: dict[str, dict] = {}
    for algo in args.algos:
        ours = []
        for seed in args.seeds:
            ours.append(run_ours(algo, seed))
            print(f"robo-rl {algo} seed {seed}: {ours[-1]['return']:.1f} ({ours[-1]['wall_s']:.0f} s)", flush=True)
        sb3 = []
        for seed in args.seeds:
            key = f"{algo}/{seed}"
            if cached_sb3(cache, algo, seed) is None:
                cache["runs"][key] = run_sb3(algo, seed)
                cache["machine"] = machine()
                RESULTS.mkdir(parents=True, exist_ok=True)
                cache_path.write_text(json.dumps(cache, indent=2))
            sb3.append(cache["runs"][key])
            print(f"SB3 {algo} seed {seed}: {sb3[-1]['return']:.1f} ({sb3[-1]['wall_s']:.0f} s)", flush=True)
        results[algo] = {"budget": BUDGET[algo], "robo_rl": ours, "sb3": sb3}

    rows = []
    for algo, r in results.items():
        om, osd = stats(r["robo_rl"])
        sm, ssd = stats(r["sb3"])
        rows.append([algo.upper(), ENV, f"{r['budget']:,}", len(r["robo_rl"]), f"{om:.0f} ± {osd:.0f}", f"{sm:.0f} ± {ssd:.0f}",
                     f"{statistics.mean(x['wall_s'] for x in r['robo_rl']):.0f} s",
                     f"{statistics.mean(x['wall_s'] for x in r['sb3']):.0f} s"])
    table = markdown_table(["algo", "env", "env steps", "seeds", "robo-rl return", "SB3 return",
                            "robo-rl wall time / run", "SB3 wall time / run"], rows)
    save(args.name, {"results": results, "sb3_cache_machine": cache.get("machine")}, table)


if __name__ == "__main__":
    main()
