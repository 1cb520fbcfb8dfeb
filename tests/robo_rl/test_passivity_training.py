"""Passivity-aware (Lagrangian) SAC and training-time safety filters, on a tiny task with a known answer.

``CostlyPush`` pays reward a for an action a in [-1, 1] and charges cost a^2 (the energy the
controller injects). Unconstrained, the best action is a = 1 (cost 1 per step); under a per-step
budget d the best is a = sqrt(d). It is a torch-native batched env written to the env contract,
reporting ``info["cost"]`` as a numpy array the way a gymnasium task would.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from envs import BatchedEnv, StepResult
from robo_rl.build import build_learner, build_policy, build_runner
from robo_rl.checkpoint import latest_checkpoint, load_checkpoint
from robo_rl.validation import ConfigError
from robo_rl.learners.sac_lagrangian import LagrangianSAC
from robo_rl.runs import CONFIG_FILE
from robo_rl.train import prepare, seed_everything, train
from tests.helpers import FAST, compose

TASK = "robo_rl_test/CostlyPush"


class CostlyPush(BatchedEnv):
    """N copies of a 1-D push: reward a, cost a^2, 20-step episodes, observations are uniform noise."""

    backend = "test"

    def __init__(self, num_envs: int = 1, episode_steps: int = 20, report_cost: bool = True) -> None:
        self.num_envs, self.episode_steps, self.report_cost = num_envs, episode_steps, report_cost
        self.device = torch.device("cpu")
        self.task_id = TASK
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.generator = torch.Generator()
        self.t = torch.zeros(num_envs, dtype=torch.int64)
        self.ret = torch.zeros(num_envs)
        self.received: list[torch.Tensor] = []  # every action the env was asked to execute

    def _obs(self) -> torch.Tensor:
        return torch.rand(self.num_envs, 2, generator=self.generator) * 2 - 1

    def reset(self, seed: int | None = None) -> torch.Tensor:
        self.generator.manual_seed(0 if seed is None else seed)
        self.t.zero_()
        self.ret.zero_()
        return self._obs()

    def step(self, actions: torch.Tensor) -> StepResult:
        actions = self.check_actions(actions)
        self.received.append(actions.clone())
        a = actions[:, 0]
        reward, cost = a.clone(), a.square()
        self.t += 1
        self.ret += reward
        truncated = self.t >= self.episode_steps
        episode = {"return": torch.where(truncated, self.ret, 0.0), "length": torch.where(truncated, self.t, 0),
                   "mask": truncated.clone()}
        self.t[truncated] = 0
        self.ret[truncated] = 0.0
        obs = self._obs()  # i.i.d. observations: the one a finished episode "ended in" is as good as any
        info = {"final_obs": obs, "episode": episode}
        if self.report_cost:
            info["cost"] = cost.numpy().copy()
        return StepResult(obs, reward, torch.zeros_like(truncated), truncated, info)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "t": self.t.clone(), "ret": self.ret.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.t.copy_(state["t"])
        self.ret.copy_(state["ret"])


# Small and fast: a short horizon (gamma 0.5) and a fixed, small temperature make the bandit learnable in
# ~250 updates; larger learning rates than the SAC defaults for the same reason.
SMALL = (
    "algo=sac", f"env.id={TASK}", "algo.gamma=0.5", "algo.learning_starts=60", "algo.batch_size=64",
    "algo.actor_lr=1e-3", "algo.critic_lr=1e-3", "algo.autotune_alpha=false", "algo.init_alpha=0.02",
    "algo.critic_hidden=[32,32]", "policy.hidden_sizes=[32,32]", "eval.episodes=2", "eval.num_envs=2", *FAST,
)
BUDGET = 0.1  # per-step cost limit: the constrained optimum is a = sqrt(0.1) = 0.32
LAGRANGIAN = ("safety.passivity_aware=true", f"safety.cost_budget={BUDGET}", "safety.cost_gamma=0.5",
              "safety.lagrange_lr=0.05")


def run(run_dir: Path, *overrides: str, resume: bool = False, report_cost: bool = True):
    """What ``robo-rl train`` does (prepare, build, train), with CostlyPush as the env."""
    cli = [f"resume={run_dir}", *overrides] if resume else list(overrides)
    cfg, checkpoint = prepare(compose(*cli), run_dir, cli if resume else ())
    seed_everything(int(cfg.seed))
    env = CostlyPush(int(cfg.env.num_envs), report_cost=report_cost)
    eval_env = CostlyPush(min(int(cfg.eval.num_envs), int(cfg.eval.episodes)))
    learner = build_learner(cfg, build_policy(cfg, env))
    run_dir.mkdir(parents=True, exist_ok=True)
    if checkpoint is None:
        OmegaConf.save(cfg, run_dir / CONFIG_FILE)
    runner = build_runner(cfg, learner, env, eval_env, run_dir)
    return runner, runner.train(resume_from=checkpoint), env


# -- configuration -------------------------------------------------------------------------------
@pytest.mark.parametrize("override, words", [
    ("safety.budget=0.1", ["unknown key 'safety.budget'; did you mean safety.cost_budget?"]),
    ("safety.passivity_aware=sometimes", ["passivity_aware", "bool"]),
    ("safety.cost_budget=low", ["cost_budget", "Float"]),
    ("safety.filters=[3]", ["filters", "Dict"]),
    ("safety.cost_critic.width=3", ["unknown key 'safety.cost_critic.width'; the keys there are num_critics, hidden"]),
])
def test_unknown_or_mistyped_safety_keys_fail_at_composition(override, words):
    with pytest.raises(ConfigError) as exc:  # worded as the CLI words it
        compose("algo=sac", override)
    for w in words:
        assert w in str(exc.value)


@pytest.mark.parametrize("overrides, key, hint", [
    (["algo=ppo", "safety.passivity_aware=true"], "safety.passivity_aware", "use algo=sac"),
    (["algo=td3", "safety.passivity_aware=true"], "safety.passivity_aware", "use algo=sac"),
    (["algo=sac", "safety.cost_gamma=1.0"], "safety.cost_gamma", "[0, 1)"),
    (["algo=sac", "safety.cost_budget=-1"], "safety.cost_budget", ">= 0"),
    (["algo=sac", "safety.lagrange_lr=0"], "safety.lagrange_lr", "> 0"),
    (["algo=ppo", "safety.filters=[{type: box, low: -1, high: 1}]"], "safety.filters", "off-policy"),
])
def test_safety_semantic_errors_name_the_key_and_write_nothing(tmp_path, overrides, key, hint):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as exc:
        train(compose(*overrides, "env=pendulum", *FAST), tmp_path / "run")
    assert hint in str(exc.value)
    assert not (tmp_path / "run").exists()


def test_defaults_compose_and_cost_critic_follows_the_reward_critic():
    from robo_rl.defaults import resolve_defaults

    cfg = resolve_defaults(compose("algo=sac", "algo.critic_hidden=[64]", "algo.critic_lr=1e-3"))
    assert list(cfg.safety.filters) == [] and cfg.safety.passivity_aware is False and cfg.safety.cost_key == "cost"
    assert list(cfg.safety.cost_critic.hidden) == [64] and cfg.safety.cost_critic.lr == 1e-3


def test_bad_filter_spec_fails_before_the_run_directory_is_written(tmp_path):
    pytest.importorskip("sim2real.filters", reason="sim2real.filters (the filter chain) is not available")
    with pytest.raises(ConfigError, match=r"safety\.filters\[0\] \(box\).*hight"):
        train(compose("algo=sac", "env=pendulum", "safety.filters=[{type: box, low: [-1], hight: [1]}]", *FAST),
              tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_an_energy_tank_on_another_control_period_is_refused(tmp_path):
    # configs/safety/passivity.yaml is set up for ContactMaze's 25 Hz; at frame_skip=5 the period is 0.02 s and
    # the tank's per-step work bound and viscous credit (damping dq^2 / dt) would be for the wrong period
    with pytest.raises(ConfigError, match=r"\(energy_tank\): dt=0.04 is not the control period 0.02 s of this env"):
        train(compose("algo=sac", "env=contact_maze", "safety=passivity", "env.kwargs.frame_skip=5", *FAST),
              tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_missing_cost_names_the_key_and_the_task(tmp_path):
    with pytest.raises(ConfigError) as exc:
        run(tmp_path / "run", *SMALL, *LAGRANGIAN, "steps=40", report_cost=False)
    assert "safety.cost_key='cost'" in str(exc.value) and TASK in str(exc.value)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"].startswith("failed: safety.passivity_aware")


def test_missing_cost_is_found_before_the_run_directory_is_written(tmp_path):
    with pytest.raises(ConfigError, match=r"safety.cost_key='energy'.*Hopper-v5 \(mujoco backend\) reports none"):
        train(compose("algo=sac", "safety.passivity_aware=true", "safety.cost_key=energy", *FAST), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# -- the learner's math -----------------------------------------------------------------------------
def constant_q(critic, values):
    """Make critic i output ``values[i]`` everywhere: zero last layer, bias = value."""
    last = critic.net.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        for i, v in enumerate(values):
            last.bias[i].fill_(v)


def small_lagrangian(**options) -> LagrangianSAC:
    from policies import build_head

    head = build_head("gaussian", 3, -np.ones(1), np.ones(1), hidden_sizes=(8,))
    return LagrangianSAC(head, critic_hidden=(8,), **options)


def cost_batch(n=8):
    from robo_rl.learners.base import CostBatch

    g = torch.Generator().manual_seed(5)
    term = (torch.arange(n) % 3 == 0).float()
    return CostBatch(torch.randn(n, 3, generator=g), torch.rand(n, 1, generator=g) * 2 - 1, torch.randn(n, generator=g),
                     torch.randn(n, 3, generator=g), term, torch.rand(n, generator=g))


def test_cost_critic_target_uses_the_pessimistic_max_and_no_entropy():
    lag = small_lagrangian(cost_gamma=0.8)
    constant_q(lag.cost_critic_target, [1.0, 3.0])  # max over the twin targets = 3
    constant_q(lag.cost_critic, [0.5, -0.5])
    b = cost_batch()
    loss, qc_mean = lag.cost_critic_loss(b)
    target = b.costs + 0.8 * (1 - b.terminated) * 3.0
    torch.testing.assert_close(loss, 0.5 * (((0.5 - target) ** 2).mean() + ((-0.5 - target) ** 2).mean()))
    assert float(qc_mean) == 0.0


@pytest.mark.parametrize("budget, expected", [(0.1, 0.2 + 0.5 * (0.1 * 3.0 - 0.1)), (10.0, 0.0)])
def test_multiplier_is_projected_ascent_on_the_per_step_violation(budget, expected):
    lag = small_lagrangian(cost_budget=budget, cost_gamma=0.9, lagrange_lr=0.5, lagrange_init=0.2, critic_lr=1e-6)
    constant_q(lag.cost_critic, [2.0, 3.0])  # per-step estimate (1 - 0.9) * max(2, 3) = 0.3
    metrics = lag.update(cost_batch())
    assert float(metrics["lagrange_multiplier"]) == pytest.approx(0.2)  # the value the actor step used
    assert float(lag.lagrange) == pytest.approx(expected, abs=1e-4)  # after the step, clipped at 0
    assert float(metrics["cost_rate_estimate"]) == pytest.approx(0.3, abs=1e-4)


@pytest.mark.parametrize("old_defaults", [False, True])
def test_the_default_estimate_reads_the_per_step_cost_where_episodes_end_early(old_defaults):
    """Every step costs 0.07 against a budget of 0.03, and every third step ends its episode (a goal). With the
    defaults (cost_gamma=0, lagrange_lr=1) the estimate is the per-step cost and lambda rises. With the defaults
    until 2026-12-05 (0.99, 0.01), (1 - gamma_c) Q_c counts the few remaining steps of each episode, reads
    far below the budget, and lambda stays at 0: what happened in the passivity study on ContactMaze."""
    torch.manual_seed(0)
    lag = small_lagrangian(cost_budget=0.03, **({"cost_gamma": 0.99, "lagrange_lr": 0.01} if old_defaults else {}))
    batch = cost_batch()._replace(costs=torch.full((8,), 0.07))
    for _ in range(300):
        metrics = lag.update(batch)
    estimate = float(metrics["cost_rate_estimate"])  # max over the twin cost critics, at the policy's actions
    if old_defaults:
        assert estimate < 0.01 and float(lag.lagrange) == 0.0  # measured 0.002
    else:
        assert 0.05 < estimate < 0.15 and float(lag.lagrange) > 1.0  # measured 0.11 (the twins' max), lambda 47


def test_actor_pays_lambda_times_the_cost_critic():
    lag = small_lagrangian(init_alpha=0.5)
    constant_q(lag.critic, [1.0, 2.0])  # min = 1
    constant_q(lag.cost_critic, [4.0, 3.0])  # max = 4
    obs = cost_batch().obs
    torch.manual_seed(11)
    loss, logp, qc = lag.actor_loss(obs, torch.tensor(0.5), torch.tensor(0.25))
    torch.testing.assert_close(loss, (0.5 * logp - 1.0 + 0.25 * 4.0).mean())
    assert torch.all(qc == 4.0)


# -- learning --------------------------------------------------------------------------------------
def test_lagrangian_sac_spends_less_than_plain_sac_and_raises_lambda(tmp_path):
    common = (*SMALL, "steps=300", "eval.every=300", "checkpoint.every=300", "log.every=100", "seed=3")
    _, plain, _ = run(tmp_path / "plain", *common)
    runner, lag, _ = run(tmp_path / "lag", *common, *LAGRANGIAN)
    plain_cost, lag_cost = plain["final_eval_cost_mean"] / 20, lag["final_eval_cost_mean"] / 20  # per step
    lam = float(runner.learner.lagrange)
    print(f"per-step eval cost: plain SAC {plain_cost:.3f}, Lagrangian SAC {lag_cost:.3f} (budget {BUDGET}); "
          f"per-step return {plain['final_eval_return_mean'] / 20:.3f} vs {lag['final_eval_return_mean'] / 20:.3f}; "
          f"lambda {lam:.2f}")
    assert isinstance(runner.learner, LagrangianSAC) and lag["passivity_aware"] is True
    assert plain_cost > 0.6  # unconstrained, the policy pushes to the bound (cost 1)
    assert lag_cost < 2 * BUDGET and lag_cost < 0.3 * plain_cost  # measured ~0.07-0.09 over seeds 0-3
    assert lam > 0.5  # the multiplier rose from 0 (at the optimum a = 1 / (2 lambda), lambda ~ 1.6)
    # the episode cost is logged next to the return; lambda and the cost critic are in the metrics
    header = (tmp_path / "lag" / "metrics.csv").read_text().splitlines()[0]
    for column in ("rollout/ep_cost_mean", "eval/cost_mean", "train/lagrange_multiplier", "train/cost_q_mean",
                   "train/cost_critic_loss", "train/cost_rate_estimate"):
        assert column in header, column
    assert "rollout/ep_cost_mean" in (tmp_path / "plain" / "metrics.csv").read_text().splitlines()[0]


# -- checkpoints -----------------------------------------------------------------------------------
def test_resume_continues_lambda_and_cost_critic_exactly(tmp_path):
    common = (*SMALL, *LAGRANGIAN, "algo.learning_starts=40", "eval.every=80", "checkpoint.every=80", "log.every=20")
    run(tmp_path / "full", *common, "steps=140")
    run(tmp_path / "cut", *common, "steps=80")
    state, replay = load_checkpoint(latest_checkpoint(tmp_path / "cut" / "checkpoints"), load_replay=True)
    assert replay is not None and replay["costs"].shape == (80,)
    np.testing.assert_allclose(replay["costs"], replay["actions"][:, 0] ** 2, rtol=1e-6)
    assert float(state["learner"]["modules"]["lagrange"]) > 0.0 and "cost_critic" in state["learner"]["optimizers"]
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("robo_rl")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        run(tmp_path / "cut", "steps=140", resume=True)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert any(ln.startswith("resumed from") and ln.endswith("at step 80") for ln in lines), lines  # not from scratch
    full, _ = load_checkpoint(latest_checkpoint(tmp_path / "full" / "checkpoints"), load_replay=False)
    cut, _ = load_checkpoint(latest_checkpoint(tmp_path / "cut" / "checkpoints"), load_replay=False)
    a, b = full["learner"]["modules"], cut["learner"]["modules"]
    assert a.keys() == b.keys() and "lagrange" in a and any(k.startswith("cost_critic_target.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    for name, opt in full["learner"]["optimizers"]["cost_critic"]["state"].items():
        assert torch.equal(opt["exp_avg"], cut["learner"]["optimizers"]["cost_critic"]["state"][name]["exp_avg"])
    assert full["runner"]["recent_costs"] == cut["runner"]["recent_costs"]


# -- filters ---------------------------------------------------------------------------------------
def test_box_filter_bounds_every_executed_and_stored_action(tmp_path):
    pytest.importorskip("sim2real.filters", reason="sim2real.filters (the filter chain) is not available")

    box = "safety.filters=[{type: box, low: [-0.3], high: [0.3]}]"
    runner, summary, env = run(tmp_path / "run", *SMALL, box, "steps=160", "eval.every=160", "checkpoint.every=160",
                               "log.every=40")
    executed = torch.cat(env.received)
    assert executed.shape[0] == 160 and float(executed.abs().max()) <= 0.3  # random warm-up and policy actions
    stored = runner.replay.actions[: runner.replay.size]
    assert float(stored.abs().max()) <= 0.3  # replay holds what was executed
    assert summary["filter_interventions"] > 20  # uniform warm-up actions leave the box 70% of the time
    assert "safety/intervention_rate" in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]


def test_the_filter_layer_takes_what_the_env_takes_and_refuses_a_misshapen_batch_as_the_env_does():
    # the layer read actions with .numpy() and row by row: bfloat16 was torch's "unsupported ScalarType BFloat16"
    # (the env itself takes it), a short batch an IndexError from numpy, and [N] for [N, 1] went through the
    # chain one scalar per copy ("chain: action must have shape [1] or [B, 1], got []")
    pytest.importorskip("sim2real.filters", reason="sim2real.filters (the filter chain) is not available")
    from robo_rl.runners.safety import SafetyLayer

    env = SafetyLayer(CostlyPush(2), [{"type": "box", "low": -0.3, "high": 0.3}])
    env.reset(seed=0)
    top = np.nextafter(np.float32(0.3), np.float32(0)).item()  # the box's 0.3 rounded inward: float32(0.3) is above it
    for actions in (torch.tensor([[0.5], [float("nan")]], dtype=torch.bfloat16), np.array([[0.5], [np.nan]]),
                    torch.tensor([[1e39], [float("nan")]], dtype=torch.float64)):
        executed = env.step(actions).info["safety"]["actions"]
        assert executed.dtype == torch.float32 and executed.tolist() == [[top], [0.0]]  # NaN: hold (the midpoint, 0, before any output)
    for actions in (torch.zeros(1, 1), torch.zeros(3, 1), torch.zeros(2), torch.zeros(2, 2)):
        with pytest.raises(ValueError, match=rf"^{TASK}: actions have shape \({', '.join(map(str, actions.shape))},?\), "
                                             r"expected \(2, 1\) \(num_envs=2, action dim=1\)$"):
            env.step(actions)
    with pytest.raises(TypeError, match=rf"^{TASK}: actions must be a float tensor"):
        env.step(torch.zeros(2, 1, dtype=torch.bool))
    assert len(env.env.received) == 3  # only the three good batches reached the env


def test_the_filter_layer_filters_every_copy_in_one_call_and_resumes_a_chain_per_copy_checkpoint(monkeypatch):
    # the layer kept a chain per env copy and called them one by one: ~160 Python calls per copy and step (a box
    # and a rate limit), 5x the rest of SAC's acting loop at 32 copies; one chain over the copies' rows is one call
    pytest.importorskip("sim2real.filters", reason="sim2real.filters (the filter chain) is not available")
    from robo_rl.runners.safety import SafetyLayer
    from sim2real.filters import FilterChain, build_chain

    spec, n = [{"type": "box", "low": -0.3, "high": 0.3}, {"type": "rate", "max_delta": 0.1}], 8
    calls, apply = [], FilterChain._apply
    monkeypatch.setattr(FilterChain, "_apply", lambda self, *args: calls.append(self) or apply(self, *args))
    env = SafetyLayer(CostlyPush(n, episode_steps=5), spec)
    copies = [build_chain(spec, 1, 2) for _ in range(n)]  # what a checkpoint before 2026-12-07 held: a chain per copy
    for chain in copies:
        chain.reset(1)
    env.reset(seed=0)
    draws = torch.Generator().manual_seed(0)
    actions = [torch.rand(n, 1, generator=draws) * 2 - 1 for _ in range(12)]
    for t, a in enumerate(actions[:7]):
        obs = env.obs.double().numpy()
        executed = env.step(a).info["safety"]["actions"]
        assert executed.tolist() == [list(c(a[i].numpy(), obs[i])[0]) for i, c in enumerate(copies)], t
        for i in np.flatnonzero(env.env.t.numpy() == 0):
            copies[i].reset(1)
    assert len([c for c in calls if c not in copies]) == 7  # one call a step for all 8 copies
    old = {**env.env.state_dict(), "safety.episode_cost": env.episode_cost.clone(),
           "safety.filters": [c.state_dict() for c in copies]}
    resumed = SafetyLayer(CostlyPush(n, episode_steps=5), spec)
    resumed.reset(seed=1)
    resumed.load_state_dict(old)
    resumed.obs = env.obs
    for a in actions[7:]:  # (a rate limit: each copy goes on from its own previous command)
        assert torch.equal(resumed.step(a).info["safety"]["actions"], env.step(a).info["safety"]["actions"])


# -- non-finite costs and settings -------------------------------------------------------------------
class NaNCostPush(CostlyPush):
    """CostlyPush whose copy 0 reports a NaN cost at the 5th step of every episode (a broken cost term)."""

    def step(self, actions: torch.Tensor) -> StepResult:
        result = super().step(actions)
        if int(self.t[0]) == 5:
            result.info["cost"][0] = np.nan
        return result


class DivergingPush(CostlyPush):
    """CostlyPush whose copy 0 "diverges" at its 7th step, as the MuJoCo backend reports it: the simulation is
    reset, ``info["diverged"]`` marks it, its reward is 0, its episode ends truncated with its last finite
    observation, and the task's cost term, computed from the broken state, is NaN."""

    def step(self, actions: torch.Tensor) -> StepResult:
        breaking = self.t == 6  # this step is the 7th of the episode
        previous = self.last_obs.clone()
        result = super().step(actions)
        obs, reward, terminated, truncated, info = result
        if bool(breaking.any()):
            reward = torch.where(breaking, 0.0, reward)
            truncated = truncated | breaking
            info["final_obs"] = torch.where(breaking[:, None], previous, info["final_obs"])
            info["episode"] = {"return": torch.where(breaking, self.ret, info["episode"]["return"]),
                               "length": torch.where(breaking, self.t, info["episode"]["length"]),
                               "mask": info["episode"]["mask"] | breaking}
            self.t[breaking] = 0
            self.ret[breaking] = 0.0
            info["cost"][breaking.numpy()] = np.nan
        info["diverged"] = breaking
        self.last_obs = obs
        return StepResult(obs, reward, terminated, truncated, info)

    def reset(self, seed: int | None = None) -> torch.Tensor:
        self.last_obs = super().reset(seed)
        return self.last_obs


