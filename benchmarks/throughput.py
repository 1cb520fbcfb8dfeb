"""Training throughput (env steps/s, collection + updates) of robo-rl vs Stable-Baselines3 2.x.

Same process, same machine, the same settings in both libraries (float32 on the CPU; the task's env kwargs as
robo-rl resolves them):
  SAC / TD3: 1 env, update-to-data ratio 1, batch 256, 256x256 ReLU MLPs for actor and critics, 1,000 steps of
             uniform random actions before updates, 1M-row replay buffer
  PPO:       2048 samples per update (64 envs x 32 steps by default), minibatch 64, 10 epochs, 64x64
             tanh MLPs; SB3 gets the same envs (DummyVecEnv). Not alike: robo-rl's PPO normalizes observations
             and rewards (its defaults), SB3's runs without VecNormalize (its own default, and its faster setting)

robo-rl runs at its defaults (torch threads: all the CPUs it may use for SAC/TD3, one for PPO). SB3 is measured with 1
and with 2 torch threads (and robo-rl's count, if more) in every round and compared against whichever is faster. Both
libraries warm up before the timed rounds (SAC/TD3: 1,200 env steps, 200 updates; PPO: 2 updates). A timed segment
is env steps and updates: robo-rl's runner.iterate() (no evaluations, checkpoints or log rows: Runner.train schedules
those) against SB3's learn(). Segments of both libraries alternate within each round; the reported ratio is the
median of per-round ratios (the table also gives the middle half of them). Each result records both libraries'
settings as read back from robo-rl's config and SB3's model (``settings``), and the markdown lists them under the
table.

For SAC and TD3 a second table says how far the ratio could go: every matrix multiply of 50 env steps of
each library (torch mm/addmm/bmm/baddbmm, shapes and memory layouts as called) is recorded and replayed
alone, at the thread count that library ran with. A library whose step did nothing but its own matmuls
would run at that rate, so SB3's time per step over robo-rl's matmul time is the ceiling of the ratio
at these network sizes on this machine.

    python benchmarks/throughput.py                     # all algos, Hopper-v5 and HalfCheetah-v5
    python benchmarks/throughput.py --algos ppo --envs Hopper-v5 --rounds 3
    python benchmarks/throughput.py --compile           # robo-rl with compile=true as well
    python benchmarks/throughput.py --algos sac td3 --bf16   # robo-rl with precision=bf16 as well

With --bf16 (SAC/TD3) more segments join each round: robo-rl with precision=bf16, and SB3 with its train() run under
torch.autocast(bf16) (from its warm-up on, as robo-rl's) at each of the thread counts its float32 peer runs at, the
faster counting. SB3 has no such option; it is measured so that the bf16 ratio can also be read like for like (both
libraries' matmuls in bf16), not only against SB3 as its users run it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (advancer, interleaved, markdown_table, median, rate_of, save, scratch_dir,  # noqa: E402
                               spread, whole_number)
from envs.gymnasium_backend import check_task_id  # noqa: E402
from robo_rl.perf import tune_malloc  # noqa: E402

LEARNING_STARTS = 1000
FLOOR_STEPS = 50  # env steps whose matmuls are recorded and replayed (SAC/TD3)
PPO_SAMPLES = 2048  # samples per PPO update, both libraries (PPO_ENVS x PPO_SAMPLES // PPO_ENVS steps)
PPO_ENVS = 16  # set by --ppo-envs; SB3 gets the same number
OFF_POLICY_SEGMENT = 250  # env steps per timed segment
PPO_SEGMENT = 2 * PPO_SAMPLES


def ours_overrides(algo: str, env_id: str, backend: str, compile_: bool = False, hidden: int = 256, batch: int = 256,
                   precision: str = "fp32") -> list[str]:
    """robo-rl's config at this benchmark's settings (SAC/TD3, and EXPO for fused_offpolicy.py: ``hidden``-wide nets,
    ``batch``)."""
    overrides = [f"algo={algo}", f"env.id={env_id}", f"env.backend={backend}", "steps=100000000", "seed=0"]
    if algo in ("sac", "td3"):
        overrides += [f"algo.learning_starts={LEARNING_STARTS}", f"algo.batch_size={batch}", "algo.utd=1",
                      f"policy.hidden_sizes=[{hidden},{hidden}]", f"algo.critic_hidden=[{hidden},{hidden}]"]
    elif algo == "expo":  # (benchmarks/fused_offpolicy.py) its flow base, three layers wide as its default is
        overrides += [f"algo.learning_starts={LEARNING_STARTS}", f"algo.batch_size={batch}", "algo.utd=1",
                      f"policy.hidden_sizes=[{hidden},{hidden},{hidden}]", f"algo.critic_hidden=[{hidden},{hidden}]",
                      f"algo.edit_hidden=[{hidden},{hidden}]"]
    else:
        overrides += [f"env.num_envs={PPO_ENVS}", f"algo.rollout_steps={PPO_SAMPLES // PPO_ENVS}",
                      "algo.minibatch_size=64", "algo.epochs=10", "policy.hidden_sizes=[64,64]", "algo.value_hidden=[64,64]"]
    if compile_:
        overrides.append("compile=true")
    if precision != "fp32":
        overrides.append(f"precision={precision}")
    return overrides


def ours_config(*args: Any, **kwargs: Any):
    """The resolved robo-rl config (``ours_overrides``'s arguments) and its scratch run directory."""
    from robo_rl.train import compose_config, prepare

    run_dir = scratch_dir() / "run"
    cfg, _ = prepare(compose_config(ours_overrides(*args, **kwargs)), run_dir)
    return cfg, run_dir


def ours_threads(cfg) -> int:
    """The torch threads `robo-rl train` would run this config with (robo_rl/train.py): ``threads``, else torch's
    default capped at the CPUs this process may use."""
    from envs.resources import usable_cpus

    return int(cfg.threads) if cfg.threads else min(torch.get_num_threads(), usable_cpus())


def ours_runner(algo: str, env_id: str, backend: str, compile_: bool, hidden: int = 256, batch: int = 256,
                precision: str = "fp32"):
    """A warmed-up robo-rl runner at this benchmark's settings (SAC/TD3: ``hidden`` x ``hidden`` nets, ``batch``)."""
    from robo_rl.build import build_env, build_learner, build_policy, build_runner

    cfg, run_dir = ours_config(algo, env_id, backend, compile_, hidden, batch, precision)
    env = build_env(cfg)
    eval_env = build_env(cfg, num_envs=1)
    runner = build_runner(cfg, build_learner(cfg, build_policy(cfg, env)), env, eval_env, run_dir)
    runner.threads = ours_threads(cfg)  # robo-rl's default for this learner
    runner.obs = env.reset(seed=0)
    warm = LEARNING_STARTS + 200 if algo != "ppo" else 2 * PPO_SAMPLES
    while runner.step < warm:
        runner.iterate()
    return runner, advancer(runner)


def sb3_env_kwargs(cfg) -> dict[str, Any]:
    """gymnasium.make's keyword arguments for SB3's env: the task as robo-rl builds it (env.kwargs, with the task
    defaults robo-rl resolved, e.g. Ant-v5's observation without contact forces for PPO; env.max_episode_steps)."""
    from omegaconf import OmegaConf

    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.env.kwargs, resolve=True).items() if v is not None}
    if cfg.env.max_episode_steps is not None:
        kwargs["max_episode_steps"] = int(cfg.env.max_episode_steps)
    return kwargs


