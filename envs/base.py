"""The batched-environment contract every simulator backend keeps (contract 1, README "Design").

Learners and runners see every simulator (gymnasium, batched MuJoCo, GPU simulators) through
this one small, torch-native interface:

    env.num_envs, env.observation_space, env.action_space, env.device
    obs = env.reset(seed)                                   # [N, obs_dim]
    obs, reward, terminated, truncated, info = env.step(actions)   # actions: [N, act_dim]

``reset`` comes first: ``step``, ``render`` and ``state_dict`` before the first ``reset`` raise a RuntimeError on every
backend; ``load_state_dict`` of a saved state stands in for the reset (the episodes go on from that state). After
``close`` every method but ``physics_params`` (a read of the factors the env keeps) and ``close`` raises that RuntimeError.

Finished environments are reset inside ``step``; the returned ``obs`` row is then the first
observation of the new episode, and ``info["final_obs"]`` holds the observation the finished
episode ended in (for every other row it equals ``obs``), so a learner can always store
``(obs, action, reward, info["final_obs"], terminated)`` and bootstrap correctly on truncation.
``terminated`` (a true terminal state: no bootstrapping) and ``truncated`` (a time limit: do
bootstrap) are never merged.

``info["episode"]`` reports the episodes that finished in this step, with their undiscounted
return and length measured on the raw reward (before any reward normalization):
``{"return": [N] float32, "length": [N] int64, "mask": [N] bool}``.
"""

from __future__ import annotations

import abc
import functools
import math
import numbers
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch


def all_finite(x: torch.Tensor) -> bool:
    """No NaN/Inf in ``x``: one reduction and one scalar read decide when the sum is finite (the acting loop's case);
    the exact test runs only when it is not, since a sum of large finite values can overflow."""
    return math.isfinite(float(x.sum())) or bool(torch.isfinite(x).all())


class ContractError(ValueError):
    """An env broke its API: the batched-env contract (``check_step_result``, ``check_reset_obs``), or a gymnasium
    task's step/reset outputs (the gymnasium backend's checks). The message names the env and the part at fault; it
    is bad input, reported as such (not as the env's own error mid-run)."""


class WorkerDied(RuntimeError):
    """A simulator worker process exited without a Python error to forward (killed by a signal, e.g. the
    kernel's OOM killer, or crashed in native code); the message names the task and the exit code(s). Also raised
    by the calls after a task's own error in a worker, which gymnasium answers by shutting that worker down."""


class MissingDependency(ImportError):
    """A simulator, task or output format needs a package that is not installed; the message says which.

    The CLI reports it as a usage error (exit code 2) with that message, before any training.
    """


class StepResult(NamedTuple):
    obs: torch.Tensor  # [N, obs_dim] float32, first obs of the new episode where one ended
    reward: torch.Tensor  # [N] float32
    terminated: torch.Tensor  # [N] bool: the episode reached a terminal state
    truncated: torch.Tensor  # [N] bool: the episode was cut (time limit); bootstrap from final_obs
    info: dict[str, Any]  # "final_obs" [N, obs_dim], "episode" {return, length, mask}