def run_on(env_cls, run_dir: Path, *overrides: str):
    """``run`` with another env class for training and evaluation."""
    cfg, _ = prepare(compose(*overrides), run_dir, ())
    seed_everything(int(cfg.seed))
    env, eval_env = env_cls(int(cfg.env.num_envs)), env_cls(min(int(cfg.eval.num_envs), int(cfg.eval.episodes)))
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / CONFIG_FILE)
    runner = build_runner(cfg, build_learner(cfg, build_policy(cfg, env)), env, eval_env, run_dir)
    return runner, runner.train()


def test_a_nan_cost_stops_training_naming_the_key_even_when_only_logged(tmp_path):
    # without passivity_aware the cost is only logged: it used to turn rollout/ep_cost_mean and eval/cost_mean
    # into NaN for the rest of the run (and summary.json's final_eval_cost_mean), with no word said
    from robo_rl.runners.stopping import NonFiniteError

    with pytest.raises(NonFiniteError, match=rf"{TASK}: non-finite cost .*safety.cost_key='cost' for env copies \[0\].* "
                                             r"\(at step [\d,]+\); training stopped and (the last good checkpoint|no checkpoint)"):
        run_on(NaNCostPush, tmp_path / "run", *SMALL, "steps=60", "eval.every=60", "checkpoint.every=60", "log.every=20")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"].startswith(f"failed: {TASK}: non-finite cost")