def sb3_model(algo: str, env_id: str, env_kwargs: dict[str, Any] | None = None, bf16: bool = False, warm: bool = True):
    """SB3's model at this benchmark's settings, warmed up as robo-rl's runner is (``bf16``: its gradient steps under
    torch.autocast from the start, so the warm-up also covers bf16's first calls, as robo-rl's precision=bf16 runner's
    does)."""
    import gymnasium as gym
    import numpy as np
    from stable_baselines3 import PPO, SAC, TD3
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.noise import NormalActionNoise

    env_kwargs = env_kwargs or {}
    if algo == "sac":
        model = SAC("MlpPolicy", gym.make(env_id, **env_kwargs), learning_starts=LEARNING_STARTS, batch_size=256,
                    train_freq=1, gradient_steps=1, policy_kwargs=dict(net_arch=[256, 256]), seed=0, device="cpu",
                    verbose=0)
    elif algo == "td3":
        env = gym.make(env_id, **env_kwargs)
        # SB3 adds action noise in its [-1, 1] scaled action space: the unit scale of robo-rl's algo.exploration_noise
        noise = NormalActionNoise(np.zeros(env.action_space.shape), 0.1 * np.ones(env.action_space.shape))
        model = TD3("MlpPolicy", env, learning_starts=LEARNING_STARTS, batch_size=256, train_freq=1, gradient_steps=1,
                    action_noise=noise, policy_kwargs=dict(net_arch=[256, 256]), seed=0, device="cpu", verbose=0)
    else:
        model = PPO("MlpPolicy", make_vec_env(env_id, n_envs=PPO_ENVS, seed=0, env_kwargs=env_kwargs),
                    n_steps=PPO_SAMPLES // PPO_ENVS, batch_size=64, n_epochs=10,
                    policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64])), seed=0, device="cpu", verbose=0)
    if bf16:
        autocast_train(model)
    if warm:
        model.learn(LEARNING_STARTS + 200 if algo != "ppo" else 2 * PPO_SAMPLES)
    return model


