"""The policy-head contract (contract 2, README "Design").

A learner never assumes a Gaussian. A head declares what it can do with capability flags and
implements the calls it supports; each learner states the capabilities it needs and refuses a
head that lacks them at construction, with a message saying what to choose instead.

    act(obs, deterministic=False) -> actions          inference, no grad, within the action bounds
    sample(obs) -> actions, log_prob or None           with grad; reparameterized if the flag says so
    log_prob(obs, actions) -> [B]                      where the likelihood is tractable
    imitation_loss(obs, actions, weights=None) -> []   the head's own supervised objective
    entropy(obs) -> [B]                                exact where known, else a one-sample estimate
    act_unit(obs, deterministic=False) -> [B, A]       act's actions in the unit box (default: to_unit(act))

Observations are raw env observations: the head owns the observation normalizer (``obs_norm``)
so that an exported head includes it. Actions are in the env's units and bounds.

``act`` (the acting path: exploration, evaluation, candidates) raises FloatingPointError rather than
return a NaN action (``checked``: one reduction). The training-time ``sample`` of the Gaussian,
deterministic and mixture heads runs inside (compiled) losses and is not checked: a NaN there shows
in the update's metrics, which the runner checks, as it checks every action it sends to an env.
"""

from __future__ import annotations

import abc
import inspect
import math
import numbers
import reprlib
from typing import Any

import numpy as np
import torch
from torch import nn

from policies.normalizers import ObsNormalizer


class UnsupportedByHead(TypeError):
    """A learner asked a head for something the head does not provide (see its capability flags)."""


#: what every head's constructor takes first; ``build_head`` supplies them, they are not options
_POSITIONAL = ("self", "obs_dim", "action_low", "action_high", "obs_norm")


def count_option(key: str, value: object, least: int, why: str) -> int:
    """The integer option ``policy.<key>``, refused with ``why`` unless it is a whole number >= ``least``
    (``int()`` would turn 2.5 steps into 2 without a word; 4.0 is read as 4, as the config layer reads it)."""
    whole = isinstance(value, numbers.Integral) or (isinstance(value, numbers.Real) and float(value).is_integer())
    if isinstance(value, bool) or not whole or value < least:
        raise ValueError(f"policy.{key}={value!r}: {why}")
    return int(value)


def action_bound(head: str, which: str, value: Any) -> np.ndarray:
    """``value`` (a head's ``action_low`` or ``action_high``) as a float32 array, rounded into the box where float32
    has no number for it: float32(0.3) is above 0.3, so a float64 task's bound 0.3 becomes the float32 number below
    it, and every action clipped to the head's bounds is still inside the task's box once cast to float64. A
    ValueError naming ``which`` when it is not real numbers (numpy's own error, "could not convert string to float",
    named neither)."""
    try:
        array = np.asarray(value)
    except ValueError:  # a ragged list
        array = None
    if array is None or array.dtype.kind not in "fiu":  # strings, None, objects, complex, bool flags
        raise ValueError(f"the {head} head: {which} must be real numbers, one bound per action dimension (e.g. "
                         f"env.action_space.{'low' if which == 'action_low' else 'high'}), got {reprlib.repr(value)}")
    with np.errstate(over="ignore"):  # beyond float32's range: inf, refused by the head as not finite
        bound = array.astype(np.float32)
    if array.dtype.itemsize > 4 or array.dtype.kind in "iu":  # (int32 too: float32 holds whole numbers to 2**24 only)
        wide = array.astype(np.float64)
        if which == "action_low":  # (an inf stays one: nextafter(inf) is float32's largest number)
            outside = np.isfinite(bound) & (bound.astype(np.float64) < wide)
            bound = np.where(outside, np.nextafter(bound, np.float32(np.inf)), bound)
        else:
            outside = np.isfinite(bound) & (bound.astype(np.float64) > wide)
            bound = np.where(outside, np.nextafter(bound, np.float32(-np.inf)), bound)
    return np.asarray(bound, dtype=np.float32)