def test_a_nan_cost_stops_an_evaluation_instead_of_a_nan_cost_mean():
    from robo_rl.evaluation import evaluate
    from robo_rl.runners.safety import SafetyLayer
    from policies import build_head

    head = build_head("gaussian", 2, -np.ones(1), np.ones(1), hidden_sizes=(8,))
    with pytest.raises(FloatingPointError, match=r"non-finite cost"):
        evaluate(head, SafetyLayer(NaNCostPush(2), keep_episode_costs=True), episodes=2, seed=0)


def test_the_opening_line_names_lagrangian_sac(tmp_path, caplog):
    # safety.passivity_aware=true trains Lagrangian SAC; the run's first line said "sac", as for a plain SAC run
    from robo_rl.train import _log_start

    cfg, _ = prepare(compose(*SMALL, *LAGRANGIAN), tmp_path / "run", ())
    env = CostlyPush(1)
    learner = build_learner(cfg, build_policy(cfg, env))
    with caplog.at_level(logging.INFO, logger="robo_rl"):
        _log_start(cfg, env, CostlyPush(1), learner, None, {}, 100)
    assert "robo-rl: sac (sac_lagrangian) on " in caplog.text


def test_a_diverged_simulation_costs_nothing_and_a_passivity_aware_run_goes_on(tmp_path):
    # the backend's diverged reset is survivable (reward 0, row left out of replay); its NaN cost term used to stop
    # a passivity-aware run ("non-finite cost from the environment") and poison the logged episode costs
    runner, summary = run_on(DivergingPush, tmp_path / "run", *SMALL, *LAGRANGIAN, "env.num_envs=2", "steps=120",
                             "algo.learning_starts=40", "eval.every=120", "checkpoint.every=120", "log.every=40")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
    # both copies diverge at every 7th step (iterations 7, 14, ..., 56): 16 rows left out of replay
    assert runner.diverged == 16 and runner.replay.size == 120 - 16
    assert bool(torch.isfinite(runner.replay.costs[: runner.replay.size]).all())
    assert runner.recent_costs and all(np.isfinite(c) for c in runner.recent_costs)
    assert all(np.isfinite(e["cost_mean"]) for e in runner.eval_history)


