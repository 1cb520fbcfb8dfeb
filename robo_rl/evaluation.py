"""Policy evaluation on a batched env: N episodes, deterministic by default, raw returns."""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Any, Callable, Iterator

import numpy as np
import torch

from envs import BatchedEnv
from envs.base import all_finite, check_reset_obs, check_step_result, same_device, unknown_next_state
from policies.heads import PolicyHead
from policies.heads.generative import ChunkExecutor


class EvaluationNotFinished(RuntimeError):
    """An evaluation's episodes did not end within its step budget (a task without a time limit, or a huge one)."""


class EvaluationStopped(Exception):
    """``evaluate``'s ``stop()`` asked it to stop (a run's SIGINT/SIGTERM) before its episodes were done: no result,
    as the mean of the episodes finished so far (the short ones first) is no evaluation. ``finished`` of
    ``episodes`` had ended."""

    def __init__(self, finished: int, episodes: int) -> None:
        super().__init__(f"evaluation stopped after {finished} of {episodes} episodes")
        self.finished, self.episodes = finished, episodes


@contextlib.contextmanager
def eval_mode(policy: torch.nn.Module) -> Iterator[None]:
    """``policy`` in eval mode, each of its modules' own mode put back after: a learner's head is in train mode, and a
    head with dropout or batch norm (a user's) would otherwise be evaluated with them on, unlike its export or
    ``load_run``'s policy, and left in eval mode would train without them."""
    modes = [(module, module.training) for module in policy.modules()]
    policy.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def policy_env_mismatch(policy: PolicyHead, env: BatchedEnv) -> str | None:
    """'<policy> acts on obs [3] with actions [1], <task> has obs [11] and actions [3]' when ``policy`` was built for
    other observation or action sizes than ``env``'s (it would fail at its first step, or in a matrix multiply), and
    '<policy> acts in the action box low=[-1.], high=[1.], <task>'s is low=[-2.], high=[2.]' when it was built for
    other action bounds (its unit actions would be scaled to another box without an error: a policy trained for
    [-2, 2] sending half its torques). None when it fits."""
    name = getattr(policy, "name", type(policy).__name__)
    sizes = getattr(policy, "obs_dim", None), getattr(policy, "act_dim", None)
    if None in sizes:
        return None
    if sizes != (env.obs_dim, env.act_dim):
        return (f"the {name} head acts on obs [{sizes[0]}] with actions [{sizes[1]}], {env.task_id} has obs "
                f"[{env.obs_dim}] and actions [{env.act_dim}]")
    low, high = getattr(policy, "action_low", None), getattr(policy, "action_high", None)
    if not (isinstance(low, torch.Tensor) and isinstance(high, torch.Tensor)):
        return None
    box = [np.asarray(b, np.float64).reshape(-1) for b in (low.detach().cpu(), high.detach().cpu(),
                                                           env.action_space.low, env.action_space.high)]
    if all(np.allclose(ours, theirs, rtol=1e-6, atol=1e-6) for ours, theirs in zip(box[:2], box[2:])):
        return None  # equal up to float32 rounding of the bounds

    def shown(b: np.ndarray) -> str:
        return np.array2string(b, precision=4, separator=", ", threshold=8)

    return (f"the {name} head acts in the action box low={shown(box[0])}, high={shown(box[1])}, {env.task_id}'s is "
            f"low={shown(box[2])}, high={shown(box[3])}")


def device_mismatch(module: torch.nn.Module, device: torch.device | str, what: str) -> str | None:
    """'its weights are on cuda:0, <what> on cpu' when ``module`` (a head, a learner) is on another device than
    ``device`` (an env's tensors, the run's storage; torch's error at the first step would name neither); None when
    they agree (``envs.base.same_device``: cuda is the current CUDA device)."""
    weights = next((p.device for p in module.parameters()), None) if isinstance(module, torch.nn.Module) else None
    device = torch.device(device)
    if weights is None or same_device(weights, device):
        return None
    return f"its weights are on {weights}, {what} on {device}"


