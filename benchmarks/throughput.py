"""Training throughput (env steps/s, collection + updates) of robo-rl vs Stable-Baselines3 2.x.

Same process, same machine, identical settings:
  SAC / TD3: 1 env, update-to-data ratio 1, batch 256, 256x256 MLPs for actor and critics
  PPO:       2048 samples per update (64 envs x 32 steps by default), minibatch 64, 10 epochs, 64x64
             MLPs; SB3 gets the same envs (DummyVecEnv)

robo-rl runs at its defaults (torch threads: all cores for SAC/TD3, one for PPO). SB3 is measured with 1 and with 2
torch threads in every round and compared against whichever is faster. Segments of both
libraries alternate within each round; the reported ratio is the median of per-round ratios.

    python benchmarks/throughput.py                     # all algos, Hopper-v5 and HalfCheetah-v5
    python benchmarks/throughput.py --algos ppo --envs Hopper-v5 --rounds 3
    python benchmarks/throughput.py --compile           # robo-rl with compile=true as well
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import advancer, interleaved, markdown_table, median, rate_of, save  # noqa: E402
from robo_rl.perf import tune_malloc  # noqa: E402

LEARNING_STARTS = 1000
PPO_ENVS = 16  # set by --ppo-envs; SB3 gets the same number
OFF_POLICY_SEGMENT = 250  # env steps per timed segment
PPO_SEGMENT = 2 * 2048


def ours_runner(algo: str, env_id: str, backend: str, compile_: bool):
    from robo_rl.build import build_env, build_learner, build_policy, build_runner
    from robo_rl.train import compose_config, prepare

    overrides = [f"algo={algo}", f"env.id={env_id}", f"env.backend={backend}", "steps=100000000", "seed=0"]
    if algo in ("sac", "td3"):
        overrides += [f"algo.learning_starts={LEARNING_STARTS}", "algo.batch_size=256", "algo.utd=1",
                      "policy.hidden_sizes=[256,256]", "algo.critic_hidden=[256,256]"]
    else:
        overrides += [f"env.num_envs={PPO_ENVS}", f"algo.rollout_steps={2048 // PPO_ENVS}", "algo.minibatch_size=64",
                      "algo.epochs=10", "policy.hidden_sizes=[64,64]", "algo.value_hidden=[64,64]"]
    if compile_:
        overrides.append("compile=true")
    run_dir = Path(tempfile.mkdtemp()) / "run"
    cfg, _ = prepare(compose_config(overrides), run_dir)
    env = build_env(cfg)
    eval_env = build_env(cfg, num_envs=1)
    runner = build_runner(cfg, build_learner(cfg, build_policy(cfg, env)), env, eval_env, run_dir)
    runner.threads = cfg.threads or torch.get_num_threads()  # robo-rl's default for this learner
    runner.obs = env.reset(seed=0)
    warm = LEARNING_STARTS + 200 if algo != "ppo" else 2048 * 2
    while runner.step < warm:
        runner.iterate()
    return runner, advancer(runner)


def sb3_model(algo: str, env_id: str):
    import gymnasium as gym
    import numpy as np
    from stable_baselines3 import PPO, SAC, TD3
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.noise import NormalActionNoise

    if algo == "sac":
        model = SAC("MlpPolicy", gym.make(env_id), learning_starts=LEARNING_STARTS, batch_size=256, train_freq=1,
                    gradient_steps=1, policy_kwargs=dict(net_arch=[256, 256]), seed=0, device="cpu", verbose=0)
    elif algo == "td3":
        env = gym.make(env_id)
        noise = NormalActionNoise(np.zeros(env.action_space.shape), 0.1 * np.ones(env.action_space.shape))
        model = TD3("MlpPolicy", env, learning_starts=LEARNING_STARTS, batch_size=256, train_freq=1, gradient_steps=1,
                    action_noise=noise, policy_kwargs=dict(net_arch=[256, 256]), seed=0, device="cpu", verbose=0)
    else:
        model = PPO("MlpPolicy", make_vec_env(env_id, n_envs=PPO_ENVS, seed=0), n_steps=2048 // PPO_ENVS, batch_size=64,
                    n_epochs=10,
                    policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64])), seed=0, device="cpu", verbose=0)
    warm = LEARNING_STARTS + 200 if algo != "ppo" else 2048 * 2
    model.learn(warm)
    return model


def measure(algo: str, env_id: str, rounds: int, backend: str, compile_: bool) -> dict:
    default_threads = torch.get_num_threads()
    segment = OFF_POLICY_SEGMENT if algo != "ppo" else PPO_SEGMENT
    runner, ours = ours_runner(algo, env_id, backend, False)
    model = sb3_model(algo, env_id)

    def with_threads(n: int, fn):
        def run() -> float:
            torch.set_num_threads(n)
            try:
                return rate_of(fn, segment)
            finally:
                torch.set_num_threads(default_threads)
        return run

    segments = {
        "robo_rl": with_threads(runner.threads, lambda: ours(segment)),
        "sb3_1thread": with_threads(1, lambda: model.learn(segment, reset_num_timesteps=False)),
        "sb3_2threads": with_threads(2, lambda: model.learn(segment, reset_num_timesteps=False)),
    }
    if compile_:
        runner_c, ours_c = ours_runner(algo, env_id, backend, True)
        with_threads(runner_c.threads, lambda: ours_c(segment))()  # compile outside the timed rounds
        segments["robo_rl_compile"] = with_threads(runner_c.threads, lambda: ours_c(segment))
    rates = interleaved(segments, rounds)
    best_sb3 = [max(a, b) for a, b in zip(rates["sb3_1thread"], rates["sb3_2threads"])]
    result = {
        "algo": algo, "env": env_id, "backend": backend, "segment_steps": segment, "rounds": rounds,
        "rates": rates,
        "robo_rl_steps_per_s": median(rates["robo_rl"]),
        "sb3_best_steps_per_s": median(best_sb3),
        "sb3_best_threads": 1 if median(rates["sb3_1thread"]) >= median(rates["sb3_2threads"]) else 2,
        "ratio": median([o / s for o, s in zip(rates["robo_rl"], best_sb3)]),
    }
    if compile_:
        result["robo_rl_compile_steps_per_s"] = median(rates["robo_rl_compile"])
        result["ratio_compile"] = median([o / s for o, s in zip(rates["robo_rl_compile"], best_sb3)])
    print(f"{algo} {env_id}: robo-rl {result['robo_rl_steps_per_s']:.0f} steps/s, SB3 (best, "
          f"{result['sb3_best_threads']} thread(s)) {result['sb3_best_steps_per_s']:.0f} steps/s, ratio {result['ratio']:.2f}",
          flush=True)
    return result


TARGETS = {"sac": 1.6, "td3": 1.6, "ppo": 5.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=["sac", "td3", "ppo"])
    parser.add_argument("--envs", nargs="+", default=["Hopper-v5", "HalfCheetah-v5"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backend", default="gymnasium", help="robo-rl env backend for all algos")
    parser.add_argument("--ppo-backend", default=None, help="override the backend for PPO only")
    parser.add_argument("--compile", action="store_true", help="also measure robo-rl with compile=true")
    parser.add_argument("--ppo-envs", type=int, default=64, help="envs for PPO (2048 // envs steps each), both libraries")
    parser.add_argument("--name", default="throughput")
    args = parser.parse_args()
    tune_malloc()  # process-wide: SB3 gets the same allocator settings
    global PPO_ENVS
    PPO_ENVS = args.ppo_envs

    results = []
    for env_id in args.envs:
        for algo in args.algos:
            backend = args.ppo_backend if (algo == "ppo" and args.ppo_backend) else args.backend
            results.append(measure(algo, env_id, args.rounds, backend, args.compile))
    headers = ["algo", "env", "robo-rl backend", "robo-rl steps/s", "SB3 steps/s (best threads)", "ratio", "target"]
    if args.compile:
        headers.insert(4, "robo-rl compile=true")
    rows = []
    for r in results:
        row = [r["algo"].upper(), r["env"], r["backend"], f"{r['robo_rl_steps_per_s']:.0f}",
               f"{r['sb3_best_steps_per_s']:.0f} ({r['sb3_best_threads']})", f"**{r['ratio']:.2f}x**",
               f"{TARGETS[r['algo']]}x"]
        if args.compile:
            row.insert(4, f"{r['robo_rl_compile_steps_per_s']:.0f} ({r['ratio_compile']:.2f}x)")
        rows.append(row)
    save(args.name, {"results": results}, markdown_table(headers, rows))


if __name__ == "__main__":
    main()
