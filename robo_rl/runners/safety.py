"""Safety in the training loop: per-step costs read from the env, and safety filters on the actions.

``SafetyLayer`` wraps the batched env a runner steps (training and evaluation alike), so the loop
and ``evaluate`` see one env that

* passes every action through the configured filter chain (``sim2real.filters``) before the
  simulator receives it: one chain over the N env copies' rows (one call per step, not one per copy),
  whose per-episode state (an energy tank, the previous output) restarts row by row as each copy's
  episode ends (``reset_rows``);
* reads the step's cost ``info[cost_key]`` (or ``info["task"][cost_key]``, where the batched MuJoCo
  backend keeps task terms), sums it per episode, and reports finished episodes' sums next to their
  returns as ``info["episode"]["cost"]``; a simulation reset because it diverged costs 0 in that step
  (as its reward is 0), any other NaN/Inf cost stops the run (``FloatingPointError``, see ``checked_cost``), and so
  does a negative one where the learner needs the cost (``require_cost``: passivity-aware training bounds c >= 0);
* hands the loop what really happened under ``info["safety"]``: ``actions`` [N, A] (the filtered
  actions the env executed), ``cost`` [N] (None when the env reports none) and ``interventions``
  (how many env copies' actions the chain changed in this step).

Without filters and without a cost in the info, the layer only forwards calls (and adds
``info["safety"]`` with the actions unchanged, no cost and no interventions).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from envs import BatchedEnv, StepResult
from envs.base import ContractError, all_finite, check_reset_obs, check_step_result


def safety_settings(cfg: DictConfig) -> DictConfig:
    """``cfg.safety``, or the schema's defaults for configs composed without the section."""
    from robo_rl.config import SafetyConfig

    section = OmegaConf.select(cfg, "safety")
    return section if section is not None else OmegaConf.structured(SafetyConfig)


def build_filter_chain(spec: Any, action_dim: int, obs_dim: int, control_dt: float | None = None) -> Any:
    """One chain from ``safety.filters`` (a list of filter spec dicts), checked by ``sim2real.filters``."""
    from robo_rl.validation import ConfigError

    try:
        from sim2real.filters import build_chain
    except ImportError as exc:
        raise ConfigError(
            f"safety.filters is set but the safety filters (sim2real.filters.build_chain) cannot be imported ({exc}); "
            "install robo-rl with its sim2real package, or train with safety=none"
        ) from None
    from sim2real.filters import SafetyFilter

    items = [spec] if isinstance(spec, SafetyFilter) else spec if isinstance(spec, (list, tuple)) else []
    built = [f for f in items if isinstance(f, SafetyFilter)]
    if built:  # a FilterChain was a bare "'FilterChain' object is not iterable"
        raise ConfigError(f"safety filters are given as specs, not built filters ({type(built[0]).__name__}): "
                          "[{'type': 'box', 'low': -1, 'high': 1}, ...], or chain.describe()['filters'], so that a "
                          "checkpoint and an export can rebuild them; a filter of your own is type: module:Class")
    entries = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else list(spec)
    try:
        chain = build_chain(entries, action_dim, obs_dim, control_dt)
    except ValueError as exc:  # the message names the entry and key, e.g. "safety.filters[0] (box): high: ..."
        raise ConfigError(str(exc)) from None
    for i, f in enumerate(chain.filters):  # episodes end one env copy at a time: each row restarts on its own
        if f.episode_state and type(f)._reset_rows is SafetyFilter._reset_rows:
            raise ConfigError(f"safety.filters[{i}] ({entries[i].get('type')}): {type(f).__name__} keeps per-episode "
                              f"state {f.episode_state} but does not say how to restart one row of it (define "
                              "_reset_rows): training restarts a row as each env copy's episode ends")
    return chain


def read_cost(info: dict[str, Any], key: str, num_envs: int, device: torch.device) -> torch.Tensor | None:
    """The step's cost as float32 [N] on ``device``, from ``info[key]`` or ``info["task"][key]``; None if absent."""
    if key in info:
        value, where = info[key], f"info[{key!r}]"
    elif isinstance(info.get("task"), dict) and key in info["task"]:
        value, where = info["task"][key], f"info['task'][{key!r}]"
    else:
        return None
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(np.asarray(value, dtype=np.float32))
    value = value.to(device=device, dtype=torch.float32).reshape(-1)
    if value.shape[0] != num_envs:
        raise ContractError(f"{where} (safety.cost_key) holds {value.shape[0]} values; expected one cost per env copy "
                             f"({num_envs})")
    return value


def missing_cost(key: str, env: BatchedEnv) -> Exception:
    """The ConfigError for passivity-aware training on a task whose step info holds no cost under ``key``."""
    from robo_rl.validation import ConfigError

    return ConfigError(
        f"safety.passivity_aware=true needs a per-step cost in the step info under safety.cost_key={key!r} "
        f"(info[{key!r}] or info['task'][{key!r}]), but task {env.task_id} ({env.backend} backend) reports none. "
        "Set safety.cost_key to the key the task uses, or train on a task that reports its cost "
        "(e.g. env.id=robo_rl/ContactMaze-v0)"
    )