def _names(modules: Any) -> list[str]:
    return [m.__name__.lower() for m in modules]


def ours_settings(cfg, threads: int) -> dict[str, Any]:
    """What robo-rl ran with, in the keys ``sb3_settings`` uses (the record lets a reader check both sides)."""
    algo = cfg.algo.name
    out: dict[str, Any] = {
        "device": str(cfg.device),
        "dtype": "bfloat16 autocast" if cfg.get("precision", "fp32") == "bf16" else "float32",
        "torch_threads": threads, "num_envs": int(cfg.env.num_envs), "actor_hidden": list(cfg.policy.hidden_sizes),
        "actor_activation": str(cfg.policy.activation), "normalize_obs": bool(cfg.policy.normalize_obs),
        "normalize_reward": bool(cfg.env.normalize_reward),
    }
    if algo in ("sac", "td3"):
        out.update(critic_hidden=list(cfg.algo.critic_hidden), critic_activation=str(cfg.algo.critic_activation),
                   batch_size=int(cfg.algo.batch_size), updates_per_env_step=float(cfg.algo.utd),
                   learning_starts=int(cfg.algo.learning_starts), buffer_size=int(cfg.algo.buffer_size))
    else:
        out.update(critic_hidden=list(cfg.algo.value_hidden), critic_activation=str(cfg.algo.value_activation),
                   batch_size=int(cfg.algo.minibatch_size), rollout_steps=int(cfg.algo.rollout_steps),
                   samples_per_update=int(cfg.algo.rollout_steps) * int(cfg.env.num_envs), epochs=int(cfg.algo.epochs))
    return out


