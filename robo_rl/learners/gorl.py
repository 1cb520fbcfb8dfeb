"""GoRL: decouple optimization from generation (a latent Gaussian policy + a generative decoder).

The policy is ``policies.heads.latent.LatentDecoderHead``: z ~ pi_latent(z|s), a = g(s, z).
Training alternates two timescales:
  * fast: RL on the latent policy with the decoder frozen.
      - ``GoRL`` (algo=gorl, the default): PPO, the decoder inside the "environment" (rollouts store
        z, its log-probability and V(s); the env receives g(s, z));
      - ``GoRLSAC`` (algo=gorl_sac): SAC with a critic Q(s, a) on the env's actions (replay stores
        what was executed, so the critic stays valid across refits); the actor loss
        alpha log pi(z|s) - min_i Q_i(s, g(s, z)) is differentiated through the frozen decoder, and the
        entropy is the latent policy's;
  * slow, between stages (GoRL: ``stages`` equal parts of the run, refit after every stage but the
    last; or every ``refit_every`` updates): refit the decoder by supervision at collected states,
    with z from the fixed prior N(0, I) (flow matching or DDPM loss), on the executed actions there
    (the pairs collected since the last refit) or on the current policy's actions at the newest
    ``dataset_size`` states (``refit_on``, default ``policy`` for both: a stage's executed actions
    average over the stage's policies, and on Hopper refitting on them did worse, 10 seeds; with a
    flow decoder each policy action is paired
    with the prior latent drawn from the same noise, see ``LatentDecoderHead.coupled_sample``),
    so that under the prior it reproduces what the latent policy learned; then reset the latent
    policy to the prior and continue (the actions it produces are, to the decoder's accuracy, the
    same as before the refit). GoRL (PPO) resets by re-centring (``recenter_latent``, the default): the
    decoder reads z = (u - m(s)) / std with m a frozen copy of the latent's mean network at the refit,
    so z ~ N(0, I) there while the latent policy, its network and its optimizer's state go on unchanged
    (Hopper, 20 seeds: the refits' cost against a run without them, -260 with the zero reset, gone);
    ``recenter_latent=false`` zeroes the latent's output layer and clears its Adam moments (and GoRL-SAC's
    squashed latent is always reset that way). GoRL (PPO) keeps the latent's std through the reset by default
    (``keep_latent_std``): its prior is N(0, diag(std^2)) and the decoder reads z = u / std, the same
    decoded policy, but PPO's steps keep their size relative to the policy's spread; a reset to std 1
    made every later step ~std times smaller (Hopper: approx KL 0.006 and 0.002 in the second and third
    stages against PPO's 0.011 and 0.007).
A flow decoder starts as the identity on [-1, 1] (its velocity output is initialized to zero), so
the first stage is plain PPO with clipped actions (SAC: squashed latents, clipped).
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import torch

from envs.resources import usable_cpus
from policies.heads import LatentDecoderHead, PolicyHead
from policies.normalizers import RunningMeanStd
from robo_rl.learners.base import Batch, Learner
from robo_rl.learners.optim import FusedAdam
from robo_rl.learners.ppo import PPO
from robo_rl.learners.sac import SAC
from robo_rl.storage.rollout import RolloutBatch

log = logging.getLogger("robo_rl")


class RefitStopped(Exception):
    """A SIGINT/SIGTERM arrived during a decoder refit (``DecoderRefit.refit`` catches it)."""


def refit_updates(total_updates: int, refit_every: int | None, stages: int | None) -> range:
    """The updates after which GoRL refits its decoder in a run of ``total_updates``: every ``refit_every``, or
    without it after each of ``stages`` equal parts (the last the shortest) but the last; never after the final one."""
    every = refit_every if refit_every is not None else max(1, -(-total_updates // int(stages)))
    return range(every, total_updates, every)


def require_latent_head(policy: PolicyHead, algo: str) -> LatentDecoderHead:
    if not isinstance(policy, LatentDecoderHead):
        raise ValueError(f"algo={algo} optimizes a latent policy and decodes it: use policy=latent (got {policy.name!r})")
    return policy


class DecoderRefit:
    """GoRL's slow timescale, shared by the PPO and SAC variants: keep the newest collected (s, a) pairs,
    refit the decoder at those states from the latent's prior (N(0, I), or L tanh(N(0, I)) for a squashed
    latent; see ``LatentDecoderHead.prior_sample``), reset the latent policy to that prior. The refit's
    targets are the current policy's actions at those states (``refit_on=policy``; the window of states
    runs on across refits) or the executed ones (``refit_on=executed``; the pairs since the last refit).

    Subclasses define ``latent_optimizer()``: the optimizer whose Adam moments a latent reset clears.
    """

    policy: LatentDecoderHead
    name: str
    keep_latent_std = False  # GoRL (PPO) sets it from its config; a squashed latent (GoRL-SAC) cannot keep its std
    recenter_latent = False  # GoRL (PPO) sets it from its config; GoRL-SAC's squashed latent is reset to the prior

    def _init_refit(self, policy: LatentDecoderHead, refit_every: int | None, refit_epochs: int,
                    refit_batch_size: int, decoder_lr: float, dataset_size: int, reset_latent: bool, refit_on: str,
                    refit_redraw: bool, refit_threads: int) -> None:
        for key, value, ok, rule in (("refit_every", refit_every, refit_every is None or refit_every >= 1, ">= 1"),
                                     ("refit_epochs", refit_epochs, refit_epochs >= 0, ">= 0"),
                                     ("refit_batch_size", refit_batch_size, refit_batch_size >= 1, ">= 1"),
                                     ("dataset_size", dataset_size, dataset_size >= 1, ">= 1"),
                                     ("refit_threads", refit_threads, refit_threads >= 0, ">= 0 (0: all CPUs)"),
                                     ("decoder_lr", decoder_lr, decoder_lr > 0, "> 0")):
            if not ok:
                raise ValueError(f"algo.{key}={value}: must be {rule}")
        if refit_epochs == 0 and reset_latent:
            raise ValueError("algo.refit_epochs=0 with algo.reset_latent=true would restart the latent policy at the "
                             "prior at every refit without refitting the decoder, discarding each stage's learning: "
                             "set algo.refit_epochs >= 1, or algo.reset_latent=false (a fixed decoder)")
        if refit_on not in ("policy", "executed"):
            raise ValueError(f"algo.refit_on={refit_on!r}: choose policy (the current policy's actions at the "
                             "collected states) or executed (the actions taken)")
        self.refit_on = refit_on
        self.refit_redraw = bool(refit_redraw)
        self.refit_threads = int(refit_threads)
        self.refit_every, self.refit_epochs, self.refit_batch_size = refit_every, refit_epochs, refit_batch_size
        self.reset_latent = reset_latent
        self.decoder_opt = FusedAdam(policy.decoder.parameters(), decoder_lr)
        self._decoder_params = list(policy.decoder.parameters())
        if policy.decoder.name == "flow":  # identity decoder at the start: zero velocity
            with torch.no_grad():
                policy.decoder.net.out.weight.zero_()
                policy.decoder.net.out.bias.zero_()
        register = self.register_buffer  # type: ignore[attr-defined]
        register("data_obs", torch.zeros(dataset_size, policy.obs_dim))
        register("data_actions", torch.zeros(dataset_size, policy.act_dim))
        register("data_size", torch.zeros((), dtype=torch.int64))
        register("data_pos", torch.zeros((), dtype=torch.int64))
        register("num_refits", torch.zeros((), dtype=torch.int64))
        # a refit a signal interrupted, to do before the next iteration, with the observation statistics it had
        register("refit_pending", torch.zeros((), dtype=torch.bool))
        self.refit_obs_stats = RunningMeanStd((policy.obs_dim,))  # (reset when no refit is pending)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # checkpoints saved before 2026-12-05 hold neither: nothing was ever left pending then
        state_dict.setdefault(prefix + "refit_pending", torch.zeros_like(self.refit_pending))
        for key, value in RunningMeanStd((self.policy.obs_dim,)).state_dict().items():
            state_dict.setdefault(f"{prefix}refit_obs_stats.{key}", value)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]

    def work_deferred(self) -> bool:
        return bool(self.refit_pending)

    def before_iteration(self) -> dict[str, torch.Tensor]:
        """The refit a SIGINT/SIGTERM interrupted (see ``refit``), before anything else in the resumed run. It runs
        with the observation statistics it was stopped under (the interrupted update's rollout was added to them
        after it), so it is the refit an uninterrupted run made."""
        if not bool(self.refit_pending):
            return {}
        norm = self.policy.obs_norm
        now = copy.deepcopy(norm.state_dict())
        norm.load_state_dict({f"stats.{key}": value for key, value in self.refit_obs_stats.state_dict().items()})
        try:
            metrics = self.refit()
        finally:
            norm.load_state_dict(now)
        if not bool(self.refit_pending):
            self.refit_obs_stats.reset()
        return metrics

    def _store(self, obs: torch.Tensor, actions: torch.Tensor | None) -> None:
        """Keep (s, a) pairs for the next refit (``actions=None``: the states only, for refit_on=policy)."""
        n, cap = obs.shape[0], self.data_obs.shape[0]
        if n > cap:  # keep the newest
            obs, n = obs[-cap:], cap
            actions = None if actions is None else actions[-cap:]
        idx = (torch.arange(n, device=obs.device) + self.data_pos) % cap
        self.data_obs[idx] = obs.to(self.data_obs.dtype)
        if actions is not None:
            self.data_actions[idx] = actions.to(self.data_actions.dtype)
        self.data_pos.copy_((self.data_pos + n) % cap)
        self.data_size.copy_(torch.clamp(self.data_size + n, max=cap))

    def after_pretraining(self) -> None:
        """Pretraining on demonstrations fitted the decoder from the prior (as a refit does): restart the
        latent policy at the prior, so the policy decodes to the demonstrations' distribution."""
        self.policy.reset_latent_to_prior()

    @torch.no_grad()
    def refit_targets(self, size: int, teacher: LatentDecoderHead | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The actions [size, A] the decoder is fitted to in one refit epoch (``refit_redraw``) or in all of a
        refit's epochs, and the prior latents paired with them (None: drawn independently at each minibatch).

        ``refit_on=policy``: a fresh sample of the policy as it was before the refit (``teacher``, a frozen copy:
        the decoder being fitted is part of the policy) at every collected state, paired for a flow decoder with
        the prior latent drawn from the same noise (``LatentDecoderHead.coupled_sample``), so that after the
        latent's reset to the prior the policy is, to the decoder's accuracy, the one that was being optimized,
        noise draw by noise draw. The collected actions lag behind it (a replay window's were taken by older
        policies; PPO's over the whole stage, as the latent policy learned), so refitting on them moves the
        policy back toward their average.
        ``refit_on=executed``: the executed actions (what a safety filter let through)."""
        if teacher is None:
            return self.data_actions[:size], None
        pairs = []
        for obs in self.data_obs[:size].split(4096):  # (4 s per 100k states on Hopper: a signal need not wait)
            self._stop_point()
            pairs.append(teacher.coupled_sample(obs))
        actions = torch.cat([a for a, _ in pairs])
        return actions, None if pairs[0][1] is None else torch.cat([z for _, z in pairs])

    def refit(self) -> dict[str, torch.Tensor]:
        """Fit the decoder to the collected states' actions under the prior, then reset the latent policy.

        It runs on ``refit_threads`` torch threads (0: all the CPUs this process may use, ``usable_cpus``),
        whatever the run trains with: GoRL (PPO) trains on one (its 64x64 networks gain nothing from more, and the
        simulator has the other cores), but nothing else runs during a refit, whose large matmuls do use them (on 2
        cores a default Hopper refit took 15.4 s against 26.5 s on one: README, cost section). The result is
        deterministic for a given thread count; other counts may differ at float rounding.

        A refit takes seconds to minutes. When a SIGINT/SIGTERM asks the run to stop (``stop_requested``), it gives
        way at its next minibatch (or block of 4,096 target draws): the decoder and its optimizer go back to their
        state before it, the latent policy is left as it was, and ``refit_pending`` has the refit done first when
        the run resumes (``before_iteration``). The checkpoint then holds the policy as it was before the refit,
        and is written at once instead of after the refit. Returns {} then."""
        threads, previous = self.refit_threads or usable_cpus(), torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return self._refit(threads)
        finally:
            torch.set_num_threads(previous)

    def _refit(self, threads: int) -> dict[str, torch.Tensor]:
        size = int(self.data_size)
        start = time.perf_counter()
        number = int(self.num_refits) + 1
        log.info(f"{self.name}: refitting the decoder (refit {number}): {self.refit_epochs} epoch(s) over "
                 f"{size:,} states, targets from {'the current policy' if self.refit_on == 'policy' else 'the executed actions'}"
                 f" ({threads} torch thread{'s' if threads > 1 else ''})")
        # what a refit stopped by a signal goes back to; with the random state too, a resumed run's refit is the one
        # an uninterrupted run made
        saved = self._refit_start_state()
        # refit_on=policy: the targets come from the pre-refit policy, frozen in a copy, drawn for each epoch
        # (refit_redraw; drawing all epochs' first held refit_epochs x size x 2A floats: 270 MB for Humanoid at
        # GoRL-SAC's defaults) or once
        teacher = copy.deepcopy(self.policy).requires_grad_(False) if self.refit_on == "policy" else None
        probe = self.data_obs[torch.linspace(0, max(size - 1, 0), min(size, 4096)).long()]  # spread over the window
        before = self._deterministic_unit(probe)
        # a running sum, not a list of the minibatches' losses: thousands of live scalar tensors, each allocated
        # between a minibatch's large temporaries, kept ~130-240 KB of heap apiece resident (+350 MB per refit at
        # the algo=gorl defaults on Hopper, growing with dataset_size x refit_epochs)
        loss_sum, batches = self.data_obs.new_zeros((), dtype=torch.float64), 0
        written_out = self.policy.fits_imitation_gradients()
        try:
            for epoch in range(self.refit_epochs):
                if epoch == 0 or self.refit_redraw:
                    actions, noise = self.refit_targets(size, teacher)
                for idx in torch.randperm(size).split(self.refit_batch_size):
                    self._stop_point()
                    paired = None if noise is None else noise[idx]
                    if written_out:  # the flow decoder's backward written out: the same step, without autograd
                        loss, grads = self.policy.imitation_gradients(self.data_obs[idx], actions[idx], noise=paired)
                    else:
                        loss = self.policy.imitation_loss(self.data_obs[idx], actions[idx], noise=paired)
                        grads = torch.autograd.grad(loss, self._decoder_params)
                    self.decoder_opt.apply(grads)
                    loss_sum += loss.detach()
                    batches += 1
        except RefitStopped:
            self._return_to(saved)
            self.refit_pending.fill_(True)
            self.refit_obs_stats.load_state_dict(self.policy.obs_norm.stats.state_dict())
            log.info(f"{self.name}: decoder refit {number} stopped for the signal after {batches:,} minibatch(es) "
                     f"({time.perf_counter() - start:.0f} s); the checkpoint keeps the decoder from before it, "
                     "and a resumed run does the refit first")
            return {}
        if self.reset_latent and self.recenter_latent:  # the latent policy and its optimizer go on as they were
            self.policy.recenter(self._kept_std(probe))
        elif self.reset_latent:
            self.policy.reset_latent_to_prior(self._kept_std(probe))
            # Stale Adam moments of the reset parameters are cleared; the step count (shared with GoRL-PPO's value
            # net) is kept, so bias correction is ~1 and the reset policy's first updates are up to ~3x lr per
            # coordinate, settling over ~1/(1-beta2) steps: a warm restart that moves the policy off the prior
            # fast. Measured against a fresh optimizer (moments and step count of every parameter restarted) on
            # Hopper-v5 at the defaults, seeds 0-4: this does better (README, GoRL section).
            state = self.latent_optimizer().state  # type: ignore[attr-defined]
            for p in self.policy.latent.parameters():
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in state.get(p, {}):
                        state[p][key].zero_()
        # how far the refit (and the reset) moved the deterministic action at the collected states, in the box's
        # unit scale: near 0 when the decoder under the prior reproduces the policy it was fitted on (GoRL's premise)
        shift = (self._deterministic_unit(probe) - before).abs().mean() if size else self.data_obs.new_zeros(())
        if self.refit_on == "executed":  # a stage's own (s, a) pairs; refit_on=policy keeps its newest states, whose
            self.data_size.zero_()       # targets are drawn afresh from the policy: wider coverage at no staleness
            self.data_pos.zero_()
        self.num_refits += 1
        self.refit_pending.fill_(False)
        log.info(f"{self.name}: decoder refit {int(self.num_refits)} took {time.perf_counter() - start:.0f} s; it moved the "
                 f"deterministic action by {float(shift):.3f} (unit scale) at the collected states")
        return {"decoder_loss": (loss_sum / batches).float() if batches else self.data_obs.new_zeros(()),
                "refit_action_shift": shift, "refits": self.num_refits.float()}

    def _stop_point(self) -> None:
        if self.stop_requested():
            raise RefitStopped

    def _refit_start_state(self) -> tuple[Any, ...]:
        """The decoder's weights, its optimizer's state and the random state, for ``_return_to``."""
        device = self.data_obs.device
        return ([p.detach().clone() for p in self._decoder_params], copy.deepcopy(self.decoder_opt.state_dict()),
                torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)

    def _return_to(self, saved: tuple[Any, ...]) -> None:
        params, opt_state, rng, cuda_rng = saved
        with torch.no_grad():
            torch._foreach_copy_(self._decoder_params, params)
        self.decoder_opt.load_state_dict(opt_state)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, self.data_obs.device)

    @torch.no_grad()
    def _kept_std(self, probe: torch.Tensor) -> torch.Tensor | None:
        """The latent policy's std [z_dim] (averaged over ``probe``'s states if it depends on them), which a
        reset keeps as its prior's scale (``keep_latent_std``); None: a reset to std 1."""
        if not self.keep_latent_std or probe.shape[0] == 0:
            return None
        _, log_std = self.policy.latent.distribution(self.policy.observations(probe))
        std = log_std.exp().mean(0)
        if not bool(torch.isfinite(std).all()):  # (the reset would refuse it as a bad argument, a ValueError)
            raise FloatingPointError(f"the latent policy's std is {std.tolist()} at the refit (diverged weights?)")
        return std

    @torch.no_grad()
    def _deterministic_unit(self, obs: torch.Tensor) -> torch.Tensor:
        if obs.shape[0] == 0:
            return obs.new_zeros(0, self.policy.act_dim)
        return self.policy.to_unit(self.policy.act(obs, deterministic=True))


class GoRL(DecoderRefit, Learner):
    """GoRL with PPO on the latent policy (algo=gorl)."""

    kind = "on_policy"
    name = "gorl"

    def __init__(
        self,
        policy: PolicyHead,
        refit_every: int | None = None,
        stages: int = 3,
        refit_epochs: int = 5,
        refit_batch_size: int = 256,
        decoder_lr: float = 3e-4,
        dataset_size: int = 200_000,
        reset_latent: bool = True,
        refit_on: str = "policy",
        latent_kl_coef: float = 0.0,
        keep_latent_std: bool = True,
        recenter_latent: bool = True,
        refit_redraw: bool = True,
        refit_threads: int = 0,
        **ppo_options: Any,
    ) -> None:
        """``stages``: the run is split into this many stages of equal length (in PPO updates; the runner
        announces the run's length through ``plan``) with a decoder refit after each but the last, so the
        last stage's latent policy trains until the end. ``refit_every``, when given, replaces the stages:
        a refit every that many updates (never after the run's final update).
        ``latent_kl_coef``: weight of a penalty KL(pi_latent(.|s) || prior) in the PPO loss, which keeps the
        latent policy near the decoder's prior between refits (the GoRL paper's regularizer; with it,
        ``reset_latent=false`` refits without restarting the latent policy).
        ``keep_latent_std``: a reset keeps the latent's std as its prior's scale (see the module docstring).
        ``recenter_latent``: the reset re-centres the decoder's input on the latent's mean instead of zeroing the
        latent's output layer (``LatentDecoderHead.recenter``; see the module docstring).
        ``refit_redraw``: with ``refit_on="policy"``, a refit draws new targets from the policy for every epoch
        (true, the default) or once, for all its epochs (false: 40% less of a refit's time at the defaults, and
        lower returns on Hopper within noise, README).
        ``refit_threads``: torch threads for a refit (0: all CPUs; see ``refit``)."""
        super().__init__()
        policy = require_latent_head(policy, self.name)
        if stages < 1:
            raise ValueError(f"algo.stages={stages}: the run needs at least 1 stage (1 = no decoder refit)")
        self.keep_latent_std = bool(keep_latent_std)
        self.recenter_latent = bool(recenter_latent)
        if self.recenter_latent and reset_latent and latent_kl_coef > 0:
            raise ValueError("algo.latent_kl_coef > 0 pulls the latent policy toward a prior centred at 0, and "
                             "algo.recenter_latent=true (the default) centres it on the latent's mean at the last "
                             "refit: set algo.recenter_latent=false to use the penalty")
        if self.recenter_latent and reset_latent and policy.anchor is None:  # (the first refit would fail, a stage in)
            key = "policy.squash" if policy.latent.squash else "policy.state_dependent_std"
            raise ValueError(f"{key}=true: algo.recenter_latent=true (the default) re-centres an unsquashed latent with "
                             f"a state-independent std at each refit; set {key}=false, or algo.recenter_latent=false")
        self.stages = stages if refit_every is None else None  # None: refit_every replaces the stages
        self.total_updates: int | None = None
        self._init_refit(policy, refit_every, refit_epochs, refit_batch_size, decoder_lr, dataset_size, reset_latent,
                         refit_on, refit_redraw, refit_threads)
        self.policy = policy
        self.ppo = PPO(policy.latent, prior_kl_coef=latent_kl_coef, **ppo_options)
        self.gamma, self.gae_lambda = self.ppo.gamma, self.ppo.gae_lambda
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"ppo": self.ppo.opt, "decoder": self.decoder_opt}

    def latent_optimizer(self) -> torch.optim.Optimizer:
        return self.ppo.opt

    # -- what the on-policy runner calls -----------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.ppo.act(obs)  # latent z, log pi(z|s), V(s)

    def env_action(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        # clipped as every learner's (Learner.env_action): the decoder's from_unit rounds a saturated action one
        # float32 step outside a box like [0.1, 2.7]
        return self.policy.clip_action(self.policy.decode(obs, actions))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.ppo.value(obs)

    def set_lr(self, lr: float) -> None:
        self.ppo.set_lr(lr)

    def plan(self, total_updates: int) -> None:
        self.total_updates = total_updates
        refits = refit_updates(total_updates, None if self.stages is not None else self.refit_every, self.stages)
        self.refit_every = refits.step
        when = (f"after updates {', '.join(f'{n:,}' for n in refits)}" if 0 < len(refits) <= 6
                else f"every {self.refit_every:,} updates" if refits else "none")
        source = "" if self.stages is not None else " (set by algo.refit_every; algo.stages is not used)"
        log.info(f"gorl: {total_updates:,} PPO updates in {len(refits) + 1} stage(s); decoder refits: {when}{source}")

    def update(self, rollout: RolloutBatch) -> dict[str, torch.Tensor]:
        if self.refit_every is None:
            raise RuntimeError(f"GoRL splits the run into {self.stages} stages and needs its length: call "
                               "learner.plan(total_updates) before the first update (robo-rl's runner does), or "
                               "pass refit_every")
        # the decoder was frozen during the rollout, so decoding its latents gives the executed actions
        # (only refit_on=executed reads them)
        executed = self.policy.decode(rollout.obs, rollout.actions) if self.refit_on == "executed" else None
        self._store(rollout.obs, executed)
        scale = self.policy.latent_scale  # the KL penalty's prior (latent_kl_coef): the one the latent was reset to
        self.ppo.prior_scale = None if bool((scale == 1.0).all()) else scale
        metrics = self.ppo.update(rollout)
        self.num_updates += 1
        done = int(self.num_updates)
        if done % self.refit_every == 0 and (self.total_updates is None or done < self.total_updates):
            metrics.update(self.refit())  # (a refit after the final update would only reset the latent policy)
        return metrics


class GoRLSAC(DecoderRefit, SAC):
    """GoRL with SAC on the latent policy (algo=gorl_sac); see the module docstring.

    The runner hands every executed (s, a) to ``observe``; the decoder is refit at those states, on the
    current policy's actions there (``refit_on=policy``) or on the executed ones (``refit_on=executed``).
    ``refit_every`` counts gradient updates (env steps at utd=1).
    """

    name = "gorl_sac"

    def __init__(
        self,
        policy: PolicyHead,
        refit_every: int = 20_000,
        refit_epochs: int = 100,
        refit_batch_size: int = 256,
        decoder_lr: float = 3e-4,
        dataset_size: int = 20_000,
        reset_latent: bool = True,
        refit_on: str = "policy",
        refit_redraw: bool = True,
        refit_threads: int = 0,
        **sac_options: Any,
    ) -> None:
        policy = require_latent_head(policy, self.name)
        if refit_every is None:  # (GoRL-PPO's None means "from the stages"; SAC has no stages)
            raise ValueError("algo.refit_every=None: algo=gorl_sac refits its decoder every algo.refit_every gradient "
                             "updates and has no stages; give a whole number >= 1 (default 20,000)")
        if not policy.latent.squash:
            raise ValueError("algo=gorl_sac needs a squashed latent policy (an exact, reparameterized log-probability "
                             "inside the latent bounds): set policy.squash=true, the algo=gorl_sac default")
        SAC.__init__(self, policy, actor=policy.latent, **sac_options)
        self._init_refit(policy, refit_every, refit_epochs, refit_batch_size, decoder_lr, dataset_size, reset_latent,
                         refit_on, refit_redraw, refit_threads)
        self.total_updates: int | None = None  # from plan(): no refit after the final update

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {**super().optimizers(), "decoder": self.decoder_opt}

    def latent_optimizer(self) -> torch.optim.Optimizer:
        return self.actor_opt

    def observe(self, obs: torch.Tensor, actions: torch.Tensor) -> None:
        self._store(obs, actions)

    def critic_loss(self, batch: Batch, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        policy = self.policy
        with torch.no_grad():  # soft target with the decoded next action and the latent's entropy
            z, logp_z = policy.latent.sample(batch.next_obs)
            next_unit = policy.decode_unit(batch.next_obs, z)
            q_next = self.critic_target(policy.obs_norm(batch.next_obs), next_unit).min(0).values
            target = batch.rewards + self.gamma * (1.0 - batch.terminated) * (q_next - alpha * logp_z)
        q = self.critic(policy.obs_norm(batch.obs), policy.to_unit(batch.actions))
        return 0.5 * (q - target).square().mean(1).sum(), q.detach().mean()

    def actor_loss(self, obs: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # alpha log pi(z|s) - min_i Q_i(s, g(s, z)): the gradient reaches the latent policy through the decoder
        policy = self.policy
        z, logp_z = policy.latent.sample(obs)
        q = self.critic(policy.obs_norm(obs), policy.decode_unit(obs, z), detach=True).min(0).values
        return (alpha * logp_z - q).mean(), logp_z.detach()

    def plan(self, total_updates: int) -> None:
        self.total_updates = total_updates

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        metrics = super().update(batch)
        done = int(self.num_updates)
        if done % self.refit_every == 0 and (self.total_updates is None or done < self.total_updates):
            metrics.update(self.refit())  # (after the final update a refit would only reset the latent policy)
        return metrics
