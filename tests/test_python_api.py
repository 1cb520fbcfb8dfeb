"""robo-rl used as a Python library, the way README's "Python API" and "Design" describe it:
the documented calls, a user-written policy head (contract 2) in SAC and PPO without touching the learners, a
user-written torch batched env (contract 1) trained through the runners, loading a run back, and import hygiene
(no global state changed at import, diffusers lazy, ``policies``/``envs`` never import ``robo_rl``)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from envs import BatchedEnv, StepResult, make_env
from policies import HEADS, ObsNormalizer, PolicyHead, build_head

ROOT = Path(__file__).resolve().parents[1]


class BetaHead(PolicyHead):
    """A head written from the contract alone: independent Beta(alpha, beta) per action dimension on the box."""

    name = "beta"
    reparameterized = True  # torch's Beta has rsample
    tractable_log_prob = True

    def __init__(self, obs_dim, action_low, action_high, obs_norm=None, hidden=(32, 32)):
        super().__init__(obs_dim, action_low, action_high, obs_norm or ObsNormalizer(obs_dim))
        layers, width = [], obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        self.net = nn.Sequential(*layers, nn.Linear(width, 2 * self.act_dim))

    def dist(self, obs):
        concentration = nn.functional.softplus(self.net(self.obs_norm(obs))) + 1.0
        return torch.distributions.Beta(*concentration.chunk(2, -1))

    def _logp(self, dist, x):  # density of the unit action u = 2x - 1, as the built-in heads report it
        return dist.log_prob(x.clamp(1e-6, 1 - 1e-6)).sum(-1) - self.act_dim * math.log(2.0)

    @torch.no_grad()
    def act(self, obs, deterministic=False):
        dist = self.dist(self.observations(obs))
        return self.checked(self.from_unit(2.0 * (dist.mean if deterministic else dist.sample()) - 1.0))

    def sample(self, obs):
        dist = self.dist(obs)
        x = dist.rsample()
        return self.from_unit(2.0 * x - 1.0), self._logp(dist, x)

    def log_prob(self, obs, actions):
        self.paired(obs, actions)
        return self._logp(self.dist(obs), (self.to_unit(actions) + 1.0) / 2.0)

    def entropy(self, obs):
        return self.dist(obs).entropy().sum(-1) + self.act_dim * math.log(2.0)

    def imitation_loss(self, obs, actions, weights=None):
        nll = -self.log_prob(obs, actions)
        return nll.mean() if weights is None else (nll * weights).sum() / weights.sum().clamp_min(1e-8)


class PointMass(BatchedEnv):
    """N 2-D point masses pushed toward the origin, in torch: obs [N, 4] (position m, velocity m/s), actions
    [N, 2] in [-2, 2], reward -|p|; terminated within 5 cm of the origin, truncated after ``horizon`` steps."""

    task_id = "test/PointMass-v0"
    backend = "torch"
    dt = 0.1

    def __init__(self, num_envs=4, horizon=20, box=2.0, dtype=np.float32):
        self.num_envs, self.horizon, self.device = num_envs, horizon, torch.device("cpu")
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
        self.action_space = gym.spaces.Box(-box, box, (2,), dtype)
        self.gen = torch.Generator()
        self.t = torch.zeros(num_envs, dtype=torch.int64)
        self.ret = torch.zeros(num_envs)
        self.state = torch.zeros(num_envs, 4)

    def _new(self, n):
        return torch.cat([torch.rand(n, 2, generator=self.gen) * 2 - 1, torch.zeros(n, 2)], 1)

    def reset(self, seed=None):
        seed = self.check_seed(seed)
        if seed is not None:
            self.gen.manual_seed(seed)
        self.state, self.t[:], self.ret[:] = self._new(self.num_envs), 0, 0.0
        return self.state.clone()

    def step(self, actions):
        a = self.check_actions(actions)
        vel = 0.9 * self.state[:, 2:] + self.dt * a
        pos = self.state[:, :2] + self.dt * vel
        self.state = torch.cat([pos, vel], 1)
        reward = -pos.norm(dim=1)
        self.t += 1
        self.ret += reward
        terminated = pos.norm(dim=1) < 0.05
        truncated = (self.t >= self.horizon) & ~terminated
        done = terminated | truncated
        final_obs = self.state.clone()
        episode = {"return": torch.where(done, self.ret, 0.0), "length": torch.where(done, self.t, 0), "mask": done}
        self.state[done], self.t[done], self.ret[done] = self._new(int(done.sum())), 0, 0.0
        return StepResult(self.state.clone(), reward, terminated, truncated, {"final_obs": final_obs, "episode": episode})


def _run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_readme_env_and_head_block_gives_the_documented_shapes():
    # README, Python API: make_env + build_head + sample + step (fewer envs than the README's 64)
    env = make_env("Ant-v5", num_envs=4, backend="mujoco")
    head = build_head("gaussian", obs_dim=env.obs_dim, action_low=env.action_space.low,
                      action_high=env.action_space.high, hidden_sizes=(256, 256))
    obs = env.reset(seed=0)
    assert obs.shape == (4, 105) and obs.dtype == torch.float32
    actions, log_prob = head.sample(obs)
    assert actions.shape == (4, 8) and log_prob.shape == (4,)
    obs, reward, terminated, truncated, info = env.step(actions)
    assert reward.shape == terminated.shape == truncated.shape == (4,)
    assert terminated.dtype == truncated.dtype == torch.bool
    assert info["final_obs"].shape == (4, 105) and set(info["episode"]) >= {"return", "length", "mask"}
    env.close()


@pytest.mark.parametrize("name", list(HEADS))
def test_deterministic_act_ignores_the_random_state(name):
    head = build_head(name, 3, -np.ones(2), np.ones(2)).eval()
    obs = torch.randn(5, 3)
    torch.manual_seed(1)
    first = head.act(obs, deterministic=True)
    torch.manual_seed(2)
    assert torch.equal(first, head.act(obs, deterministic=True))
    assert torch.allclose(head(obs), first)  # forward, what an export computes, is the deterministic action


def test_a_user_head_trains_with_sac_and_ppo_unchanged():
    from robo_rl.learners.base import Batch
    from robo_rl.learners.ppo import PPO
    from robo_rl.learners.sac import SAC
    from robo_rl.storage.rollout import RolloutStorage

    low, high = -2 * np.ones(2), 2 * np.ones(2)
    obs = torch.randn(16, 4)
    sac = SAC(BetaHead(4, low, high), critic_hidden=(32, 32))
    before = [p.detach().clone() for p in sac.policy.parameters()]
    actions = sac.explore(obs)
    assert actions.shape == (16, 2) and bool((actions.abs() <= 2).all())
    metrics = sac.update(Batch(obs, actions, torch.randn(16), torch.randn(16, 4), torch.zeros(16)))
    assert all(bool(torch.isfinite(v)) for v in metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, sac.policy.parameters()))

    ppo = PPO(BetaHead(4, low, high), minibatch_size=8, epochs=2)
    storage = RolloutStorage(4, 4, 4, 2, torch.device("cpu"))
    for _ in range(4):
        o = torch.randn(4, 4)
        a, logp, values = ppo.act(o)
        storage.add(o, a, logp, values, torch.randn(4), torch.zeros(4, dtype=torch.bool))
    metrics = ppo.update(storage.finish(torch.zeros(4), ppo.gamma, ppo.gae_lambda))
    assert all(bool(torch.isfinite(v)) for v in metrics.values())


@pytest.mark.parametrize("algo", ["sac", "ppo"])
def test_a_user_torch_env_and_head_train_through_the_runner(tmp_path, algo):
    from robo_rl.build import build_runner
    from robo_rl.defaults import resolve_defaults
    from robo_rl.evaluation import evaluate
    from robo_rl.learners.ppo import PPO
    from robo_rl.learners.sac import SAC
    from robo_rl.train import compose_config

    env, eval_env = PointMass(4), PointMass(2)
    head = BetaHead(env.obs_dim, env.action_space.low, env.action_space.high)
    options = (["algo.learning_starts=100", "algo.batch_size=32"] if algo == "sac" else ["algo.rollout_steps=16"])
    cfg = resolve_defaults(compose_config([f"algo={algo}", "steps=320", "eval.episodes=2", "log.plot=false",
                                           "log.tensorboard=false", *options]))
    learner = SAC(head, critic_hidden=(32, 32)) if algo == "sac" else PPO(head, minibatch_size=32, epochs=1)
    (tmp_path / "run").mkdir()  # the runner writes into an existing directory (train() makes it)
    summary = build_runner(cfg, learner, env, eval_env, tmp_path / "run").train()
    assert summary["status"] == "completed" and summary["env"] == "test/PointMass-v0" and summary["updates"] > 0
    assert math.isfinite(summary["final_eval_return_mean"])
    assert (tmp_path / "run" / "checkpoints").is_dir()
    result = evaluate(head, PointMass(2), 4, seed=3)
    assert result["episodes"] == 4 and all(length <= 20 for length in result["lengths"])


def test_a_python_run_loads_back_as_an_eval_mode_policy(tmp_path):
    from robo_rl.build import build_env
    from robo_rl.evaluation import evaluate
    from robo_rl.runs import load_policy, load_run_config, resolve_checkpoint
    from robo_rl.train import compose_config, train

    cfg = compose_config(["algo=sac", "env.id=Pendulum-v1", "steps=300", "algo.learning_starts=100",
                          "algo.batch_size=32", "eval.episodes=1", "log.plot=false", "log.tensorboard=false",
                          "policy.hidden_sizes=[32,32]", "algo.critic_hidden=[32,32]"])
    summary = train(cfg, tmp_path / "run")
    assert summary["status"] == "completed"
    saved = load_run_config(tmp_path / "run")
    env = build_env(saved, num_envs=1, randomize=False)
    policy = load_policy(saved, env, resolve_checkpoint(tmp_path / "run"))
    assert not policy.training and not any(p.requires_grad for p in policy.parameters())
    obs = env.reset(seed=0)
    assert torch.equal(policy.act(obs, deterministic=True), policy.act(obs, deterministic=True))
    # the run's final evaluation (seed + EVAL_SEED_OFFSET + its step, one copy as eval.episodes=1) reproduces
    again = evaluate(policy, env, 1, seed=int(saved.seed) + 1_000_003 + summary["final_eval_step"])
    assert math.isfinite(again["return_mean"])
    assert again["return_mean"] == pytest.approx(summary["final_eval_return_mean"], rel=1e-5)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
    env.close()


def test_importing_the_packages_changes_no_global_state():
    out = _run_python("""
        import logging, random, sys, warnings
        import numpy as np, torch
        torch.set_num_threads(1)
        state = (torch.get_num_threads(), torch.get_rng_state().clone(), np.random.get_state()[1].copy(),
                 random.getstate(), len(logging.getLogger().handlers), torch.get_default_dtype())
        import robo_rl, robo_rl.train, robo_rl.build, robo_rl.runs, robo_rl.evaluation, policies, envs, sim2real.export
        import policies.heads.diffusion
        after = (torch.get_num_threads(), torch.get_rng_state(), np.random.get_state()[1], random.getstate(),
                 len(logging.getLogger().handlers), torch.get_default_dtype())
        assert state[0] == after[0] and torch.equal(state[1], after[1]) and np.array_equal(state[2], after[2])
        assert state[3] == after[3] and state[4:] == after[4:], (state[4:], after[4:])
        assert not logging.getLogger("robo_rl").handlers
        print("diffusers" in sys.modules)
    """)
    assert out.strip() == "False"  # diffusers is imported when a diffusion head is built, not before


def test_policies_and_envs_import_without_robo_rl():
    # the layers change independently (README "Design"): policies/ and envs/ never import robo_rl (nor does sim2real)
    out = _run_python("""
        import importlib, pkgutil, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "robo_rl":
                    raise ImportError("robo_rl is blocked")
        sys.meta_path.insert(0, Block())
        bad = []
        for package in ("policies", "envs", "sim2real"):
            for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
                try:
                    importlib.import_module(info.name)
                except ImportError as exc:
                    if "blocked" in str(exc):
                        bad.append(info.name)
        print(sorted(bad))
    """)
    assert out.strip() == "[]"


# -- the public API keeps its contract with user code


def test_build_learner_names_the_keys_of_another_algo_when_algo_name_was_edited():
    # cfg.algo.name = "td3" on a config composed with algo=sac passed SAC's keys to TD3: "TD3.__init__() got an
    # unexpected keyword argument 'alpha_lr'"
    from robo_rl.build import build_learner
    from robo_rl.train import compose_config
    from robo_rl.validation import ConfigError

    cfg = compose_config(["algo=sac", "env=pendulum"])
    cfg.algo.name = "td3"
    with pytest.raises(ConfigError, match=r"algo.name=td3, but algo.alpha_lr, algo.init_alpha, .* are not td3's .*"
                                          r"compose it with algo=td3: compose_config\(\["):
        build_learner(cfg, build_head("deterministic", 3, -2 * np.ones(1), 2 * np.ones(1)))


def test_expo_refuses_an_option_it_does_not_take():
    from robo_rl.learners.expo import EXPO

    with pytest.raises(TypeError, match="gama"):
        EXPO(build_head("flow", 3, -np.ones(2), np.ones(2)), gama=0.5)


class IntFlags(PointMass):  # 0/1 int64 flags index rows instead of masking them (PPO's time-out bootstrap)
    def step(self, actions):
        r = super().step(actions)
        return StepResult(r.obs, r.reward, r.terminated.long(), r.truncated.long(), r.info)


class NoEpisode(PointMass):  # contract 1 at its minimum: final_obs, no info["episode"]
    def step(self, actions):
        r = super().step(actions)
        return StepResult(r.obs, r.reward, r.terminated, r.truncated, {"final_obs": r.info["final_obs"]})


class Float64Obs(PointMass):  # float64 observations failed in the replay buffer's copy, far from the env
    def reset(self, seed=None):
        return super().reset(seed).double()

    def step(self, actions):
        r = super().step(actions)
        return StepResult(r.obs.double(), r.reward, r.terminated, r.truncated, r.info)


class Float64StepObs(PointMass):  # float32 at reset, float64 from step
    def step(self, actions):
        r = super().step(actions)
        return StepResult(r.obs.double(), r.reward, r.terminated, r.truncated, r.info)


@pytest.mark.parametrize("env_cls, message", [(IntFlags, r"terminated as a tensor of torch.int64.*\.bool\(\)"),
                                              (NoEpisode, r'no "episode" entry'),
                                              (Float64Obs, r"reset\(\) returned a tensor of torch.float64 \[\d, 4\].*float32"),
                                              (Float64StepObs, r"returned obs as a tensor of torch.float64.*float32")])
def test_a_user_env_that_breaks_the_step_contract_is_named(tmp_path, env_cls, message):
    from robo_rl.build import build_runner
    from robo_rl.evaluation import evaluate
    from robo_rl.learners.ppo import PPO
    from robo_rl.train import compose_config

    head = BetaHead(4, -2 * np.ones(2), 2 * np.ones(2))
    with pytest.raises(ValueError, match=message):
        evaluate(head, env_cls(2), 2)
    cfg = compose_config(["algo=ppo", "steps=64", "eval.episodes=2", "log.tensorboard=false", "algo.rollout_steps=16"])
    runner = build_runner(cfg, PPO(head, minibatch_size=32), env_cls(4), PointMass(2), tmp_path / "run")
    with pytest.raises(ValueError, match=message):
        runner.train()


def test_build_runner_takes_a_composed_config_and_a_new_run_dir(tmp_path):
    from robo_rl.build import build_runner
    from robo_rl.learners.sac import SAC
    from robo_rl.train import compose_config

    cfg = compose_config(["algo=sac", "steps=200", "algo.learning_starts=100", "algo.batch_size=32",
                          "eval.episodes=2", "log.tensorboard=false", "log.plot=false"])
    head = BetaHead(4, -2 * np.ones(2), 2 * np.ones(2))
    summary = build_runner(cfg, SAC(head, critic_hidden=(32, 32)), PointMass(4), PointMass(2), tmp_path / "new").train()
    assert summary["status"] == "completed" and (tmp_path / "new" / "metrics.csv").is_file()


def test_a_build_runner_run_logs_its_progress_and_writes_train_log_as_train_does(tmp_path):
    # runner.train() called by itself printed nothing (the robo_rl logger had no handler: its warnings came out bare,
    # through Python's last resort) and wrote no train.log
    import logging

    from robo_rl.build import build_runner
    from robo_rl.learners.sac import SAC
    from robo_rl.train import compose_config

    cfg = compose_config(["algo=sac", "steps=200", "algo.learning_starts=100", "algo.batch_size=32", "eval.episodes=2",
                          "eval.every=100", "log.tensorboard=false", "log.plot=false"])
    head = BetaHead(4, -2 * np.ones(2), 2 * np.ones(2))
    robo_rl_log = logging.getLogger("robo_rl")
    level = robo_rl_log.level
    lines: list[str] = []
    mine = logging.Handler()
    mine.emit = lambda record: lines.append(record.getMessage())
    robo_rl_log.addHandler(mine)
    try:
        build_runner(cfg, SAC(head, critic_hidden=(8,)), PointMass(4), PointMass(2), tmp_path / "run").train()
    finally:
        robo_rl_log.removeHandler(mine)
    assert robo_rl_log.level == level  # as it was
    log_lines = (tmp_path / "run" / "train.log").read_text().splitlines()
    assert any("eval at step 100: return" in line for line in log_lines)
    assert log_lines[-1].split(" ", 2)[2].startswith("done: 200 steps in")  # after the time stamp
    assert any(line.startswith("done: 200 steps in") for line in lines)  # the progress reached the caller's handler
    # a directory holding a run is refused before anything is written into it (train.log included)
    before = (tmp_path / "run" / "train.log").read_text()
    with pytest.raises(ValueError, match="already holds a run"):
        build_runner(cfg, SAC(head, critic_hidden=(8,)), PointMass(4), PointMass(2), tmp_path / "run").train()
    assert (tmp_path / "run" / "train.log").read_text() == before


def test_build_runner_warns_of_a_plan_that_never_updates_the_policy(tmp_path, caplog, robo_rl_to_caplog):
    # steps before algo.learning_starts: train() said so after its opening line, a runner built from Python ran the
    # whole plan without a word; build_runner now logs the same warnings (warn=False: train(), which logs them itself)
    import logging

    from robo_rl.build import build_runner
    from robo_rl.learners.sac import SAC
    from robo_rl.train import compose_config, train

    overrides = ["algo=sac", "steps=60", "algo.learning_starts=100", "algo.batch_size=32", "eval.episodes=2",
                 "log.tensorboard=false", "log.plot=false"]
    warning = "steps=60 ends before algo.learning_starts=100, so the policy is never updated"
    head = BetaHead(4, -2 * np.ones(2), 2 * np.ones(2))
    with caplog.at_level(logging.WARNING, logger="robo_rl"):
        build_runner(compose_config(overrides), SAC(head, critic_hidden=(8,)), PointMass(4), PointMass(2), tmp_path / "a")
    assert caplog.text.count(warning) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robo_rl"):
        build_runner(compose_config(overrides), SAC(head, critic_hidden=(8,)), PointMass(4), PointMass(2), tmp_path / "b",
                     warn=False)
    assert warning not in caplog.text
    lines: list[str] = []  # train() keeps the robo_rl logger to itself (no propagation): a handler of the caller's
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("robo_rl").addHandler(handler)
    try:
        train(compose_config(["env.id=Pendulum-v1", *overrides, f"run_dir={tmp_path / 'c'}"]))
    finally:
        logging.getLogger("robo_rl").removeHandler(handler)
    assert sum(warning in line for line in lines) == 1  # once, not again from train()'s own build_runner


@pytest.mark.parametrize("algo", ["sac", "ppo", "gorl"])
def test_build_env_policy_and_learner_take_a_config_straight_from_compose_config(tmp_path, algo):
    # compose_config leaves the task's and learner's defaults null (env.num_envs, policy.hidden_sizes, ...): build_env
    # was "int() argument must be ... not 'NoneType'", build_policy "'NoneType' object is not iterable"
    from robo_rl.build import build_env, build_learner, build_policy, build_runner
    from robo_rl.train import compose_config

    from robo_rl.defaults import resolve_defaults

    cadence = "algo.learning_starts=32" if algo == "sac" else "algo.rollout_steps=16"
    cfg = compose_config([f"algo={algo}", "env=pendulum", "steps=64", cadence, "eval.episodes=1",
                          "log.tensorboard=false", "log.plot=false"])
    assert cfg.env.num_envs is None
    env, eval_env = build_env(cfg), build_env(cfg, num_envs=1)
    assert env.num_envs == resolve_defaults(cfg).env.num_envs  # the learner's default for the task, as `robo-rl train`
    learner = build_learner(cfg, build_policy(cfg, env))
    assert learner.name == algo
    if algo != "gorl":
        assert build_runner(cfg, learner, env, eval_env, tmp_path / "run").train()["status"] == "completed"


def test_evaluate_acts_in_eval_mode_and_leaves_the_callers_modes():
    # a learner's head is in train mode: a user head with dropout was evaluated with it on, unlike its export
    from robo_rl.evaluation import evaluate

    class DropoutHead(BetaHead):
        def __init__(self, *args):
            super().__init__(*args)
            self.drop, self.seen = nn.Dropout(0.5), []

        def act(self, obs, deterministic=False):
            self.seen.append((self.training, self.drop.training))
            return super().act(self.drop(obs), deterministic)

    head = DropoutHead(4, -2 * np.ones(2), 2 * np.ones(2))
    head.net.eval()  # a caller's own mix of modes comes back as it was
    evaluate(head, PointMass(2), episodes=2)
    assert set(head.seen) == {(False, False)}
    assert head.training and head.drop.training and not head.net.training


def test_load_learner_takes_the_composed_config_a_build_runner_run_was_made_from(tmp_path):
    # such a run writes no config.yaml, so its weights load with the config it was composed from: unresolved, its nulls
    # were refused as edits ("config.yaml was edited since checkpoint ...: policy.activation is None in config.yaml")
    from robo_rl.build import build_env, build_learner, build_policy, build_runner
    from robo_rl.checkpoint import latest_checkpoint
    from robo_rl.runs import load_learner, load_run
    from robo_rl.train import compose_config

    torch.manual_seed(0)
    cfg = compose_config(TINY_SAC)
    env, eval_env = build_env(cfg), build_env(cfg, num_envs=1)
    learner = build_learner(cfg, build_policy(cfg, env))
    build_runner(cfg, learner, env, eval_env, tmp_path / "run").train()
    loaded = load_learner(cfg, eval_env, latest_checkpoint(tmp_path / "run" / "checkpoints"))
    obs = torch.randn(5, env.obs_dim)
    assert torch.equal(loaded.policy.act(obs, deterministic=True), learner.policy.act(obs, deterministic=True))
    with pytest.raises(FileNotFoundError, match=r"config.yaml missing\); a run made by robo_rl.build.build_runner "
                                                r"writes none: load its weights with robo_rl.runs.load_learner\(cfg, env"):
        load_run(tmp_path / "run")  # what load_run says of it names the way that works


def test_build_runner_refuses_a_learner_the_safety_section_does_not_fit(tmp_path):
    # the CLI refuses these configs before building; by hand, PPO trained behind filters on log-probs of actions it
    # never sent, and a plain SAC under passivity_aware=true ignored the cost while summary.json claimed the constraint
    from policies import build_head
    from robo_rl.build import build_runner
    from robo_rl.learners.ppo import PPO
    from robo_rl.learners.sac import SAC
    from robo_rl.train import compose_config
    from robo_rl.validation import ConfigError

    head = BetaHead(4, -2 * np.ones(2), 2 * np.ones(2))
    aware = compose_config(["algo=sac", "safety.passivity_aware=true"])
    with pytest.raises(ConfigError, match=r"safety.passivity_aware=True, but the learner is sac, which ignores the cost"):
        build_runner(aware, SAC(head, critic_hidden=(8,)), PointMass(2), PointMass(1), tmp_path / "a")
    filtered = compose_config(["algo=sac", "safety=box"])
    with pytest.raises(ConfigError, match=r"safety.filters: filtering training actions needs an off-policy learner; ppo"):
        build_runner(filtered, PPO(build_head("gaussian", 4, -np.ones(2), np.ones(2), hidden_sizes=(8,), squash=False)),
                     PointMass(2), PointMass(1), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_load_run_gives_the_policy_and_config_in_one_call(tmp_path):
    from robo_rl.runs import load_run
    from robo_rl.train import compose_config, train

    train(compose_config(["algo=td3", "env.id=Pendulum-v1", "steps=200", "algo.learning_starts=100",
                          "algo.batch_size=32", "eval.episodes=1", "log.plot=false", "log.tensorboard=false",
                          "policy.hidden_sizes=[32,32]", "algo.critic_hidden=[32,32]"]), tmp_path / "run")
    policy, cfg = load_run(tmp_path / "run")
    assert cfg.algo.name == "td3" and not policy.training
    assert policy.act(torch.zeros(3, 3), deterministic=True).shape == (3, 1)
    # README, Python API: the loaded run records demonstrations as `robo-rl eval demos_out=` does
    from robo_rl.build import build_env
    from robo_rl.demos import load_demos, save_demos
    from robo_rl.evaluation import evaluate

    env = build_env(cfg, num_envs=2, randomize=False)
    result = evaluate(policy, env, episodes=2, record_transitions=True)
    demos = load_demos(save_demos(tmp_path / "demos.npz", **result.pop("transitions")), env.obs_dim, env.act_dim,
                       env.action_space.low, env.action_space.high)
    assert len(demos["obs"]) == 400 and demos["actions"].shape == (400, 1)  # 2 episodes of Pendulum's 200 steps
    env.close()


def test_a_run_trained_on_cuda_loads_and_exports_on_the_cpu(tmp_path):
    # load_run(device="cpu") and export_run built the env and the networks on the run's own device (config.yaml's
    # device: cuda): on a machine without CUDA both failed ("CUDA is not available"), and on a GPU machine the export
    # stepped a cuda env with a CPU policy and load_run handed back a cfg whose build_env was on another device than
    # the policy. A CPU run whose config.yaml says cuda stands in for one trained on a GPU (checkpoints are
    # device-free: safetensors of CPU tensors).
    from robo_rl.exporting import export_run
    from robo_rl.runs import load_learner, load_run, load_run_config, resolve_checkpoint
    from robo_rl.train import compose_config, train

    torch.manual_seed(0)
    train(compose_config(["algo=td3", "env.id=Pendulum-v1", "steps=40", "algo.learning_starts=20", "threads=1",
                          "algo.batch_size=8", "eval.episodes=1", "env.max_episode_steps=20", "log.plot=false",
                          "log.tensorboard=false", "policy.hidden_sizes=[8]", "algo.critic_hidden=[8]"]), tmp_path / "run")
    config = tmp_path / "run" / "config.yaml"
    config.write_text(config.read_text().replace("\ndevice: cpu\n", "\ndevice: cuda\n"))
    assert load_run_config(tmp_path / "run").device == "cuda"

    policy, cfg = load_run(tmp_path / "run", device="cpu")
    assert cfg.device == "cpu" and {p.device.type for p in policy.parameters()} == {"cpu"}
    saved = load_run_config(tmp_path / "run")
    learner = load_learner(saved, make_env("Pendulum-v1", num_envs=1), resolve_checkpoint(tmp_path / "run"))
    assert {p.device.type for p in learner.parameters()} == {"cpu"} and saved.device == "cuda"  # the caller's cfg kept
    sidecar = export_run(tmp_path / "run", tmp_path / "export", "torchscript", check_episodes_steps=8)  # (as onnx)
    assert (tmp_path / "export" / "policy.pt").is_file() and sidecar["checked"]["real_observations"] == 8


def test_train_leaves_the_callers_thread_count(tmp_path):
    from robo_rl.train import compose_config, train

    torch.set_num_threads(2)
    try:
        train(compose_config(["algo=ppo", "env.id=Pendulum-v1", "steps=128", "env.num_envs=2", "algo.rollout_steps=64",
                              "eval.episodes=1", "log.plot=false", "log.tensorboard=false"]), tmp_path / "run")
        assert torch.get_num_threads() == 2  # PPO's threads=1 applied to the run only
    finally:
        torch.set_num_threads(1)



TINY_SAC = ["algo=sac", "env=pendulum", "steps=101", "algo.learning_starts=100", "algo.batch_size=16",
            "algo.critic_hidden=[16]", "policy.hidden_sizes=[16]", "eval.episodes=1", "eval.num_envs=1",
            "log.plot=false", "log.tensorboard=false", "threads=1"]


def test_train_puts_back_the_callers_mujoco_warning_handler(tmp_path):
    # train() routes MuJoCo's warnings to its log for the run; a notebook's own simulations afterwards went on
    # through robo-rl's logger (repeats of a kind at debug level, unseen), whatever handler the caller had set
    import mujoco

    from robo_rl.train import compose_config, train

    def mine(message):
        pass

    mujoco.set_mju_user_warning(mine)
    try:
        train(compose_config(TINY_SAC), tmp_path / "run")
        assert mujoco.get_mju_user_warning() is mine
    finally:
        mujoco.set_mju_user_warning(None)


def test_a_caller_that_quieted_the_robo_rl_logger_keeps_it_quiet_and_train_log_complete(tmp_path):
    # logging.getLogger("robo_rl").setLevel(WARNING) in a notebook: train() set the logger to INFO, so the progress
    # lines came anyway, in this run and every later one
    import logging

    from robo_rl.train import compose_config, train

    logger = logging.getLogger("robo_rl")
    before = logger.level
    seen: list[logging.LogRecord] = []
    mine = logging.Handler()
    mine.emit = seen.append  # type: ignore[method-assign]
    logger.addHandler(mine)
    logger.setLevel(logging.WARNING)
    try:
        train(compose_config([*TINY_SAC, "algo.learning_starts=200"]), tmp_path / "run")  # warns: no update in 101 steps
        assert logger.level == logging.WARNING
        assert seen and all(r.levelno >= logging.WARNING for r in seen), [r.getMessage() for r in seen]
        assert "done: 101 steps" in (tmp_path / "run" / "train.log").read_text()  # the run's own log has every line
        seen.clear()
        logger.setLevel(logging.NOTSET)  # no choice made: the run's INFO lines, and NOTSET again afterwards
        train(compose_config(TINY_SAC), tmp_path / "run2")
        assert logger.level == logging.NOTSET and any("done: 101 steps" in r.getMessage() for r in seen)
    finally:
        logger.removeHandler(mine)
        logger.setLevel(before)


def test_compose_config_works_in_a_process_whose_own_hydra_is_initialized(tmp_path):
    # a notebook's hydra.initialize() or a caller's @hydra.main app: compose_config (and train(resume=...), which
    # composes) raised "GlobalHydra is already initialized"; the caller's Hydra is now set aside and put back
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.version import VersionBase

    from robo_rl.train import compose_config

    (tmp_path / "mine.yaml").write_text("lr: 0.1\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        theirs, their_base = GlobalHydra.instance().hydra, VersionBase.instance().version_base
        assert compose_config(["algo=sac", "env=pendulum"]).algo.name == "sac"
        assert GlobalHydra.instance().hydra is theirs and VersionBase.instance().version_base == their_base
        assert dict(compose(config_name="mine")) == {"lr": 0.1}  # the caller's own composition still works
    assert not GlobalHydra.instance().is_initialized()


def test_load_run_leaves_the_callers_torch_random_stream(tmp_path):
    # building the networks (then overwritten by the checkpoint's weights) drew from torch's global generator: a
    # caller's seeded stream moved on after load_run or export_run, as it does not after evaluate or make_env
    import torch

    from robo_rl.runs import load_run
    from robo_rl.train import compose_config, train

    train(compose_config(TINY_SAC), tmp_path / "run")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_run(tmp_path / "run")
    assert torch.equal(torch.rand(3), expected)


def test_each_run_prints_to_the_stderr_of_its_own_call(tmp_path):
    # the console handler, added once per process, kept the sys.stderr of the first call: a notebook cell's capture
    # (or pytest's capsys) closed since got "Logging error ... I/O operation on closed file" for every line of the
    # next call, whose own stderr got none
    import contextlib
    import io

    from robo_rl.train import compose_config, train

    first = io.StringIO()
    with contextlib.redirect_stderr(first):
        train(compose_config(TINY_SAC), tmp_path / "run")
    assert "done: 101 steps" in first.getvalue()
    first.close()
    second = io.StringIO()
    with contextlib.redirect_stderr(second):
        train(compose_config(TINY_SAC), tmp_path / "run2")
    assert "done: 101 steps" in second.getvalue() and "Logging error" not in second.getvalue()


def test_a_run_and_its_comparison_leave_the_callers_matplotlib_backend(tmp_path):
    # the learning curve and compare.png were drawn through pyplot after matplotlib.use("Agg"): a notebook's backend
    # (its inline figures) was switched to Agg for the rest of the session
    import matplotlib
    import matplotlib.pyplot as plt

    from robo_rl.compare import compare, write
    from robo_rl.train import compose_config, train

    before = matplotlib.get_backend()
    plt.switch_backend("svg")  # stands for the caller's own (a non-interactive one: no display here)
    try:
        train(compose_config([*TINY_SAC, "log.plot=true"]), tmp_path / "run")
        write(compare([tmp_path / "run"]), tmp_path / "cmp")
        assert (tmp_path / "run" / "learning_curve.png").stat().st_size > 0
        assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0
        assert matplotlib.get_backend() == "svg"
    finally:
        plt.switch_backend(before)


def test_each_compiled_run_in_a_process_compiles_as_its_own(tmp_path):
    # torch keeps compiled code per function for the process, up to recompile_limit versions: past it (by default a
    # notebook's 9th network shape, task or precision) a compile=true run ran eager, with other float rounding than
    # the same run in a process of its own
    import torch._dynamo

    from robo_rl.train import compose_config, train

    with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):  # the limit, from run 2
        for batch_size in (16, 17):
            train(compose_config([*TINY_SAC, "compile=true", f"algo.batch_size={batch_size}"]), tmp_path / f"b{batch_size}")


def test_learners_and_heads_have_their_own_help():
    import inspect

    from policies.heads import GaussianHead
    from robo_rl.learners.sac import SAC

    for cls in (SAC, GaussianHead):
        assert "neural network modules" not in inspect.getdoc(cls)


def test_train_refuses_a_run_dir_argument_the_config_names_otherwise(tmp_path):
    # the argument won over run_dir= (the run went to b), and resume=a continued a in a, ignoring b: both silently
    from robo_rl.train import compose_config, train
    from robo_rl.validation import ConfigError

    with pytest.raises(ConfigError, match=r"train\(cfg, run_dir='.*b'\): cfg has run_dir=.*a; give the directory once"):
        train(compose_config(["env=pendulum", f"run_dir={tmp_path / 'a'}"]), tmp_path / "b")
    with pytest.raises(ConfigError, match=r"cfg has resume=.*a; a resume continues the run in .*a itself"):
        train(compose_config([f"resume={tmp_path / 'a'}"]), tmp_path / "b")
    assert not any(tmp_path.iterdir())


def test_a_policy_built_for_other_sizes_is_refused_before_any_step(tmp_path):
    # PPO on a wider task failed in a matrix multiply ("mat1 and mat2 shapes cannot be multiplied"), and an evaluation
    # env of another task only at the first periodic evaluation, after training had started and written the run
    from robo_rl.build import build_runner
    from robo_rl.evaluation import evaluate
    from robo_rl.learners.ppo import PPO
    from robo_rl.train import compose_config

    wide = BetaHead(6, -2 * np.ones(3), 2 * np.ones(3))  # PointMass: obs [4], actions [2]
    with pytest.raises(ValueError, match=r"evaluate: the beta head acts on obs \[6\] with actions \[3\], "
                                         r"test/PointMass-v0 has obs \[4\] and actions \[2\]; evaluate the policy on"):
        evaluate(wide, PointMass(2), 2)
    cfg = compose_config(["algo=ppo", "steps=64", "eval.episodes=2", "algo.rollout_steps=16"])
    with pytest.raises(ValueError, match=r"does not fit the training env: the beta head acts on obs \[6\] with actions "
                                         r"\[3\], test/PointMass-v0 has obs \[4\] and actions \[2\]; build its head"):
        build_runner(cfg, PPO(wide, minibatch_size=32), PointMass(4), PointMass(2), tmp_path / "ppo")
    fits = BetaHead(4, -2 * np.ones(2), 2 * np.ones(2))
    with pytest.raises(ValueError, match=r"does not fit the evaluation env: the beta head acts on obs \[4\] with "
                                         r"actions \[2\], Pendulum-v1 has obs \[3\] and actions \[1\]"):
        build_runner(cfg, PPO(fits, minibatch_size=32), PointMass(4), make_env("Pendulum-v1"), tmp_path / "eval")
    # the right sizes but another action box: the head's unit actions would be scaled to [-1, 1] on a [-2, 2] task
    # without an error (a policy trained for the wider box sending half its actions)
    narrow = BetaHead(4, -np.ones(2), np.ones(2))
    box = r"the beta head acts in the action box low=\[-1., -1.\], high=\[1., 1.\], test/PointMass-v0's is low=\[-2., -2.\]"
    with pytest.raises(ValueError, match=r"evaluate: " + box):
        evaluate(narrow, PointMass(2), 2)
    with pytest.raises(ValueError, match=r"does not fit the training env: " + box):
        build_runner(cfg, PPO(narrow, minibatch_size=32), PointMass(4), PointMass(2), tmp_path / "box")
    assert not any(tmp_path.iterdir())
    # bounds equal up to float32 rounding fit (a float64 box of 0.1 is 0.1 rounded in the head's float32 buffers)
    assert evaluate(BetaHead(4, -0.1 * np.ones(2), 0.1 * np.ones(2)), PointMass(2, box=0.1, dtype=np.float64), 2)["episodes"] == 2


def test_a_policy_on_another_device_than_the_env_or_the_run_is_refused_before_any_step(tmp_path):
    # a head moved to a GPU next to a CPU env (or the reverse) failed at its first step with torch's "Expected all
    # tensors to be on the same device", naming neither; a learner on another device than cfg.device got its replay
    # on the config's. The meta device stands in for cuda (no GPU here)
    from robo_rl.build import build_runner
    from robo_rl.evaluation import evaluate
    from robo_rl.learners.sac import SAC
    from robo_rl.runners.off_policy import OffPolicyRunner
    from robo_rl.train import compose_config

    head = BetaHead(4, -2 * np.ones(2), 2 * np.ones(2))
    elsewhere = BetaHead(4, -2 * np.ones(2), 2 * np.ones(2)).to("meta")
    with pytest.raises(ValueError, match=r"evaluate: the policy does not act on the env's device: its weights are on "
                                         r"meta, test/PointMass-v0's tensors on cpu; move one of them"):
        evaluate(elsewhere, PointMass(2), 2)
    cfg = compose_config(["algo=sac", "steps=200", "algo.learning_starts=100", "algo.batch_size=32", "eval.episodes=2"])
    with pytest.raises(ValueError, match=r"the learner is not on the training env's device: its weights are on meta, "
                                         r"test/PointMass-v0's tensors on cpu; move it"):
        build_runner(cfg, SAC(elsewhere, critic_hidden=(16,)).to("meta"), PointMass(4), PointMass(2), tmp_path / "env")
    from omegaconf import open_dict

    from robo_rl.defaults import resolve_defaults

    cfg = resolve_defaults(cfg)  # (build_runner refuses device=meta in the config: the runner is built directly here)
    with open_dict(cfg):
        cfg.device = "meta"
    with pytest.raises(ValueError, match=r"the learner is not on the run's device: its weights are on cpu, cfg.device "
                                         r"\(the replay or rollout storage\) on meta"):
        OffPolicyRunner(cfg, SAC(head, critic_hidden=(16,)), PointMass(4), PointMass(2), tmp_path / "cfg")
    assert not any(tmp_path.iterdir())


def test_build_head_takes_bounds_as_tensors():
    # np.size read a tensor's .size method: "'<' not supported between instances of 'builtin_function_or_method'"
    head = build_head("gaussian", 3, -2 * torch.ones(2), 2 * torch.ones(2), hidden_sizes=(8,))
    assert head.action_low.tolist() == [-2.0, -2.0] and head.action_high.tolist() == [2.0, 2.0]
    with pytest.raises(ValueError, match=r"the gaussian head: action_low and action_high must be equal-length bounds"):
        build_head("gaussian", 3, torch.ones(0), torch.ones(0))


@pytest.mark.parametrize("options, message", [
    ({"episodes": 0}, r"evaluate: episodes=0 must be an integer >= 1"),  # was a ZeroDivisionError after a reset
    ({"episodes": 2.5}, r"evaluate: episodes=2.5 must be an integer >= 1"),  # ran 3 episodes and said so
    ({"episodes": 2, "record_episodes": -1}, r"evaluate: record_episodes=-1 must be an integer >= 0"),
    ({"episodes": 2, "deterministic": "no"}, r"evaluate: deterministic='no' must be True"),  # acted deterministically
])
def test_evaluate_refuses_a_bad_option_before_any_step(options, message):
    from robo_rl.evaluation import evaluate

    env = PointMass(2)
    env.reset = env.step = None  # nothing may run before the options are checked
    with pytest.raises((ValueError, TypeError), match=message):
        evaluate(BetaHead(4, -2 * np.ones(2), 2 * np.ones(2)), env, **options)


def test_load_run_refuses_a_device_or_run_dir_it_cannot_use(tmp_path):
    # device='gpu' was torch's own RuntimeError, and device='cuda' without CUDA an AssertionError after the checkpoint
    # was read; both are checked before the run is opened (tmp_path holds no run: its error would come first otherwise)
    from robo_rl.runs import load_run
    from robo_rl.validation import ConfigError

    with pytest.raises(ConfigError, match=r"device=gpu: must be cpu or cuda\[:N\]"):
        load_run(tmp_path, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"device=cuda: CUDA is not available on this machine; use device=cpu"):
            load_run(tmp_path, device="cuda")
    with pytest.raises(TypeError, match=r"load_run\(run_dir\) takes a run directory \(a str or Path\), got None"):
        load_run(None)


@pytest.mark.parametrize("overrides, message", [
    (["algo=sac", "steps=0"], r"steps=0: must be > 0"),  # trained nothing and reported "completed"
    (["algo=sac", "algo.batch_size=0"], r"algo.batch_size=0: must be >= 1"),  # failed in a reshape at the first update
    (["algo=ppo"], r"algo=ppo configures an on-policy learner, but the learner is sac \(off-policy\): compose the "
                   r"config with an algo= of its kind \(e.g. algo=sac\)"),  # a KeyError for algo.batch_size
])
def test_build_runner_checks_the_config_as_train_does(tmp_path, overrides, message):
    from robo_rl.build import build_runner
    from robo_rl.learners.sac import SAC
    from robo_rl.train import compose_config
    from robo_rl.validation import ConfigError

    learner = SAC(BetaHead(4, -2 * np.ones(2), 2 * np.ones(2)), critic_hidden=(8,))
    with pytest.raises(ConfigError, match=message):
        build_runner(compose_config(overrides), learner, PointMass(2), PointMass(1), tmp_path / "run")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"build_runner\(\.\.\., run_dir='.*file'\): that is a file"):
        build_runner(compose_config(["algo=sac"]), learner, PointMass(2), PointMass(1), tmp_path / "file")
    assert not (tmp_path / "run").exists()


def test_a_new_run_refuses_a_run_dir_that_holds_checkpoints(tmp_path):
    # a run built with build_runner writes no config.yaml, so a second one into its directory (by build_runner or
    # train()) replaced its checkpoints and metrics.csv without a word
    from robo_rl.build import build_runner
    from robo_rl.learners.sac import SAC
    from robo_rl.train import compose_config, train
    from robo_rl.validation import ConfigError

    (tmp_path / "run" / "checkpoints" / "step_0000000200").mkdir(parents=True)  # what the first run left
    cfg = compose_config(["algo=sac", "steps=200", "log.tensorboard=false", "log.plot=false"])
    runner = build_runner(cfg, SAC(BetaHead(4, -2 * np.ones(2), 2 * np.ones(2)), critic_hidden=(8,)), PointMass(2),
                          PointMass(1), tmp_path / "run")
    with pytest.raises(ValueError, match=r"run_dir=.*run already holds a run \(checkpoints up to step_0000000200\)"):
        runner.train()
    with pytest.raises(ConfigError, match=r"run_dir=.*run holds checkpoints but no config.yaml"):
        train(compose_config(["env=pendulum"]), tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints"]


def test_build_runner_warns_when_the_learner_trains_otherwise_than_cfg_says(tmp_path):
    # a SAC built with gamma 0.99 ran under a cfg saying algo.gamma=0.5, and its checkpoints recorded 0.5, silently
    # (QA, 2026-12-07); a head of one's own under the default policy= is README's way, and is not warned of
    import logging

    from envs import make_env
    from policies.heads import HEADS
    from policies.normalizers import ObsNormalizer
    from robo_rl.build import build_policy, build_runner
    from robo_rl.config import compose_config
    from robo_rl.learners.ppo import PPO
    from robo_rl.learners.sac import SAC
    from tests.helpers import robo_rl_records

    env, eval_env = make_env("Pendulum-v1"), make_env("Pendulum-v1")
    cfg = compose_config(["algo=sac", "env=pendulum", "algo.gamma=0.5", "steps=10"])
    mixture = HEADS["mixture"](env.obs_dim, env.action_space.low, env.action_space.high, ObsNormalizer(env.obs_dim),
                               hidden_sizes=(8,))
    with robo_rl_records(logging.WARNING) as records:
        build_runner(cfg, SAC(build_policy(cfg, env)), env, eval_env, tmp_path / "a")
        build_runner(compose_config(["algo=ppo", "env=pendulum", "steps=10"]), PPO(mixture), env, eval_env, tmp_path / "b")
        build_runner(compose_config(["algo=ppo", "env=pendulum", "steps=10", "policy=mixture"]), PPO(mixture), env,
                     eval_env, tmp_path / "c")
    said = [r.getMessage() for r in records if r.getMessage().startswith("build_runner: the learner trains otherwise")]
    assert len(said) == 2, said
    assert "algo.gamma=0.5 (the learner's: 0.99)" in said[0] and "policy=" not in said[0]
    assert "policy=gaussian (the learner's head: mixture)" in said[1] and "algo." not in said[1]
    env.close()
    eval_env.close()