def sb3_settings(model, threads: list[int]) -> dict[str, Any]:
    """What SB3 ran with (read from the model), in ``ours_settings``'s keys; ``threads``: the counts it was timed at."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    policy = model.policy
    out: dict[str, Any] = {
        "device": str(model.device), "dtype": str(next(policy.parameters()).dtype).replace("torch.", ""),
        "torch_threads": threads, "num_envs": int(model.n_envs),
        "normalize_obs": isinstance(model.get_env(), VecNormalize) and bool(model.get_env().norm_obs),
        "normalize_reward": isinstance(model.get_env(), VecNormalize) and bool(model.get_env().norm_reward),
    }
    if isinstance(model, PPO):
        out.update(actor_hidden=list(policy.net_arch["pi"]), actor_activation=_names([policy.activation_fn])[0],
                   critic_hidden=list(policy.net_arch["vf"]), critic_activation=_names([policy.activation_fn])[0],
                   batch_size=int(model.batch_size), rollout_steps=int(model.n_steps),
                   samples_per_update=int(model.n_steps) * int(model.n_envs), epochs=int(model.n_epochs))
    else:
        out.update(actor_hidden=list(policy.net_arch), actor_activation=_names([policy.net_args["activation_fn"]])[0],
                   critic_hidden=list(policy.critic_kwargs["net_arch"]),
                   critic_activation=_names([policy.critic_kwargs["activation_fn"]])[0],
                   batch_size=int(model.batch_size),
                   updates_per_env_step=model.gradient_steps / (model.train_freq.frequency * model.n_envs),
                   learning_starts=int(model.learning_starts), buffer_size=int(model.buffer_size))
    return out


class MatmulRecorder(TorchDispatchMode):
    """Records every matrix multiply torch runs (op, argument shapes and strides, keyword arguments)."""

    OPS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
           torch.ops.aten.baddbmm.default)

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, list[tuple[tuple[int, ...], tuple[int, ...]]], dict]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func in self.OPS:
            layout = [(tuple(a.shape), tuple(a.stride())) for a in args if isinstance(a, torch.Tensor)]
            self.calls.append((func, layout, dict(kwargs)))
        return func(*args, **kwargs)


def matmul_flops(func: Any, layout: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> int:
    shapes = [shape for shape, _ in layout]
    a, b = shapes[-2:]  # the two factors (addmm / baddbmm take the added term first)
    batch = a[0] if len(a) == 3 else 1
    return 2 * batch * a[-2] * a[-1] * b[-1]


def replay_seconds(calls: list, threads: int, passes: int = 7) -> float:
    """Best time of one pass over ``calls`` with fresh tensors of the recorded shapes and strides."""
    def tensor(shape: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
        extent = 1 + sum((n - 1) * st for n, st in zip(shape, stride))
        return torch.randn(max(extent, 1)).as_strided(shape, stride)

    prepared = [(func, [tensor(*lay) for lay in layout], kwargs) for func, layout, kwargs in calls]
    default = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best = float("inf")
        for _ in range(passes + 1):  # the first pass warms up
            t = time.perf_counter()
            for func, args, kwargs in prepared:
                func(*args, **kwargs)
            best = min(best, time.perf_counter() - t)
        return best
    finally:
        torch.set_num_threads(default)


def matmul_floor(run_segment: Callable[[int], None], threads: tuple[int, ...]) -> dict:
    """Matmul work of FLOOR_STEPS env steps: GFLOP per step and the replayed time per step at each thread count."""
    with MatmulRecorder() as rec:
        run_segment(FLOOR_STEPS)
    flops = sum(matmul_flops(func, layout) for func, layout, _ in rec.calls)
    out = {"calls_per_step": len(rec.calls) / FLOOR_STEPS, "gflop_per_step": flops / FLOOR_STEPS / 1e9}
    for n in threads:
        seconds = replay_seconds(rec.calls, n)
        out[f"matmul_ms_per_step_{n}thread"] = 1e3 * seconds / FLOOR_STEPS
        out[f"matmul_gflops_{n}thread"] = flops / seconds / 1e9
    return out


def autocast_train(model, dtype=torch.bfloat16) -> None:
    """SB3's gradient steps (``model.train``) under torch.autocast from now on: not an SB3 option, the like-for-like
    peer of robo-rl's precision=bf16."""
    plain = model.train

    def train(*args, **kwargs):
        with torch.autocast("cpu", dtype=dtype):
            return plain(*args, **kwargs)

    model.train = train


def sb3_key(threads: int, bf16: bool = False) -> str:
    name = "sb3_bf16" if bf16 else "sb3"
    return f"{name}_1thread" if threads == 1 else f"{name}_{threads}threads"