def _counted_transitions(recorded_steps: list[tuple], counted: list[tuple[int, int, int]]) -> dict[str, torch.Tensor]:
    """The counted episodes' stored transitions (``evaluate``'s ``record_transitions``), episode by episode in
    finishing order, as float32 CPU tensors [T, ...]; "costs" only when every one of them has its step's cost."""
    keys = ("obs", "actions", "rewards", "next_obs", "terminated", "costs")
    device = recorded_steps[0][0].device if recorded_steps else torch.device("cpu")
    spans = [(torch.arange(first, last + 1, device=device), i) for i, first, last in counted]
    step_idx = torch.cat([t for t, _ in spans]) if spans else torch.zeros(0, dtype=torch.long, device=device)
    env_idx = torch.cat([torch.full_like(t, i) for t, i in spans]) if spans else step_idx
    if any(s[6] is not None for s in recorded_steps):  # leave out the rows replay would not store
        stored = torch.stack([s[6] if s[6] is not None else torch.ones_like(s[4]) for s in recorded_steps])
        keep = stored[step_idx, env_idx]
        step_idx, env_idx = step_idx[keep], env_idx[keep]
    out = {}
    for j, key in enumerate(keys):
        if key == "costs":
            with_cost = torch.tensor([s[5] is not None for s in recorded_steps], dtype=torch.bool)
            if not bool(with_cost[step_idx.cpu()].all()) or not len(step_idx):
                break
        column = torch.stack([s[j] if s[j] is not None else torch.zeros_like(s[2]) for s in recorded_steps])
        out[key] = column[step_idx, env_idx].float().cpu()  # one copy of the kept rows
        del column
    return out


MAX_STEPS = 10_000_000  # env steps an evaluation may take (a task without a time limit whose episodes never end)