class BatchedEnv(abc.ABC):
    """N copies of one task stepped together, with torch tensors in and out."""

    num_envs: int
    observation_space: gym.spaces.Box  # one environment's observation space
    action_space: gym.spaces.Box  # one environment's action space, finite bounds
    device: torch.device
    task_id: str  # e.g. "Hopper-v5", used in logs and run names
    backend: str  # the simulator backend's name, e.g. "gymnasium" or "mujoco"
    render_mode: str | None = None
    dt: float | None = None  # seconds of simulated time per step (the control period), if known
    #: the simulator allows one instance per process (Isaac Lab, Isaac Gym): robo-rl then evaluates on the
    #: training envs instead of building a second env, and they start new episodes after each evaluation
    one_per_process: bool = False

    @abc.abstractmethod
    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Reset every environment; env i is seeded with ``seed + i``. Returns obs [N, obs_dim] float32."""

    @abc.abstractmethod
    def step(self, actions: torch.Tensor) -> StepResult:
        """Apply actions [N, act_dim] (within ``action_space`` bounds) and auto-reset finished envs; after reset() only."""

    _closed = False
    #: True until the first reset() (or load_state_dict()): step() refuses to run before it. robo-rl's backends set it
    #: in __init__ and clear it in reset() and load_state_dict(); an env that does not (a user's subclass) is not checked
    _needs_reset = False

    def close(self) -> None:
        """Release worker processes, simulators and files; every method but physics_params() refuses to run after it."""
        self._closed = True

    def _release(self, *names: str) -> None:
        """For ``close()``: drop the attributes ``names`` (simulations, arrays bound to them, a renderer, closed first), so
        their memory and threads go now rather than when the env object itself is collected."""
        for name in names:
            value = self.__dict__.pop(name, None)
            if name.endswith("renderer") and value is not None:
                value.close()

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self.task_id}: this env was closed; make a new one (envs.make_env) to go on")

    def _refuse_step(self, call: str = "step()") -> None:
        """What every backend checks before a step (and a render or a snapshot, ``call``): the env is open and has been
        reset (or loaded from a snapshot). A step before the first reset ran from the unseeded state the env was built
        in (mujoco, mjwarp, isaac) or failed in gymnasium's wrappers (async: its worker quit); a render drew that state
        (mujoco, mjwarp) or raised gymnasium's ResetNeeded (async: in a worker, which gymnasium then shut down)."""
        self._refuse_if_closed()
        if self._needs_reset:
            raise RuntimeError(f"{self.task_id}: {call} before the first reset(); call env.reset(seed=...) first "
                               "(or load_state_dict() a saved state to continue from)")

    def render(self, index: int = 0) -> np.ndarray:
        """An RGB frame [H, W, 3] (uint8) of env copy ``index``; after reset() only."""
        self._refuse_if_closed()
        raise ValueError(f"the {self.backend} backend cannot render {self.task_id}")

    # Exact save/restore of the simulators, for resuming a run bit-for-bit. A backend that cannot
    # capture its state returns None from state_dict(); the runner then resets on resume and says so.
    def state_dict(self) -> dict[str, Any] | None:
        self._refuse_if_closed()
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._refuse_if_closed()
        raise ValueError(f"{type(self).__name__} cannot restore simulator state")

    @functools.cached_property
    def obs_dim(self) -> int:
        return int(np.prod(self.observation_space.shape))

    @functools.cached_property
    def act_dim(self) -> int:
        return int(np.prod(self.action_space.shape))

    def check_seed(self, seed: Any) -> int | None:
        """``seed`` for reset(): None (continue the generators) or an integer >= 0 (env i gets seed + i)."""
        self._refuse_if_closed()
        if seed is None:
            return None
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"{self.task_id}: reset(seed={seed!r}): the seed must be an integer >= 0, or None to "
                             "continue the environments' random streams")
        return int(seed)

    def check_actions_numpy(self, actions: torch.Tensor) -> np.ndarray:
        """check_actions for a CPU simulator: the actions as a float32 numpy array [N, act_dim].

        The common case (a float32 CPU tensor of the right shape, all finite) is checked in numpy, which
        costs a few microseconds less per step than torch's reduction; anything else goes through
        check_actions and its messages."""
        self._refuse_step()
        if (isinstance(actions, torch.Tensor) and actions.dtype == torch.float32 and actions.device.type == "cpu"
                and actions.shape == (self.num_envs, self.act_dim)):
            array = actions.detach().numpy()
            if math.isfinite(float(np.add.reduce(array, axis=None))):
                return array
        return self.check_actions(actions).detach().cpu().numpy()

    def check_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Validate a batch of actions: shape [N, act_dim], finite as float32. Returns float32 on self.device.
        Refuses to run on a closed env, or before its first reset()."""
        self._refuse_step()
        actions = self.actions_float32(actions)
        if not all_finite(actions):
            bad = (~torch.isfinite(actions)).any(dim=1).nonzero().flatten().tolist()
            raise ValueError(
                f"{self.task_id}: non-finite actions for envs {bad[:10]}; refusing to step the "
                "simulator with NaN/Inf, or values beyond float32's range (check the policy for diverged weights)"
            )
        return actions.to(device=self.device)

    def actions_float32(self, actions: Any) -> torch.Tensor:
        """check_actions' type and shape checks alone: ``actions`` (a tensor of any real dtype, or an array) as a float32
        tensor [N, act_dim] where it is, values beyond float32's range as inf. NaN/Inf are kept: the safety filters,
        which replace them, read actions through this (robo_rl.runners.safety.SafetyLayer)."""
        if not isinstance(actions, torch.Tensor):
            try:
                raw = np.asarray(actions)
                with np.errstate(over="ignore"):  # beyond float32: inf
                    array = np.asarray(raw, dtype=np.float32) if raw.dtype.kind in "fiu" else None
            except (TypeError, ValueError):
                raw = array = None
            if actions is None or array is None:
                got = f"an array of {raw.dtype}" if raw is not None and raw.dtype.kind in "cb" else type(actions).__name__
                raise TypeError(f"{self.task_id}: actions must be a float tensor (or array) of shape "
                                f"[{self.num_envs}, {self.act_dim}], got {got}")
            actions = torch.as_tensor(array)
        elif actions.is_complex() or actions.dtype == torch.bool:  # a cast would drop the imaginary part / mean 0, 1
            raise TypeError(f"{self.task_id}: actions must be a float tensor (or array) of shape "
                            f"[{self.num_envs}, {self.act_dim}], got a tensor of {actions.dtype}")
        expected = (self.num_envs, self.act_dim)
        if tuple(actions.shape) != expected:
            raise ValueError(
                f"{self.task_id}: actions have shape {tuple(actions.shape)}, expected {expected} "
                f"(num_envs={self.num_envs}, action dim={self.act_dim})"
            )
        # finiteness is checked after the cast to the simulation's float32: 1e300 in float64 is finite, but inf there
        return actions.to(dtype=torch.float32)

    def __enter__(self) -> "BatchedEnv":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def same_device(a: torch.device | str, b: torch.device | str) -> bool:
    """Whether tensors on ``a`` and on ``b`` are on one device. ``cuda`` without an index is the current CUDA
    device (torch puts its tensors there), so it equals ``cuda:N`` only when N is current; elsewhere (no CUDA
    here, other index-less types) a device without an index matches any of its type's."""
    a, b = (_indexed(torch.device(d)) for d in (a, b))
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _indexed(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _one_line(space: gym.Space) -> str:
    """``space`` as one line (numpy wraps the bounds of a long Box over several)."""
    return " ".join(str(space).split())


def check_box_spaces(task_id: str, observation_space: gym.Space, action_space: gym.Space) -> None:
    """Refuse tasks robo-rl's learners cannot handle, with a message saying why and what to do."""
    if not isinstance(action_space, gym.spaces.Box):
        kind = type(action_space).__name__
        if isinstance(action_space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)):
            fix = ("for discrete actions use a library made for them (e.g. stable-baselines3's DQN or PPO), or register "
                   "the task with a float Box and map it to the choices with gymnasium.wrappers.TransformAction")
        elif isinstance(action_space, (gym.spaces.Dict, gym.spaces.Tuple)):
            fix = ("if its parts are Boxes, flatten it: gymnasium.wrappers.TransformAction(env, lambda a: "
                   "gymnasium.spaces.unflatten(env.action_space, a), gymnasium.spaces.flatten_space(env.action_space))")
        else:
            fix = "register the task with a float Box action space"
        raise ValueError(f"{task_id}: action space is {kind} ({_one_line(action_space)}); robo-rl's learners are for "
                         f"continuous control and need a Box action space: {fix}")
    shown = _one_line(action_space)
    if not np.issubdtype(action_space.dtype, np.floating):
        raise ValueError(
            f"{task_id}: action space {shown} has an integer dtype ({action_space.dtype}); robo-rl's policies "
            "output float actions, which a cast would truncate toward zero. Register the task with a float Box, or "
            "wrap it with gymnasium.wrappers.TransformAction(env, lambda a: np.rint(a).astype(int), "
            "gymnasium.spaces.Box(low, high, shape, np.float32)) (see README, Your own tasks)")
    low = np.asarray(action_space.low, dtype=np.float64).reshape(-1)
    high = np.asarray(action_space.high, dtype=np.float64).reshape(-1)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        # gymnasium's ClipAction keeps infinite bounds and RescaleAction refuses them: neither helps here
        raise ValueError(
            f"{task_id}: action space {shown} has infinite bounds; robo-rl's policies need finite ones to "
            "scale their outputs to. Register the task with a bounded Box, or wrap it with "
            "gymnasium.wrappers.TransformAction(env, lambda a: a, gymnasium.spaces.Box(low, high, shape, np.float32)) "
            "with the range the task really uses")
    if not low.size:
        raise ValueError(f"{task_id}: action space {shown} has no dimension to act in (its shape holds a 0); robo-rl's "
                         "policies need at least one")
    # the policies map [-1, 1] onto [low, high] with the half-range (high - low) / 2, in float32
    fixed = np.flatnonzero(high <= low)
    if fixed.size:
        raise ValueError(
            f"{task_id}: action space {shown} has low == high in action dimension(s) {fixed.tolist()[:10]} (flattened "
            "index); a dimension that can take one value only leaves the policy nothing to scale its output to. "
            "Give the task a Box without them and set their values inside it, e.g. gymnasium.wrappers.TransformAction("
            "env, lambda a: np.insert(a, index, value), gymnasium.spaces.Box(low_without, high_without))")
    with np.errstate(over="ignore"):
        width = high.astype(np.float32) - low.astype(np.float32)
    if not np.all(np.isfinite(width)):
        raise ValueError(
            f"{task_id}: action space {shown} is wider than float32 can hold (high - low overflows in dimension(s) "
            f"{np.flatnonzero(~np.isfinite(width)).tolist()[:10]}); register the task with the range it really uses, "
            "or wrap it with gymnasium.wrappers.TransformAction(env, lambda a: a, gymnasium.spaces.Box(low, high, "
            "shape, np.float32))")
    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
        if (isinstance(observation_space, gym.spaces.Box) and len(observation_space.shape) in (2, 3)
                and observation_space.dtype == np.uint8):
            raise ValueError(
                f"{task_id}: observation space {_one_line(observation_space)} is an image; robo-rl's policies are "
                "MLPs on a flat state vector: give the task a state observation (or image features from your own "
                "encoder, through gymnasium.wrappers.TransformObservation); gymnasium.wrappers.FlattenObservation "
                "would feed raw pixels to an MLP")
        raise ValueError(
            f"{task_id}: observation space {_one_line(observation_space)} is not a flat Box; wrap the env with "
            "gymnasium.wrappers.FlattenObservation first"
        )
    if observation_space.shape[0] == 0:
        raise ValueError(f"{task_id}: observation space {_one_line(observation_space)} is empty; robo-rl's policies "
                         "need at least one observation dimension (a constant one, for a task that observes nothing)")