def measure(algo: str, env_id: str, rounds: int, backend: str, compile_: bool, bf16: bool = False) -> dict:
    default_threads = torch.get_num_threads()
    segment = OFF_POLICY_SEGMENT if algo != "ppo" else PPO_SEGMENT
    runner, ours = ours_runner(algo, env_id, backend, False)
    env_kwargs = sb3_env_kwargs(runner.cfg)
    model = sb3_model(algo, env_id, env_kwargs)
    # SB3 gets robo-rl's thread count too (on a machine with more cores robo-rl's SAC/TD3 default takes them all)
    sb3_threads = sorted({1, 2, runner.threads})

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
        **{sb3_key(n): with_threads(n, lambda: model.learn(segment, reset_num_timesteps=False)) for n in sb3_threads},
    }
    if compile_:
        runner_c, ours_c = ours_runner(algo, env_id, backend, True)
        with_threads(runner_c.threads, lambda: ours_c(segment))()  # compile outside the timed rounds
        segments["robo_rl_compile"] = with_threads(runner_c.threads, lambda: ours_c(segment))
    bf16 = bf16 and algo in ("sac", "td3")
    if bf16:
        runner_b, ours_b = ours_runner(algo, env_id, backend, False, precision="bf16")
        model_b = sb3_model(algo, env_id, env_kwargs, bf16=True)
        segments["robo_rl_bf16"] = with_threads(runner_b.threads, lambda: ours_b(segment))
        segments.update({sb3_key(n, bf16=True): with_threads(n, lambda: model_b.learn(segment, reset_num_timesteps=False))
                         for n in sb3_threads})
    rates = interleaved(segments, rounds)

    def fastest_sb3(bf16: bool) -> tuple[list[float], int]:
        """Per round the faster of SB3's thread counts, and the count with the higher median rate (a tie: the fewer)."""
        keys = {n: sb3_key(n, bf16) for n in sb3_threads}
        per_round = [max(rates_of_round) for rates_of_round in zip(*(rates[k] for k in keys.values()))]
        return per_round, max(sb3_threads, key=lambda n: median(rates[keys[n]]))

    best_sb3, best_threads = fastest_sb3(bf16=False)
    result = {
        "algo": algo, "env": env_id, "backend": backend, "segment_steps": segment, "rounds": rounds,
        "settings": {"robo_rl": ours_settings(runner.cfg, runner.threads), "sb3": sb3_settings(model, sb3_threads),
                     "env_kwargs": env_kwargs},
        "rates": rates,
        "robo_rl_steps_per_s": median(rates["robo_rl"]),
        "sb3_best_steps_per_s": median(best_sb3),
        "sb3_best_threads": best_threads,
        "ratio_per_round": [o / s for o, s in zip(rates["robo_rl"], best_sb3)],
    }
    result["ratio"] = median(result["ratio_per_round"])
    if algo in ("sac", "td3"):  # after the timed rounds: recording slows these segments down
        ours_floor = matmul_floor(ours, (runner.threads,))
        sb3_floor = matmul_floor(lambda n: model.learn(n, reset_num_timesteps=False), (result["sb3_best_threads"],))
        ours_ms = ours_floor[f"matmul_ms_per_step_{runner.threads}thread"]
        sb3_ms = sb3_floor[f"matmul_ms_per_step_{result['sb3_best_threads']}thread"]
        result["floor"] = {
            "robo_rl": ours_floor, "sb3": sb3_floor, "robo_rl_threads": runner.threads,
            "robo_rl_ms_per_step": 1e3 / result["robo_rl_steps_per_s"],
            "sb3_ms_per_step": 1e3 / result["sb3_best_steps_per_s"],
            "robo_rl_matmul_share": ours_ms * result["robo_rl_steps_per_s"] / 1e3,
            "sb3_matmul_share": sb3_ms * result["sb3_best_steps_per_s"] / 1e3,
            "ceiling_ratio": (1e3 / result["sb3_best_steps_per_s"]) / ours_ms,
        }
        print(f"  matmuls per env step: robo-rl {ours_floor['gflop_per_step']:.3f} GFLOP in {ours_ms:.2f} ms alone, "
              f"SB3 {sb3_floor['gflop_per_step']:.3f} GFLOP in {sb3_ms:.2f} ms; ceiling of the ratio "
              f"{result['floor']['ceiling_ratio']:.2f}x", flush=True)
    if compile_:
        result["robo_rl_compile_steps_per_s"] = median(rates["robo_rl_compile"])
        result["ratio_compile"] = median([o / s for o, s in zip(rates["robo_rl_compile"], best_sb3)])
    if bf16:
        best_sb3_bf16, result["sb3_bf16_best_threads"] = fastest_sb3(bf16=True)
        result["robo_rl_bf16_steps_per_s"] = median(rates["robo_rl_bf16"])
        result["sb3_bf16_steps_per_s"] = median(best_sb3_bf16)
        result["ratio_bf16"] = median([o / s for o, s in zip(rates["robo_rl_bf16"], best_sb3)])
        result["ratio_bf16_vs_sb3_bf16"] = median([o / s for o, s in zip(rates["robo_rl_bf16"], best_sb3_bf16)])
        print(f"  precision=bf16: robo-rl {result['robo_rl_bf16_steps_per_s']:.0f} steps/s ({result['ratio_bf16']:.2f}x "
              f"SB3's best), SB3 under autocast (best, {result['sb3_bf16_best_threads']} thread(s)) "
              f"{result['sb3_bf16_steps_per_s']:.0f} steps/s ({result['ratio_bf16_vs_sb3_bf16']:.2f}x)", flush=True)
    print(f"{algo} {env_id}: robo-rl {result['robo_rl_steps_per_s']:.0f} steps/s, SB3 (best, "
          f"{result['sb3_best_threads']} thread(s)) {result['sb3_best_steps_per_s']:.0f} steps/s, ratio {result['ratio']:.2f}",
          flush=True)
    return result