@torch.no_grad()
def evaluate(
    policy: PolicyHead,
    env: BatchedEnv,
    episodes: int,
    deterministic: bool = True,
    seed: int | None = None,
    max_steps: int = MAX_STEPS,
    record_episodes: int = 0,
    record_transitions: bool = False,
    frame_sink: Any = None,
    stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run ``episodes`` complete episodes and report their undiscounted returns and lengths.

    Episodes are spread evenly over the env copies (env i runs its share, in order), so short
    episodes are not over-represented the way "the first K to finish" would make them.
    The caller's RNG stream is left untouched. ``record_episodes > 0`` also returns ``frames``: env
    copy 0's first episodes, one frame per step starting with the initial state (the terminal state
    itself is not drawn: the env resets in the step that ends the episode). With ``frame_sink`` (a callable) the
    frames go to it as they are drawn instead (e.g. an ``envs.rendering.Mp4Writer``'s ``add``), so a long video
    never sits in memory: 1,000 480x480 frames are 690 MB.
    ``deterministic`` in the result is True for a head that does not sample (``policy.stochastic`` False), asked or not.
    The policy acts in eval mode (dropout and batch norm off, as exported), each module's mode put back after.
    ``record_transitions`` also returns ``transitions``: the counted episodes' (obs, executed
    actions, rewards, next_obs, terminated) as tensors, the arrays of a demonstrations file.
    A head that predicts action chunks runs ``execute`` actions of each chunk per query, as it was trained to.
    ``stop`` (a callable, e.g. a run's "a signal asked to stop") is asked before each step: True raises
    ``EvaluationStopped``, so that a long evaluation gives way to a SIGINT/SIGTERM instead of holding it up.
    """
    for name, value, least in (("episodes", episodes, 1), ("max_steps", max_steps, 1), ("record_episodes", record_episodes, 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise ValueError(f"evaluate: {name}={value!r} must be an integer >= {least}")  # 0 episodes: a mean of none
    if not isinstance(deterministic, (bool, np.bool_)):
        raise TypeError(f"evaluate: deterministic={deterministic!r} must be True (the mean action) or False (sampled)")
    if (mismatch := device_mismatch(policy, env.device, f"{env.task_id}'s tensors")) is not None:
        raise ValueError(f"evaluate: the policy does not act on the env's device: {mismatch}; move one of them "
                         "(policy.to(env.device), or a loaded run's env: build_env(cfg) after load_run(..., device=))")
    if (mismatch := policy_env_mismatch(policy, env)) is not None:
        raise ValueError(f"evaluate: {mismatch}; evaluate the policy on the task it was built for (a loaded run's: "
                         "robo_rl.build.build_env(cfg, randomize=False, safety=True))")
    n = env.num_envs
    chunks = ChunkExecutor(policy, n) if getattr(policy, "execute", 1) > 1 else None
    act = chunks.act if chunks is not None else policy.act
    quota = [episodes // n + (1 if i < episodes % n else 0) for i in range(n)]
    returns: list[float] = []
    lengths: list[int] = []
    env_index: list[int] = []
    done_count = [0] * n
    # torch.manual_seed seeds the CUDA generators too: keep the one a GPU policy samples from (untested: no GPU here)
    device = next((p.device for p in policy.parameters()), torch.device("cpu"))
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), eval_mode(policy):
        if seed is not None:
            torch.manual_seed(seed)
        obs = env.reset(seed=seed)
        check_reset_obs(env, obs)
        frames: list[Any] = []
        keep = frame_sink if frame_sink is not None else frames.append
        if record_episodes > 0:
            keep(env.render(0))
        recorded = 0
        steps = 0
        # record_transitions: each step's batch as the env returned it (no row by row: a tensor view per row and
        # field held ~3.6 KB per Hopper transition, 33x its numbers), and the counted episodes' spans of steps
        recorded_steps: list[tuple] = []  # (obs, executed actions, rewards, next_obs, terminated, costs, stored) [N]
        started = [0] * n  # per env copy: the step its current episode began at
        counted: list[tuple[int, int, int]] = []  # (env copy, first step, last step), in finishing order
        # the video may want more of env copy 0's episodes than its share: those are filmed, not counted
        while sum(done_count) < episodes or recorded < record_episodes:
            if stop is not None and stop():
                raise EvaluationStopped(sum(done_count), episodes)
            if not bool(torch.isfinite(obs).all()):
                raise FloatingPointError(f"evaluation env {env.task_id} returned a non-finite observation")
            # inside the box, as training's actions are (OffPolicyRunner, Learner.env_action): from_unit's float32
            # rounding puts a saturated action one step outside a box like [0.1, 2.7] (0.0999999)
            actions = policy.clip_action(act(obs, deterministic=deterministic))
            prev = obs
            result = env.step(actions)
            if steps == 0:  # a user env that breaks the contract: one line naming the part, not a KeyError
                check_step_result(env, result)
            obs, reward, terminated, truncated, info = result
            # a NaN/Inf reward would make the returns NaN, and a NaN terminal observation is as broken an env
            # (training stops on both): stop here, naming which, not with a "nan ± nan" evaluation
            for what, value in (("reward", reward), ("final observation", info["final_obs"])):
                if not all_finite(value):
                    raise FloatingPointError(f"evaluation env {env.task_id} returned a non-finite {what} "
                                             f"(episodes finished so far: {sum(done_count)} of {episodes})")
            ep = info["episode"]
            if chunks is not None:
                chunks.reset(terminated | truncated)  # a new episode starts with a new chunk
            if record_transitions:
                executed = info["safety"]["actions"] if "safety" in info else actions
                cost = info["safety"].get("cost") if "safety" in info else None  # a passivity-aware run's replay keeps it
                drop = unknown_next_state(info, terminated, truncated)  # as replay leaves them out
                recorded_steps.append((prev, executed, reward, info["final_obs"], terminated, cost,
                                       None if drop is None else ~drop))
            if recorded < record_episodes:
                if bool(ep["mask"][0]):
                    recorded += 1
                if recorded < record_episodes or not bool(ep["mask"][0]):
                    keep(env.render(0))
            for i in ep["mask"].nonzero().flatten().tolist():
                if done_count[i] < quota[i]:
                    returns.append(float(ep["return"][i]))
                    lengths.append(int(ep["length"][i]))
                    env_index.append(i)
                    done_count[i] += 1
                    counted.append((i, started[i], steps // n))
                started[i] = steps // n + 1
            steps += n
            if steps > max_steps:
                raise EvaluationNotFinished(
                    f"evaluation on {env.task_id} did not finish {episodes} episodes within {max_steps:,} env steps (episodes "
                    f"finished: {sum(done_count)}): its episodes are too long or never end; give the task a time limit "
                    "(env.max_episode_steps) or evaluate fewer episodes")
    mean = sum(returns) / len(returns)
    extra: dict[str, Any] = {"frames": frames} if record_episodes > 0 and frame_sink is None else {}
    if record_transitions:
        extra["transitions"] = _counted_transitions(recorded_steps, counted)
    std = math.sqrt(sum((r - mean) ** 2 for r in returns) / len(returns))
    return {
        "return_mean": mean,
        "return_std": std,
        "length_mean": sum(lengths) / len(lengths),
        "episodes": len(returns),
        "returns": returns,
        "lengths": lengths,
        "env_index": env_index,  # which env copy ran each episode (in finishing order)
        # what was evaluated: a head that does not sample (TD3's) acts deterministically whatever was asked, and
        # robo-rl compare would warn that such an eval.json mixes stochastic evaluations into deterministic ones
        "deterministic": bool(deterministic) or not getattr(policy, "stochastic", True),
        **extra,
    }