class PolicyHead(nn.Module, abc.ABC):
    """A policy head (contract 2, README "Design"; see this module's docstring): raw observations [B, obs_dim] in,
    actions [B, act_dim] in env units out, log-probabilities [B] as densities of the unit action ``to_unit(a)``
    (SAC's target entropy -|A| is stated in it; an unsquashed Gaussian or mixture with ``unit_actions=False``, as
    runs saved before 2026-12-05 rebuild it, and GoRL's latent give densities of ``a``, or z). Subclass it (the constructor takes obs_dim, action_low,
    action_high and an ObsNormalizer), implement act, sample and imitation_loss (and log_prob where tractable),
    and set the flags."""

    #: sample() returns actions differentiable w.r.t. the parameters (pathwise gradients: SAC, TD3)
    reparameterized: bool = False
    #: log_prob() is exact (PPO's ratio, SAC's entropy term)
    tractable_log_prob: bool = False
    #: actions drawn at random in act(deterministic=False); False for deterministic heads
    stochastic: bool = True
    #: number of future actions predicted per call (1: one action per observation)
    action_chunk: int = 1

    name: str = "head"
    #: act() checks its actions for NaN/Inf; off only for a head whose owner checks what it makes of them
    #: (the latent head's Gaussian over z: the decoded action is checked, and a NaN z decodes to NaN)
    check_actions: bool = True

    @property
    def described(self) -> str:
        """How this head's messages name it: "the flow head"."""
        return f"the {self.name} head"

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """The keyword options of this head's constructor, in order: what ``build_head`` passes on."""
        return tuple(name for name, p in inspect.signature(cls.__init__).parameters.items()
                     if name not in _POSITIONAL and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))

    def __init__(self, obs_dim: int, action_low: np.ndarray, action_high: np.ndarray, obs_norm: ObsNormalizer) -> None:
        super().__init__()
        low = torch.as_tensor(action_bound(self.name, "action_low", action_low))
        high = torch.as_tensor(action_bound(self.name, "action_high", action_high))
        if low.shape != high.shape or low.dim() != 1:
            raise ValueError(f"action bounds must be 1-D and of equal shape, got {low.shape} and {high.shape}")
        if not bool(torch.isfinite(low).all() and torch.isfinite(high).all() and (high > low).all()):
            raise ValueError(f"action bounds must be finite with high > low, got low={low}, high={high}")
        self.obs_dim = obs_dim
        self.act_dim = int(low.shape[0])
        self.obs_norm = obs_norm
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    # -- the contract ---------------------------------------------------------------------------
    @abc.abstractmethod
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Actions [B, act_dim] within the action bounds, without gradient."""

    @abc.abstractmethod
    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Actions [B, act_dim] with gradient, and their log-probability [B] (None if intractable)."""

    @abc.abstractmethod
    def imitation_loss(self, obs: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The head's supervised objective on (obs, action) pairs, optionally weighted per sample."""

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        raise UnsupportedByHead(f"{self.described} has no tractable log-probability")

    def entropy(self, obs: torch.Tensor) -> torch.Tensor:
        """One-sample estimate -log pi(a|s); heads with a closed form override it."""
        _, logp = self.sample(obs)
        if logp is None:
            raise UnsupportedByHead(f"{self.described} has no tractable log-probability, so no entropy")
        return -logp

    def evaluate_actions(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi(a|s) and entropy together (PPO's update); heads may share one forward pass."""
        return self.log_prob(obs, actions), self.entropy(obs)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic action: what an export of this head computes."""
        return self.act(obs, deterministic=True)

    # -- helpers for subclasses -----------------------------------------------------------------
    def observations(self, obs: torch.Tensor) -> torch.Tensor:
        """``obs`` as ``act`` takes it, a float tensor [B, obs_dim] (other real dtypes are cast to the head's
        float type), else a TypeError/ValueError saying what to pass: a 1-D observation would broadcast into
        a batch of the wrong size in some heads instead of failing."""
        if not isinstance(obs, torch.Tensor):
            raise TypeError(f"{self.described} acts on a float tensor obs [B, {self.obs_dim}], got "
                            f"{type(obs).__name__} (torch.as_tensor(obs, dtype=torch.float32))")
        if obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            one = " (obs[None] for one observation)" if obs.dim() == 1 and obs.shape[0] == self.obs_dim else ""
            raise ValueError(f"{self.described} acts on obs [B, {self.obs_dim}], got shape {list(obs.shape)}{one}")
        return self._in_float(obs, "acts on a float tensor obs, got")

    def _in_float(self, x: torch.Tensor, refusal: str) -> torch.Tensor:
        """``x`` in the head's float type (other real dtypes cast), else a TypeError "the <head> head <refusal> <dtype>":
        a cast would drop a complex tensor's imaginary part or read bool flags as 0 and 1."""
        if x.dtype == self.action_low.dtype:
            return x
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{self.described} {refusal} {x.dtype}")
        return x.to(self.action_low.dtype)

    def action_layouts(self) -> tuple[tuple[int, ...], ...]:
        """The per-observation shapes ``paired`` accepts for ``actions`` (one action [act_dim]; chunk heads add theirs)."""
        return ((self.act_dim,),)

    def paired(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(obs, actions)`` cast to the head's float type (as ``observations`` casts ``obs``: float64 observations or
        actions from numpy met float32 weights in a bare "mat1 and mat2 must have the same dtype"); raise unless
        ``obs`` [B, obs_dim] and ``actions`` [B, act_dim] (or a chunk head's [B, chunk, act_dim]) are
        one batch of pairs: a [1, A] or [A] action would broadcast against every observation, a [B, 1] one against
        every action dimension and a [B, 1, A] one into a [B, B] log-prob, each a plausible but wrong loss or log-prob."""
        if not isinstance(obs, torch.Tensor) or not isinstance(actions, torch.Tensor):
            raise TypeError(f"{self.described} takes float tensors obs and actions, got {type(obs).__name__} and "
                            f"{type(actions).__name__} (torch.as_tensor(x, dtype=torch.float32))")
        obs = self._in_float(obs, "takes float tensors obs and actions, got obs of")
        actions = self._in_float(actions, "takes float tensors obs and actions, got actions of")
        layouts = self.action_layouts()
        if (obs.dim() != 2 or obs.shape[1] != self.obs_dim or actions.dim() < 2 or actions.shape[0] != obs.shape[0]
                or tuple(actions.shape[1:]) not in layouts):
            shapes = " or ".join(str(["B", *layout]).replace("'", "") for layout in layouts)
            one = "one action or chunk" if len(layouts) > 1 else "one action"
            raise ValueError(f"{self.described} takes obs [B, {self.obs_dim}] with actions {shapes} ({one} per "
                             f"observation), got obs {list(obs.shape)} and actions {list(actions.shape)}")
        return obs, actions

    def checked(self, actions: torch.Tensor, also: torch.Tensor | None = None, what: str = "actions",
                obs: torch.Tensor | None = None) -> torch.Tensor:
        """``actions`` once known to be finite (and ``also``: network outputs they were chosen by), else a
        FloatingPointError naming the head: a diverged head must not hand NaN to an env or a robot. ``obs``: the
        observations they were computed from, read only then, so that a NaN fed in is named as the cause
        (``non_finite_error``) rather than the weights.

        A NaN or Inf makes the sum non-finite, so one reduction and one scalar read decide (what matters at
        batch 1, in the acting loop); the exact test runs only then, since a sum of large finite values can
        overflow. Skipped while torch.compile / torch.export records a graph, where a Python-side read would
        break it (the eager call still checks). ``forward``, an export's computation, does not check: the
        exporter checks its outputs itself."""
        if not self.check_actions or torch.compiler.is_compiling():
            return actions
        total = actions.sum() if also is None else actions.sum() + also.sum()
        if not math.isfinite(float(total)) and not (bool(torch.isfinite(actions).all())
                                                    and (also is None or bool(torch.isfinite(also).all()))):
            raise self.non_finite_error(what, obs)
        return actions

    def non_finite_error(self, what: str, obs: torch.Tensor | None = None) -> FloatingPointError:
        """The error for non-finite ``what`` out of this head: blamed on the observations when ``obs`` holds a NaN
        or Inf (a sensor's NaN is not a diverged network), else on the weights."""
        if obs is not None:
            bad = ~torch.isfinite(obs).flatten(1).all(1)
            if bool(bad.any()):
                rows = torch.nonzero(bad).flatten().tolist()
                listed = ", ".join(map(str, rows[:8])) + (f", ... ({len(rows)} rows)" if len(rows) > 8 else "")
                return FloatingPointError(f"{self.described} produced non-finite {what} from non-finite "
                                          f"observations (NaN/Inf in row(s) {listed} of obs): check the observations")
        return FloatingPointError(f"{self.described} produced non-finite {what} (diverged weights?)")

    def compiled_act(self, example_obs: torch.Tensor, deterministic: bool = True, atol: float = 1e-5):
        """``act(obs, deterministic)`` compiled with torch.compile (inductor, C++ wrapper) for low-latency acting
        at the batch size of ``example_obs``: at batch 1 a call then runs as one C++ graph instead of one Python
        dispatch per operation (benchmarks/export_latency.py, the ``torch compiled`` columns). Compiles now
        (tens of seconds the first time, then cached by torch) and checks the result against the eager ``act``
        on ``example_obs`` (deterministic only: a compiled graph draws its own random numbers), raising
        RuntimeError on a mismatch above ``atol`` (times the action half-range). The returned function reads the
        head's current weights and statistics at every call (training may go on); its actions are checked for
        NaN/Inf like ``act``'s, but the networks' outputs the actions were chosen by (a critic's scores) are not.
        A different batch size compiles once more. Needs a C++ compiler (gcc or clang) on the machine."""
        obs = self.observations(example_obs)

        def act(o: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return self.act(o, deterministic)

        compiled = torch.compile(act, options={"cpp_wrapper": True})
        try:
            got = compiled(obs)
        except Exception as exc:  # inductor's own errors: no compiler, an unsupported operation
            raise RuntimeError(f"torch.compile could not compile the act of {self.described} ({type(exc).__name__}: "
                               f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}); it needs a "
                               "C++ compiler (gcc or clang); act() itself works without one") from exc
        if deterministic:
            error = float(((got - act(obs)).abs() / self.action_scale).max())
            if not error <= atol:
                raise RuntimeError(f"the compiled act of {self.described} differs from the eager one by {error:.3g} "
                                   f"(times the action half-range) on example_obs, more than atol={atol:g}")

        def run(o: torch.Tensor) -> torch.Tensor:
            return self.checked(compiled(o), obs=o)

        return run

    def clip_action(self, actions: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(actions, self.action_high), self.action_low)

    @torch.no_grad()
    def act_unit(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """``act``'s actions in the unit box [-1, 1] (``to_unit``), for a learner that adds its exploration noise
        there (TD3). A head that computes its actions in the unit box first returns them without the round trip
        through env units."""
        return self.to_unit(self.act(obs, deterministic))

    def to_unit(self, actions: torch.Tensor) -> torch.Tensor:
        """Env-unit actions -> [-1, 1]."""
        return (actions - self.action_bias) / self.action_scale

    def from_unit(self, unit: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> env-unit actions."""
        return unit * self.action_scale + self.action_bias

    def capabilities(self) -> dict[str, object]:
        return {
            "reparameterized": self.reparameterized,
            "tractable_log_prob": self.tractable_log_prob,
            "stochastic": self.stochastic,
            "action_chunk": self.action_chunk,
        }


# The learners that train each packaged head (robo-rl's algo= names), for the advice of a refusal
TRAINED_BY = {
    "gaussian": "algo=sac, ppo, expo or parl",
    "deterministic": "algo=td3",
    "mixture": "algo=ppo, expo or parl",
    "diffusion": "algo=expo or parl",
    "flow": "algo=expo or parl",
    "latent": "algo=gorl or gorl_sac (PPO / SAC on the latent Gaussian, with a generative decoder)",
}


def suited_learners(head: PolicyHead, but: str | None = None) -> str | None:
    """The packaged learners a head's flags suit, as advice ("algo=sac or algo=ppo"), ``but`` left out; None if none:
    for a head of one's own, which ``TRAINED_BY`` does not list."""
    suits = ["td3"] if head.reparameterized and not head.stochastic else []
    suits += ["sac"] if head.reparameterized and head.tractable_log_prob and head.stochastic else []
    suits += ["ppo"] if head.tractable_log_prob and head.stochastic else []
    suits += ["expo", "parl"] if head.stochastic else []
    return " or ".join(f"algo={name}" for name in suits if name != but) or None


def require_capabilities(learner: str, head: PolicyHead, needs: dict[str, str]) -> None:
    """Fail at start-up when a head lacks what a learner needs. ``needs`` maps flag -> why."""
    missing = [f"{flag} ({why})" for flag, why in needs.items() if not getattr(head, flag)]
    if missing:
        trained_by = TRAINED_BY.get(head.name) or suited_learners(head, but=learner)
        other = (f"train the {head.name} head with {trained_by}" if trained_by is not None else
                 "a learner made for this head (diffusion/flow/mixture heads train with algo=expo or algo=parl)")
        raise ValueError(
            f"algo={learner} cannot train the {head.name!r} head: it lacks {'; '.join(missing)}. "
            f"Pick a head that has it (e.g. policy=gaussian), or {other}."
        )