def check_reset_obs(env: "BatchedEnv", obs: Any) -> None:
    """Raise a ValueError naming the env unless ``obs`` (what ``env.reset`` returned) is a float32 tensor
    [N, obs_dim], as the batched-env contract asks. Called by the runners and ``evaluate`` at every reset."""
    if not (isinstance(obs, torch.Tensor) and obs.dtype == torch.float32 and tuple(obs.shape) == (env.num_envs, env.obs_dim)):
        got = f"a tensor of {obs.dtype} {list(obs.shape)}" if isinstance(obs, torch.Tensor) else type(obs).__name__
        raise ContractError(f"{env.task_id} ({type(env).__name__}): reset() returned {got}; the batched-env contract "
                             f"(envs/base.py) needs a torch.float32 tensor of shape {[env.num_envs, env.obs_dim]} (.float())")


def check_step_result(env: "BatchedEnv", result: tuple) -> None:
    """Raise a ValueError naming the env and the part at fault unless ``result`` (what ``env.step`` returned) keeps
    the contract: obs [N, obs_dim] and info["final_obs"] float32, reward [N] float32, terminated and truncated [N]
    bool, info["episode"] with "return" [N], "length" [N] and "mask" [N] bool. Called once per env by the
    runners and ``evaluate`` (a user env's int 0/1 flags would index rows instead of masking them; float64
    observations failed in the replay buffer's copy)."""
    n, name = env.num_envs, f"{env.task_id} ({type(env).__name__})"
    try:
        obs, reward, terminated, truncated, info = result
    except (TypeError, ValueError):
        raise ContractError(f"{name}: step() must return (obs, reward, terminated, truncated, info), got "
                             f"{type(result).__name__}") from None
    episode = info.get("episode") if isinstance(info, dict) else None
    parts = {"obs": (obs, (n, env.obs_dim), torch.float32), "reward": (reward, (n,), torch.float32),
             "terminated": (terminated, (n,), torch.bool), "truncated": (truncated, (n,), torch.bool),
             'info["final_obs"]': (info.get("final_obs") if isinstance(info, dict) else None, (n, env.obs_dim),
                                   torch.float32)}
    if isinstance(episode, dict):
        parts['info["episode"]["mask"]'] = (episode.get("mask"), (n,), torch.bool)
        parts['info["episode"]["return"]'] = (episode.get("return"), (n,), None)
        parts['info["episode"]["length"]'] = (episode.get("length"), (n,), None)
    for what, (value, shape, dtype) in parts.items():
        ok = isinstance(value, torch.Tensor) and tuple(value.shape) == shape and (
            value.dtype == dtype if dtype is not None else value.is_floating_point() or what.endswith('"length"]'))
        if not ok:
            got = (f"a tensor of {value.dtype} {list(value.shape)}" if isinstance(value, torch.Tensor)
                   else "nothing" if value is None else type(value).__name__)
            raise ContractError(f"{name}: step() returned {what} as {got}; the batched-env contract (envs/base.py) "
                                 f"needs a {dtype or 'float'} tensor of shape {list(shape)}"
                                 + (" (0/1 flags: .bool())" if dtype == torch.bool else " (.float())" if dtype else ""))
    if not isinstance(episode, dict):
        raise ContractError(f'{name}: step() info has no "episode" entry; the batched-env contract (envs/base.py) needs '
                             'info["episode"] = {"return": [N] float, "length": [N] int, "mask": [N] bool} for the '
                             "episodes that ended in the step (envs.base.EpisodeTracker keeps the sums)")