class SignedCostPush(CostlyPush):
    """CostlyPush whose cost is the signed work a (ContactMaze's injected_energy, not its cost = max(injected, 0))."""

    def step(self, actions: torch.Tensor) -> StepResult:
        result = super().step(actions)
        result.info["cost"] = result.info["cost"] * np.sign(actions[:, 0].numpy())  # a |a|: negative for a < 0
        return result


def test_a_negative_cost_stops_passivity_aware_training_naming_the_key(tmp_path):
    # the Lagrangian learner bounds a cost c >= 0 (the positive work injected); a signed one let the steps that took
    # energy out pay for those that put it in, and replay, lambda and the cost critic took it without a word
    with pytest.raises(ValueError, match=rf"{TASK}: negative cost under safety.cost_key='cost' for env copies \[0\] "
                                         r"\(values \[-[\d.e-]+\]\).*passivity-aware"):
        run_on(SignedCostPush, tmp_path / "run", *SMALL, *LAGRANGIAN, "steps=60", "eval.every=60",
               "checkpoint.every=60", "log.every=20")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"].startswith(f"failed: {TASK}: negative cost")


def test_a_negative_cost_is_only_logged_without_passivity_aware_training():
    from robo_rl.runners.safety import SafetyLayer

    env = SafetyLayer(SignedCostPush(2))
    env.reset(seed=0)
    step = env.step(torch.tensor([[-0.5], [0.5]]))
    assert step.info["safety"]["cost"].tolist() == [-0.25, 0.25]