class SafetyLayer(BatchedEnv):
    """A batched env with the training-time safety filters in front and per-episode cost accounting behind."""

    def __init__(self, env: BatchedEnv, filters: Any = (), cost_key: str = "cost", require_cost: bool = False,
                 keep_episode_costs: bool = False) -> None:
        """``keep_episode_costs``: remember every finished episode's cost per env copy since the last reset
        (for evaluation, see ``counted_costs``)."""
        self.env = env
        self.num_envs = env.num_envs
        self.observation_space, self.action_space = env.observation_space, env.action_space
        self.device, self.task_id, self.backend = env.device, env.task_id, env.backend
        self.dt, self.render_mode = env.dt, env.render_mode
        self.cost_key, self.require_cost = cost_key, require_cost
        self.chain = build_filter_chain(filters, env.act_dim, env.obs_dim, env.dt or None) if len(filters) else None
        self._filters = filters  # (to read checkpoints that hold a chain per env copy)
        self.episode_cost = torch.zeros(env.num_envs, dtype=torch.float64, device=env.device)
        self.obs: torch.Tensor | None = None  # the observation the filters see with the next actions
        self.keep_episode_costs = keep_episode_costs
        self.finished_costs: list[list[float]] = [[] for _ in range(env.num_envs)]
        self._step_checked = False

    def __getattr__(self, name: str) -> Any:  # backend extras (physics_params, ...) pass through
        if name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)

    def reset(self, seed: int | None = None) -> torch.Tensor:
        self.obs = self.env.reset(seed=seed)
        check_reset_obs(self.env, self.obs)  # a user env's float64 or misshapen observations, named here
        self.episode_cost.zero_()
        self.finished_costs = [[] for _ in range(self.num_envs)]
        if self.chain is not None:
            self.chain.reset(self.num_envs)
        return self.obs

    def filter(self, actions: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The env copies' actions through the chain, a row each; returns the filtered actions and how many changed."""
        raw = self._float32_actions(actions)
        obs = self.obs.detach().cpu().numpy().astype(np.float64, copy=False)  # full precision: positions, energies
        out, report = self.chain(raw, obs)
        changed = int(np.count_nonzero(report.intervened | report.fallback))
        return torch.from_numpy(out).to(actions.device if isinstance(actions, torch.Tensor) else self.device), changed

    def _float32_actions(self, actions: Any) -> np.ndarray:
        """``actions`` as the float32 [N, act_dim] numpy array the chains filter, taking what the env takes (any real
        dtype, bfloat16 too, or an array; ``BatchedEnv.actions_float32``); NaN/Inf stay, for the filters to replace.
        What the env refuses for its type or shape is refused with the env's message, before a chain reads a row past
        the batch's end or a scalar as a row."""
        return self.env.actions_float32(actions).detach().cpu().numpy()

    def step(self, actions: torch.Tensor) -> StepResult:
        interventions = 0
        if self.chain is not None:
            if self.obs is None:
                raise RuntimeError(f"{self.task_id}: reset the env before stepping it (the filters read the observation)")
            actions, interventions = self.filter(actions)
        result = self.env.step(actions)
        if not self._step_checked:  # once: a user env's step output keeps the contract (dtypes, info keys)
            check_step_result(self.env, result)
            self._step_checked = True
        obs, reward, terminated, truncated, info = result
        done = info["episode"]["mask"]  # [N] bool: the episodes that ended in this step
        if self.chain is not None and bool(done.any()):
            self.chain.reset_rows(done.cpu().numpy())  # the next action of these copies starts a new episode
        cost = read_cost(info, self.cost_key, self.num_envs, self.device)
        if cost is None and self.require_cost:
            raise missing_cost(self.cost_key, self.env)
        if cost is not None:
            cost = self.checked_cost(cost, info)
            self.episode_cost += cost
            info["episode"]["cost"] = torch.where(done, self.episode_cost, 0.0).float()
            if bool(done.any()):
                if self.keep_episode_costs:
                    for i in done.nonzero().flatten().tolist():
                        self.finished_costs[i].append(float(self.episode_cost[i]))
                self.episode_cost[done] = 0.0
        info["safety"] = {"actions": actions, "cost": cost, "interventions": interventions}
        self.obs = obs
        return StepResult(obs, reward, terminated, truncated, info)

    def checked_cost(self, cost: torch.Tensor, info: dict[str, Any]) -> torch.Tensor:
        """The step's cost with the diverged simulations' entries set to 0, or FloatingPointError on a NaN/Inf
        (ValueError on a negative cost where the learner needs one, ``require_cost``).

        A simulation the backend reset because its physics diverged (``info["diverged"]``) has no valid step:
        the backend zeroes its reward and replay drops its row, so its cost (computed from the broken state,
        possibly NaN) counts as 0 too, and the run goes on. Any other non-finite cost would make the episode
        costs (and the cost critic's targets) NaN: training and evaluation stop, naming the task and the key.
        """
        diverged = info.get("diverged")
        if diverged is not None:
            diverged = torch.as_tensor(diverged, device=cost.device).reshape(-1).bool()
            if bool(diverged.any()):
                cost = torch.where(diverged, torch.zeros_like(cost), cost)
        if not all_finite(cost):
            bad = (~torch.isfinite(cost)).nonzero().flatten().tolist()
            raise FloatingPointError(
                f"{self.task_id}: non-finite cost (NaN/Inf, or beyond float32's range) under safety.cost_key="
                f"{self.cost_key!r} for env copies {bad[:10]} (values {cost[bad[:3]].tolist()}): the episode costs and "
                "a passivity-aware run's cost critic would turn NaN; fix the task's cost, or point safety.cost_key "
                "at a finite per-step cost")
        if self.require_cost and bool((cost < 0).any()):
            bad = (cost < 0).nonzero().flatten().tolist()
            raise ContractError(
                f"{self.task_id}: negative cost under safety.cost_key={self.cost_key!r} for env copies {bad[:10]} "
                f"(values {cost[bad[:3]].tolist()}): passivity-aware training bounds a per-step cost >= 0 (the positive "
                "work the controller does), which a negative one would pay back; point safety.cost_key at a "
                "non-negative cost (ContactMaze: 'cost', not 'injected_energy'), or report max(cost, 0) from the task")
        return cost

    def counted_costs(self, env_index: list[int]) -> list[float] | None:
        """Costs of the episodes ``evaluate`` counted (its ``env_index``: the copy of each, in finishing order).

        ``evaluate`` counts each copy's first episodes, so the k-th count of copy i is copy i's k-th finished
        episode. None when the env reports no cost.
        """
        if not any(self.finished_costs):
            return None
        seen = [0] * self.num_envs
        costs = []
        for i in env_index:
            costs.append(self.finished_costs[i][seen[i]])
            seen[i] += 1
        return costs

    def render(self, index: int = 0) -> np.ndarray:
        return self.env.render(index)

    def close(self) -> None:
        self.env.close()

    # The running cost sums and each copy's filter state (the previous output, an energy tank's level) travel
    # with the simulator state (the runner restores ``obs``), so a resumed run filters its next command as an
    # unbroken one would; without a simulator state the episodes, and the filters, start afresh.
    def state_dict(self) -> dict[str, Any] | None:
        state = self.env.state_dict()
        if state is None:
            return None
        return {**state, "safety.episode_cost": self.episode_cost.clone(),
                "safety.filters": [self.chain.state_dict()] if self.chain is not None else []}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        cost = state.pop("safety.episode_cost", None)
        chains = state.pop("safety.filters", None)  # not in checkpoints before 2026-12-04: the filters start afresh
        if isinstance(chains, list) and len(chains) > 1 and self.chain is not None:
            chains = [self._one_chain_state(chains)]  # a chain per env copy (checkpoints before 2026-12-07)
        expected = 0 if self.chain is None else 1
        if chains is not None and (not isinstance(chains, list) or len(chains) != expected):
            raise ValueError(f"the saved safety filter state holds {len(chains) if isinstance(chains, list) else chains!r} "
                             f"chains, this run {expected}")
        self.env.load_state_dict(state)
        if cost is not None:
            self.episode_cost.copy_(torch.as_tensor(cost))
        if chains:
            self.chain.load_state_dict(chains[0])

    def _one_chain_state(self, rows: list[Any]) -> dict[str, Any]:
        """The state of one chain over the env copies from the states of a chain per copy (each of one row), as
        checkpoints before 2026-12-07 hold them: each is loaded (and so checked) into a chain of its own, and their
        rows stacked, a row without a previous output as NaN (``SafetyFilter.reset_rows``)."""
        if len(rows) != self.num_envs:
            raise ValueError(f"the saved safety filter state holds {len(rows)} chains, this run {self.num_envs} env copies")
        chains = []
        for saved in rows:
            chain = build_filter_chain(self._filters, self.env.act_dim, self.env.obs_dim, self.env.dt or None)
            chain.load_state_dict(saved)
            if chain.batch not in (None, 1) or chain._initial is not None:
                raise ValueError("a saved per-copy safety filter state holds more than one row, or a reset command")
            chains.append(chain)
        merged = build_filter_chain(self._filters, self.env.act_dim, self.env.obs_dim, self.env.dt or None)
        merged.reset(self.num_envs)
        merged._stepped = any(c._stepped for c in chains)
        for j, f in enumerate(merged.filters):
            f._stepped = any(c.filters[j]._stepped for c in chains)
            for name in f.episode_state:
                values = [getattr(c.filters[j], name) for c in chains]
                like = next((v for v in values if v is not None), None)
                if like is None:
                    setattr(f, name, None)
                    continue
                setattr(f, name, np.concatenate([np.full_like(like, np.nan) if v is None else v for v in values]))
        return merged.state_dict()