class EpisodeTracker:
    """Undiscounted return and length of the running episode of each env (raw rewards)."""

    def __init__(self, num_envs: int) -> None:
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.lengths = np.zeros(num_envs, dtype=np.int64)

    def reset(self) -> None:
        self.returns[:] = 0.0
        self.lengths[:] = 0

    def step(self, reward: np.ndarray, done: np.ndarray) -> dict[str, np.ndarray]:
        """Add one step; returns the finished episodes' stats (zero where not done) and restarts them."""
        self.returns += reward
        self.lengths += 1
        n = len(self.returns)
        if not done.any():  # most steps: nothing finished
            return {"return": np.zeros(n, np.float32), "length": np.zeros(n, np.int64), "mask": np.zeros(n, bool)}
        finished = {
            "return": np.where(done, self.returns, 0.0).astype(np.float32),
            "length": np.where(done, self.lengths, 0),
            "mask": np.asarray(done, dtype=bool).copy(),
        }
        self.returns[done] = 0.0
        self.lengths[done] = 0
        return finished

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"ep_return": self.returns.copy(), "ep_length": self.lengths.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.returns[:] = np.asarray(state["ep_return"])
        self.lengths[:] = np.asarray(state["ep_length"])


def on_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` (made on the CPU, e.g. from numpy) on ``device``: itself on the CPU, without a ``.to`` call per step."""
    return t if device.type == "cpu" else t.to(device)


class LazyTensors(dict):
    """A step's task info terms (``info["task"]``), each converted to a tensor on ``device`` when first read: most
    steps nobody reads them. Reads through ``[]``, ``get``, ``items`` and ``values`` all hand out tensors."""

    def __init__(self, arrays: dict[str, Any], device: torch.device) -> None:
        super().__init__(arrays)
        self._device = device

    def __getitem__(self, key: str) -> torch.Tensor:
        value = super().__getitem__(key)
        if not isinstance(value, torch.Tensor):
            value = on_device(torch.from_numpy(np.asarray(value)), self._device)
            super().__setitem__(key, value)
        return value

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return self[key] if key in self else default

    def items(self):  # type: ignore[override]
        return ((k, self[k]) for k in self.keys())

    def values(self):  # type: ignore[override]
        return (self[k] for k in self.keys())


def episode_to_torch(finished: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: on_device(torch.from_numpy(v), device) for k, v in finished.items()}


def unknown_next_state(info: dict[str, Any], terminated: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor | None:
    """[N] steps whose true next state is unknown, or None: a time-out of an Isaac-style env (these APIs return no
    terminal observation, final_obs is the state before the step) and a simulation reset after its physics
    diverged (its final_obs is the last finite observation, its reward 0). Stored, either would be a transition
    back to its own state; replay and recorded demonstrations leave them out."""
    drop = None
    if info.get("final_obs_is_previous") and bool(truncated.any()):
        drop = truncated & ~terminated
    diverged = info.get("diverged")
    if diverged is not None and bool(diverged.any()):
        diverged = torch.as_tensor(diverged, device=terminated.device)
        drop = diverged if drop is None else drop | diverged
    return drop