@pytest.mark.parametrize("option", ["cost_budget", "lagrange_lr", "lagrange_init"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_lagrangian_refuses_non_finite_settings(option, value):
    # the CLI's validation refuses them; from Python a NaN passed every comparison and made lambda NaN
    with pytest.raises(ValueError, match=rf"finite numbers.*{option}={value}"):
        small_lagrangian(**{option: value})


def test_a_plain_batch_says_which_setting_stores_costs():
    from robo_rl.learners.base import Batch

    with pytest.raises(TypeError, match=r"safety.passivity_aware=true"):
        small_lagrangian().update(Batch(*cost_batch()[:5]))


def test_a_cost_of_the_wrong_size_is_named_where_it_was_read():
    # the message said info['cost'] for a cost the task reported in info['task']['cost']
    from robo_rl.runners.safety import read_cost

    with pytest.raises(ValueError, match=r"^info\['task'\]\['cost'\] \(safety.cost_key\) holds 3 values; expected one "
                                         r"cost per env copy \(2\)$"):
        read_cost({"task": {"cost": np.zeros(3)}}, "cost", 2, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"^info\['energy'\] \(safety.cost_key\) holds 1 values"):
        read_cost({"energy": np.zeros(1)}, "energy", 2, torch.device("cpu"))
    assert read_cost({"task": {"cost": [1.0, 2.0]}}, "cost", 2, torch.device("cpu")).tolist() == [1.0, 2.0]


def test_a_binding_energy_tank_resumes_mid_episode_exactly(tmp_path):
    # the filter-resume tests used a box (stateless); here the tank is small enough to scale commands down, and the
    # checkpoint at step 150 falls mid-episode, with the tank's level and last position in the filter's state
    from omegaconf import open_dict

    def config(*extra: str):
        cfg = compose("algo=sac", "env=contact_maze", "safety=passivity", "env.num_envs=2", "env.max_episode_steps=40",
                      "algo.learning_starts=100", "algo.batch_size=32", "algo.critic_hidden=[16,16]",
                      "policy.hidden_sizes=[16,16]", "safety.cost_critic.hidden=[16,16]", "eval.episodes=2",
                      "eval.num_envs=2", "eval.every=150", "checkpoint.every=150", "log.every=50", *FAST, *extra)
        with open_dict(cfg):
            cfg.safety.filters[1].initial_energy, cfg.safety.filters[1].max_energy = 0.01, 0.02
        return cfg

    train(config("steps=300"), tmp_path / "full")
    train(config("steps=150"), tmp_path / "cut")
    train(compose(f"resume={tmp_path / 'cut'}", "steps=300"), tmp_path / "cut", [f"resume={tmp_path / 'cut'}", "steps=300"])
    full, full_replay = load_checkpoint(latest_checkpoint(tmp_path / "full" / "checkpoints"), load_replay=True)
    cut, cut_replay = load_checkpoint(latest_checkpoint(tmp_path / "cut" / "checkpoints"), load_replay=True)
    assert full["runner"]["interventions"] > 100  # the tank bound most steps
    assert full["runner"]["interventions"] == cut["runner"]["interventions"]
    for k, v in full["learner"]["modules"].items():
        assert torch.equal(v, cut["learner"]["modules"][k]), f"{k} differs after resume"
    for k in full_replay:
        np.testing.assert_array_equal(full_replay[k], cut_replay[k], err_msg=k)


@pytest.mark.parametrize("env, key, warned", [
    ("pendulum", "energy", True),  # Pendulum reports no cost at all: the key was accepted and read nothing
    ("contact_maze", "power", False),  # one of ContactMaze's energy terms
    ("pendulum", "cost", False),  # the default: no costs is no news
])
def test_a_cost_key_the_task_never_reports_is_named(env, key, warned):
    from robo_rl.build import build_env, check_env_runs
    from robo_rl.defaults import resolve_defaults
    from tests.helpers import robo_rl_records

    cfg = resolve_defaults(compose("algo=sac", f"env={env}", f"safety.cost_key={key}"))
    built = build_env(cfg, num_envs=1, randomize=False)
    try:
        with robo_rl_records(logging.WARNING) as records:
            check_env_runs(cfg, built)
    finally:
        built.close()
    said = [r.getMessage() for r in records]
    assert said == ([f"safety.cost_key={key}: Pendulum-v1 reported no '{key}' in its first step's info (top level or "
                     "info['task']); if none of its steps does, no episode costs are logged and the key changes "
                     "nothing"] if warned else [])


class _CostAtTheEnd(gym.Env):
    """A 1-D task that reports its cost (the episode's energy) only in the step that ends an episode."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        end = self.t == 3
        return np.zeros(1, np.float32), 0.0, end, False, ({"energy": 2.5} if end else {})


gym.register("robo_rl_test/CostAtTheEnd-v0", entry_point=_CostAtTheEnd, max_episode_steps=10)


def test_a_cost_reported_only_at_episode_ends_is_not_said_to_be_never_logged():
    # the start-up probe steps once: a task reporting the cost at episode ends was told "no episode costs are logged",
    # while every episode's cost was logged
    from robo_rl.build import build_env, check_env_runs
    from robo_rl.defaults import resolve_defaults
    from tests.helpers import robo_rl_records

    cfg = resolve_defaults(compose("algo=sac", "env.id=robo_rl_test/CostAtTheEnd-v0", "safety.cost_key=energy"))
    built = build_env(cfg, num_envs=1, randomize=False, safety=True)
    try:
        with robo_rl_records(logging.WARNING) as records:
            check_env_runs(cfg, built)
        built.reset(seed=0)
        costs = [float(built.step(torch.zeros(1, 1)).info["episode"].get("cost", torch.zeros(1))[0]) for _ in range(3)]
    finally:
        built.close()
    assert costs == [0.0, 0.0, 2.5]  # the episode's cost is logged
    assert [r.getMessage() for r in records] == [
        "safety.cost_key=energy: robo_rl_test/CostAtTheEnd-v0 reported no 'energy' in its first step's info (top level "
        "or info['task']); if none of its steps does, no episode costs are logged and the key changes nothing"]


@pytest.mark.parametrize("randomize, named", [
    ("randomize=strong", ["action_delay=[0, 1]", "action_noise_std=0.05", "joint_damping_scale=[0.5, 1.5]",
                          "actuator_gain_scale=[0.8, 1.2]", "obs_noise_std=0.02"]),
    # noisy positions inflate the tank's dissipation credit: std 0.01 filled ContactMaze's tank at rest
    ("env.randomize.obs_noise_std=0.01", ["obs_noise_std=0.01 (the tank credits the dissipation it reads from noisy "
                                          "positions: noise alone fills it)"]),
    ("env.randomize.obs_noise_std=0", []),
    ("env.randomize.joint_damping_scale=[1.0,1.5]", []),  # more damping than credited: the guarantee holds
    ("env.randomize.actuator_gain_scale=[0.5,1.0]", []),
    ("env.randomize.body_mass_scale=[0.5,1.5]", []),
    ("env.randomize.action_delay=[0,0]", []),
])
def test_an_energy_tank_on_a_randomized_plant_it_does_not_cover_is_warned_of(randomize, named):
    # README (Safety filters) says the tank's guarantee does not hold with actuation latency or a plant with less
    # damping or more gain than the filter's; a run with safety=passivity randomize=strong started without a word
    from robo_rl.run_plan import passivity_void

    lines = passivity_void(compose("algo=sac", "env=contact_maze", "safety=passivity", randomize))
    if not named:
        assert lines == []
        return
    assert len(lines) == 1 and lines[0].startswith("safety: the energy_tank filter's passivity guarantee does not hold")
    assert all(f"env.randomize.{n}" in lines[0] for n in named) and "geom_friction" not in lines[0]
    assert passivity_void(compose("algo=sac", "env=contact_maze", "safety=box", randomize)) == []  # no tank


def test_a_box_narrower_than_the_task_s_action_bounds_is_warned_of():
    # configs/safety/box.yaml's [-1, 1] on Pusher's [-2, 2] clipped every training action without a word
    from sim2real.filters.chain import narrowing_boxes

    spec = compose("algo=sac", "env=pusher", "safety=box").safety.filters
    (line,) = narrowing_boxes(spec, -2 * np.ones(7), 2 * np.ones(7), "Pusher-v5")
    assert line == ("safety.filters[0] (box): [-1, 1] is narrower than Pusher-v5's action bounds [-2, 2] in every "
                    "dimension, so the policy's actions beyond it are clipped; if that is not meant, give the box the "
                    "task's bounds (low/high)")
    assert "in dimension(s) 1, 2, so" in narrowing_boxes([{"type": "box", "low": [-1, -0.5, -1], "high": [1, 1, 0.5]}],
                                                      -np.ones(3), np.ones(3), "Mine-v0")[0]
    assert narrowing_boxes(spec, -np.ones(7), np.ones(7), "Pusher-v5") == []  # the task's own bounds
    assert narrowing_boxes({"filters": [{"type": "rate", "max_delta": 0.1}]}, -2 * np.ones(7), 2 * np.ones(7), "x") == []