TARGETS = {"sac": 1.6, "td3": 1.6, "ppo": 5.0}


def main() -> None:
    global PPO_ENVS, PPO_SEGMENT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=["sac", "td3", "ppo"], choices=["sac", "td3", "ppo"])
    parser.add_argument("--envs", nargs="+", default=["Hopper-v5", "HalfCheetah-v5"])
    parser.add_argument("--rounds", type=whole_number(), default=5)
    parser.add_argument("--backend", default="gymnasium", help="robo-rl env backend for all algos")
    parser.add_argument("--ppo-backend", default=None, help="override the backend for PPO only")
    parser.add_argument("--compile", action="store_true", help="also measure robo-rl with compile=true")
    parser.add_argument("--bf16", action="store_true",
                        help="SAC/TD3: also measure robo-rl with precision=bf16, and SB3 under torch.autocast(bf16)")
    parser.add_argument("--ppo-envs", type=whole_number(), default=64,
                        help="envs for PPO (2048 // envs steps each; a divisor of 2048), both libraries")
    parser.add_argument("--ppo-segment", type=whole_number(), default=PPO_SEGMENT,
                        help="PPO env steps per timed segment (whole 2,048-sample updates), both libraries")
    parser.add_argument("--name", default="throughput")
    args = parser.parse_args()
    # both libraries run whole updates, and a segment's rate counts --ppo-segment steps: anything else would time other
    # work than the label and the rate say (--ppo-envs 48: 42 x 48 = 2,016 samples per update)
    if PPO_SAMPLES % args.ppo_envs:
        parser.error(f"--ppo-envs {args.ppo_envs}: must divide {PPO_SAMPLES:,} (the samples per update), e.g. 16 or 64")
    if args.ppo_segment % PPO_SAMPLES:
        parser.error(f"--ppo-segment {args.ppo_segment}: must be a multiple of {PPO_SAMPLES:,} (whole updates), e.g. "
                     f"{2 * PPO_SAMPLES}")
    for env_id in args.envs:  # SB3 makes each with gymnasium: an unknown id fails here, not after a warm-up
        try:
            check_task_id(env_id)
        except ValueError as exc:
            parser.error(f"--envs: {exc}")
    tune_malloc()  # process-wide: SB3 gets the same allocator settings
    PPO_ENVS = args.ppo_envs
    PPO_SEGMENT = args.ppo_segment

    results = []
    for env_id in args.envs:
        for algo in args.algos:
            backend = args.ppo_backend if (algo == "ppo" and args.ppo_backend) else args.backend
            results.append(measure(algo, env_id, args.rounds, backend, args.compile, args.bf16))
    headers = ["algo", "env", "robo-rl backend", "robo-rl steps/s", "SB3 steps/s (best threads)", "ratio", "target"]
    if args.compile:
        headers.insert(4, "robo-rl compile=true")
    if args.bf16:
        headers[-1:-1] = ["robo-rl precision=bf16 (vs SB3's best)", "SB3 under autocast bf16 (best threads)",
                          "bf16 ratio, like for like"]
    rows = []
    for r in results:
        row = [r["algo"].upper(), r["env"], r["backend"], f"{r['robo_rl_steps_per_s']:.0f}",
               f"{r['sb3_best_steps_per_s']:.0f} ({r['sb3_best_threads']})", f"**{r['ratio']:.2f}x** ({spread(r['ratio_per_round'])})",
               f"{TARGETS[r['algo']]}x"]
        if args.compile:
            row.insert(4, f"{r['robo_rl_compile_steps_per_s']:.0f} ({r['ratio_compile']:.2f}x)")
        if args.bf16:
            row[-1:-1] = ([f"{r['robo_rl_bf16_steps_per_s']:.0f} (**{r['ratio_bf16']:.2f}x**)",
                           f"{r['sb3_bf16_steps_per_s']:.0f} ({r['sb3_bf16_best_threads']})", f"{r['ratio_bf16_vs_sb3_bf16']:.2f}x"]
                          if "ratio_bf16" in r else ["-", "-", "-"])
        rows.append(row)
    table = markdown_table(headers, rows)
    floors = [r for r in results if "floor" in r]
    if floors:
        table += "\n\n" + markdown_table(
            ["algo", "env", "matmul GFLOP / env step (robo-rl, SB3)", "matmuls alone, ms / env step (robo-rl, SB3)",
             "whole step, ms (robo-rl, SB3)", "matmul share of the step (robo-rl, SB3)", "ratio now", "ratio ceiling"],
            [[r["algo"].upper(), r["env"],
              f"{r['floor']['robo_rl']['gflop_per_step']:.3f}, {r['floor']['sb3']['gflop_per_step']:.3f}",
              f"{r['floor']['robo_rl_ms_per_step'] * r['floor']['robo_rl_matmul_share']:.2f}, "
              f"{r['floor']['sb3_ms_per_step'] * r['floor']['sb3_matmul_share']:.2f}",
              f"{r['floor']['robo_rl_ms_per_step']:.2f}, {r['floor']['sb3_ms_per_step']:.2f}",
              f"{100 * r['floor']['robo_rl_matmul_share']:.0f}%, {100 * r['floor']['sb3_matmul_share']:.0f}%",
              f"{r['ratio']:.2f}x", f"{r['floor']['ceiling_ratio']:.2f}x"] for r in floors])
    table += "\n\n" + settings_note(results)
    save(args.name, {"results": results}, table)


def settings_note(results: list[dict]) -> str:
    """The settings each row ran with (``result["settings"]``), in a line per row: those both libraries share, then
    those they do not."""
    lines = ["Settings:"]
    for r in results:
        ours, sb3 = r["settings"]["robo_rl"], r["settings"]["sb3"]
        keys = [k for k in ours if k != "torch_threads"]
        same = ", ".join(f"{k}={ours[k]}" for k in keys if ours[k] == sb3.get(k))
        differ = "; ".join(f"{k}: robo-rl {ours[k]}, SB3 {sb3.get(k)}" for k in keys if ours[k] != sb3.get(k))
        threads = f"torch threads: robo-rl {ours['torch_threads']}, SB3 {sb3['torch_threads']} (the faster counts)"
        lines.append(f"- {r['algo'].upper()} {r['env']}: both {same}" + (f"; not alike: {differ}" if differ else "")
                     + f"; {threads}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
