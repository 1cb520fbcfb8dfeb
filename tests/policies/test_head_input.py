"""Bad input to the policy heads: unknown options, mistyped counts and diverged weights fail loudly, naming
what to change, instead of being ignored or handing NaN actions on."""

import dataclasses
import re

import numpy as np
import pytest
import torch

from policies import HEADS, ObsNormalizer, build_head

LOW, HIGH = -np.ones(2), np.ones(2)
#: the smallest networks each head builds with, and a short sampling chain
SMALL = {
    "gaussian": {"hidden_sizes": (8,)},
    "deterministic": {"hidden_sizes": (8,)},
    "mixture": {"hidden_sizes": (8,), "components": 3},
    "diffusion": {"hidden_sizes": (16, 16), "train_steps": 20, "inference_steps": 2},
    "flow": {"hidden_sizes": (16, 16), "steps": 2},
    "latent": {"hidden_sizes": (8,), "decoder_hidden": (16, 16), "decoder_steps": 2},
}


def head(name, **options):
    return build_head(name, 3, LOW, HIGH, **{**SMALL[name], **options})


def poison(module, value=float("nan")):
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(value)


# -- 1. unknown keyword options ----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(HEADS))
def test_an_unknown_option_names_the_key_and_the_heads_options(name):
    with pytest.raises(TypeError) as info:
        head(name, stepz=4)
    message = str(info.value)
    assert f"the {name} head has no option 'stepz'" in message
    assert f"it takes {', '.join(HEADS[name].options())}" in message  # what to use instead


def test_a_near_miss_is_pointed_at_and_every_unknown_key_is_listed():
    with pytest.raises(TypeError, match=r"no options 'stepz' \(did you mean 'steps'\?\), 'colour'; it takes"):
        head("flow", stepz=4, colour="red")


@pytest.mark.parametrize("name", list(HEADS))
def test_the_head_classes_themselves_take_no_unknown_keywords(name):
    # the root: no constructor swallows keywords (``**_``), so a direct construction fails too
    from policies.normalizers import ObsNormalizer

    with pytest.raises(TypeError, match="stepz"):
        HEADS[name](3, LOW, HIGH, ObsNormalizer(3), stepz=4)


def test_every_config_key_of_a_head_is_one_of_its_options():
    # what `robo-rl train policy=<head>` passes: the policy.* keys but name / normalize_obs / obs_clip
    # (robo_rl.build._head_options); all must be accepted now that nothing is silently dropped
    from robo_rl.config import POLICY_SCHEMAS

    assert set(POLICY_SCHEMAS) == set(HEADS)
    for name, schema in POLICY_SCHEMAS.items():
        keys = {f.name for f in dataclasses.fields(schema)} - {"name", "normalize_obs", "obs_clip"}
        assert keys == set(HEADS[name].options()), name


# -- 2. and 3. diverged weights ----------------------------------------------------------------------
@pytest.mark.parametrize("part", ["decoder", "latent"])
def test_latent_head_raises_on_non_finite_actions(part):
    # GoRL's env actions are decode(obs, z) (the on-policy runner checks z, not the decoded action)
    h = head("latent")
    poison(getattr(h, part))
    obs = torch.zeros(2, 3)
    calls = [lambda: h.act(obs), lambda: h.act(obs, deterministic=True), lambda: h.sample(obs)]
    if part == "decoder":  # a latent the policy did not make
        calls.append(lambda: h.decode(obs, torch.zeros(2, h.z_dim)))
    for call in calls:
        with pytest.raises(FloatingPointError, match=r"the latent head produced non-finite actions \(diverged weights\?\)"):
            call()


@pytest.mark.parametrize("squash", [True, False])
def test_mixture_head_raises_floating_point_error_not_a_torch_error(squash):
    h = head("mixture", squash=squash)
    poison(h)
    obs = torch.zeros(2, 3)
    message = r"the mixture head produced non-finite (actions or )?mixture weights \(diverged weights\?\)"
    for call in (lambda: h.act(obs), lambda: h.act(obs, deterministic=True), lambda: h.sample(obs)):
        with pytest.raises(FloatingPointError, match=message):
            call()


def test_mixture_head_raises_when_only_its_weights_or_only_its_means_diverge():
    h = head("mixture")
    k, a = h.k, h.act_dim
    last = [m for m in h.net if isinstance(m, torch.nn.Linear)][-1]
    obs = torch.zeros(2, 3)
    with torch.no_grad():
        last.bias[:k] = float("nan")  # the logits: the mode would still be a finite mean
    for deterministic in (False, True):
        with pytest.raises(FloatingPointError, match="non-finite"):
            h.act(obs, deterministic=deterministic)
    h = head("mixture")
    last = [m for m in h.net if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.bias[k:k + k * a] = float("nan")  # the means: the draw succeeds, its action is NaN
    for deterministic in (False, True):
        with pytest.raises(FloatingPointError, match="the mixture head produced non-finite actions"):
            h.act(obs, deterministic=deterministic)


@pytest.mark.parametrize("name, options", [("gaussian", {}), ("gaussian", {"squash": False, "state_dependent_std": False}),
                                           ("deterministic", {}), ("mixture", {})])
def test_unimodal_and_mixture_heads_check_acted_actions_but_not_the_export_path(name, options):
    h = head(name, **options)
    poison(h)
    obs = torch.zeros(1, 3)  # batch 1: the acting loop
    for deterministic in (False, True):
        for act in (h.act, h.act_unit):  # act_unit: TD3's exploration, the deterministic head's own
            with pytest.raises(FloatingPointError, match=f"the {name} head produced non-finite"):
                act(obs, deterministic=deterministic)
    # forward is what an export computes: no Python-side check in the graph (the exporter checks its outputs)
    assert torch.isnan(h(obs)).all()


@pytest.mark.parametrize("name", sorted(HEADS))
def test_a_nan_observation_is_named_as_the_cause_not_the_weights(name):
    # a sensor's NaN fed to a healthy head was reported as "produced non-finite actions (diverged weights?)"
    h = head(name)
    obs = torch.zeros(12, 3)
    obs[3, 1], obs[7, 0] = float("nan"), float("inf")
    for deterministic in (False, True):
        for act in (h.act, h.act_unit):
            with pytest.raises(FloatingPointError, match=rf"the {name} head produced non-finite [a-z ]+ from non-finite "
                                                         r"observations \(NaN/Inf in row\(s\) 3, 7 of obs\)"):
                act(obs, deterministic=deterministic)
    poison(h)  # and diverged weights with finite observations are still blamed on the weights
    with pytest.raises(FloatingPointError, match=r"\(diverged weights\?\)"):
        h.act(torch.zeros(2, 3), deterministic=True)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_an_empty_batch_gets_no_actions(name):
    h = head(name)
    for deterministic in (False, True):
        assert h.act(torch.zeros(0, 3), deterministic=deterministic).shape == (0, 2)


def test_healthy_heads_act_as_before():
    obs = torch.randn(4, 3)
    for name in HEADS:
        h = head(name)
        for deterministic in (False, True):
            actions = h.act(obs, deterministic=deterministic)
            assert actions.shape == (4, 2) and torch.isfinite(actions).all(), name
        if name in ("gaussian", "deterministic", "mixture"):
            torch.testing.assert_close(h(obs), h.act(obs, deterministic=True))


def test_unit_box_actions_are_the_acted_actions_in_unit_scale():
    # act_unit (TD3 explores in the unit box): the deterministic head returns tanh(f(s)) without the round trip
    # through env units, the others to_unit(act); the same actions to float rounding
    obs = torch.randn(64, 3)
    for name in HEADS:
        h = head(name)
        torch.manual_seed(0)
        expected = h.to_unit(h.act(obs, deterministic=True))
        torch.manual_seed(0)
        got = h.act_unit(obs, deterministic=True)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=name)
        assert got.abs().max() <= 1.0, name


def test_a_deterministic_head_that_acts_otherwise_keeps_its_act_in_the_unit_box():
    # a subclass overriding act (or mean_action) is acted with as it says: act_unit, TD3's exploration, follows it
    # rather than the base head's tanh(f(s))
    from policies.heads.deterministic import DeterministicHead

    class Halved(DeterministicHead):
        def act(self, obs, deterministic=False):
            return super().act(obs, deterministic) * 0.5

    class Shifted(DeterministicHead):
        def mean_action(self, obs):
            return super().mean_action(obs).clamp(max=0.0)

    obs = torch.randn(16, 3)
    for cls in (Halved, Shifted):
        h = cls(3, LOW, HIGH, ObsNormalizer(3), hidden_sizes=(8,))
        torch.testing.assert_close(h.act_unit(obs), h.to_unit(h.act(obs)))


def test_a_huge_but_finite_action_is_not_mistaken_for_a_non_finite_one():
    # the check reads one sum; a sum that overflows float32 is settled by the exact test
    h = build_head("gaussian", 3, -np.full(4, 3e38), np.full(4, 3e38), hidden_sizes=(8,), squash=False,
                   state_dependent_std=False)
    with torch.no_grad():
        h.net[-1].bias.fill_(2e38)
        h.net[-1].weight.zero_()
    actions = h.act(torch.zeros(1, 3), deterministic=True)
    assert torch.isinf(actions.sum()) and torch.isfinite(actions).all()


# -- 4. diffusion / flow options name their own key ------------------------------------------------------
@pytest.mark.parametrize("name, options, message", [
    ("diffusion", {"train_steps": 0}, r"^policy.train_steps=0: the diffusion head needs at least 1 diffusion timestep"),
    ("diffusion", {"train_steps": 2.5}, r"^policy.train_steps=2.5: .* a whole number"),
    ("diffusion", {"train_steps": 10**6}, r"^policy.train_steps=1000000: at most 100,000 diffusion timesteps"),  # 1e12 hung
    ("diffusion", {"inference_steps": 0}, r"^policy.inference_steps=0: the diffusion head needs at least 1 sampling step"),
    ("diffusion", {"inference_steps": float("nan")}, r"^policy.inference_steps=nan: .* a whole number"),
    ("diffusion", {"train_steps": 5, "inference_steps": 10}, r"^policy.inference_steps=10 exceeds policy.train_steps=5: "
                                                              r".*use inference_steps <= train_steps"),
    ("flow", {"steps": 2.5}, r"^policy.steps=2.5: the flow head needs at least 1 integration step, a whole number"),
    ("flow", {"steps": 10**6}, r"^policy.steps=1000000: at most 1,000 integration steps"),  # 1e12 ran out of memory
    ("flow", {"steps": True}, r"^policy.steps=True: "),
    ("flow", {"chunk": 0}, r"^policy.chunk=0: a head predicts at least 1 action per query"),
    ("flow", {"execute": 0}, r"^policy.execute=0: must be a whole number between 1 and policy.chunk=1"),
    ("diffusion", {"chunk": 2, "execute": 3}, r"^policy.execute=3: must be a whole number between 1 and policy.chunk=2"),
    ("flow", {"hidden_sizes": (16, 32)}, r"^policy.hidden_sizes=\[16, 32\]: the denoiser needs equal hidden sizes"),
    ("diffusion", {"activation": "swish"}, r"^policy.activation='swish': choose one of"),
    ("latent", {"decoder_hidden": (16, 32)}, r"^policy.decoder_hidden=\[16, 32\]: the denoiser needs equal hidden sizes"),
    ("latent", {"decoder_steps": 2.5}, r"^policy.decoder_steps=2.5: "),
    ("latent", {"decoder": "diffusion", "decoder_steps": 1}, r"^policy.decoder_steps=1: .* use decoder_steps >= 2 .* "
                                                             r"or policy.decoder=flow"),
    # named policy.train_steps, a key the latent head does not have (QA, 2026-12-07)
    ("latent", {"decoder": "diffusion", "decoder_steps": 101}, r"^policy.decoder_steps=101: the diffusion decoder "
                                                               r"samples a subset of its 100 training timesteps"),
    ("mixture", {"components": 2.5}, r"^policy.components=2.5: a mixture needs at least one component \(a whole number\)"),
])
def test_generative_options_are_reported_against_their_own_key(name, options, message):
    with pytest.raises(ValueError, match=message):
        head(name, **options)


def test_whole_numbers_given_as_floats_are_read_as_integers():
    # as the config layer reads policy.steps=4.0 (and 1e1): the value, not its spelling, decides
    assert head("flow", steps=4.0).steps == 4
    h = head("diffusion", train_steps=2e1, inference_steps=np.float32(2))
    assert (h.train_steps, h.inference_steps) == (20, 2) and type(h.train_steps) is int
    assert head("mixture", components=3.0).k == 3
    assert head("flow", chunk=2.0, execute=1.0).execute == 1


@pytest.mark.parametrize("name", sorted(HEADS))
def test_act_takes_a_batch_of_observations_and_says_what_else_to_pass(name):
    # a flow or diffusion head used to turn one [4] observation into 4 actions, silently
    head = build_head(name, 4, -np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match=rf"the {name} head acts on obs \[B, 4\], got shape \[4\] \(obs\[None\]"):
        head.act(torch.zeros(4))
    with pytest.raises(ValueError, match=r"got shape \[2, 5\]"):
        head.act(torch.zeros(2, 5))
    with pytest.raises(TypeError, match=r"got ndarray \(torch.as_tensor\(obs, dtype=torch.float32\)\)"):
        head.act(np.zeros((2, 4)))
    with pytest.raises(TypeError, match="got torch.complex64"):
        head.act(torch.zeros(2, 4, dtype=torch.complex64))
    actions = head.act(torch.zeros(2, 4, dtype=torch.float64), deterministic=True)  # other real dtypes: cast
    assert actions.shape == (2, 3) and actions.dtype == torch.float32


@pytest.mark.parametrize("args, options, words", [
    ((0,), {}, "obs_dim must be an integer >= 1, got 0"),
    (("11",), {}, "obs_dim must be an integer >= 1, got '11'"),
    ((4, [], []), {}, "action_low and action_high must be equal-length bounds of at least one action dimension"),
    ((4, ["-1", "-1", "x"], np.ones(3)), {}, "action_low must be real numbers, one bound per action dimension (e.g. "
                                            "env.action_space.low), got ['-1', '-1', 'x']"),  # numpy's bare message
    ((4, -np.ones(3), "abc"), {}, "action_high must be real numbers"),
    ((4, -np.ones(3), [None, 1, 1]), {}, "action_high must be real numbers"),  # was NaN, "must be finite"
    ((4, -np.ones(3), [1j, 1, 1]), {}, "action_high must be real numbers"),  # numpy's bare TypeError
    ((4,), {"hidden_sizes": (-5,)}, "hidden_sizes must be a list of layer widths >= 1, e.g. [256, 256], got [-5]"),
    ((4,), {"hidden_sizes": 256}, "hidden_sizes must be a list of layer widths >= 1, e.g. [256, 256], got 256"),
    ((4,), {"hidden_sizes": (2.5,)}, "got [2.5]"),
    ((4,), {"normalize_obs": True, "obs_clip": -1}, "obs_clip must be > 0"),  # every observation became -1
    ((4,), {"obs_clip": float("nan")}, "obs_clip must be > 0"),
])
def test_build_head_checks_its_arguments_before_torch_sees_them(args, options, words):
    bounds = args[1:] if len(args) > 1 else (-np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match=re.escape(words)):
        build_head("gaussian", args[0], *bounds, **options)
    with pytest.raises(ValueError, match=re.escape("unknown policy head ['gaussian']")):
        build_head(["gaussian"], 4, -np.ones(3), np.ones(3))


def test_a_head_built_directly_names_a_bound_that_is_not_numbers():
    from policies.normalizers import ObsNormalizer

    with pytest.raises(ValueError, match=re.escape("the gaussian head: action_high must be real numbers")):
        HEADS["gaussian"](4, -np.ones(3), ["1", "1", "one"], ObsNormalizer(4))


@pytest.mark.parametrize("name", sorted(HEADS))
def test_losses_and_log_probs_take_one_action_per_observation(name):
    # actions [1, A] or [A] broadcast against every observation: a plausible loss of the wrong pairs
    head = build_head(name, 4, -np.ones(3), np.ones(3))
    obs = torch.zeros(2, 4)
    for actions in (torch.zeros(1, 3), torch.zeros(3)):
        with pytest.raises(ValueError, match=re.escape(f"the {head.name} head takes obs [B, 4] with actions [B, 3]")):
            head.imitation_loss(obs, actions)
        if head.tractable_log_prob:
            with pytest.raises(ValueError, match="one action per observation"):
                head.log_prob(obs, actions)
    assert torch.isfinite(head.imitation_loss(obs, torch.zeros(2, 3)))


@pytest.mark.parametrize("name", sorted(HEADS))
def test_sample_losses_and_log_probs_cast_float64_as_act_does(name):
    # observations and actions from numpy (float64) met the float32 weights in a bare "mat1 and mat2 must have the
    # same dtype" RuntimeError everywhere but act(), which casts them
    torch.manual_seed(0)
    head = build_head(name, 4, -np.ones(3), np.ones(3), normalize_obs=True)
    obs, actions = torch.randn(5, 4, dtype=torch.float64), torch.rand(5, 3, dtype=torch.float64) * 1.8 - 0.9
    torch.manual_seed(1)
    loss = head.imitation_loss(obs, actions)
    torch.manual_seed(1)
    assert loss.dtype == torch.float32 and torch.equal(loss, head.imitation_loss(obs.float(), actions.float()))
    sampled, _ = head.sample(obs)
    assert sampled.shape == (5, 3) and sampled.dtype == torch.float32
    if head.tractable_log_prob:
        assert torch.equal(head.log_prob(obs, actions), head.log_prob(obs.float(), actions.float()))
    if name in ("gaussian", "mixture"):  # their own entropies (PPO's entropy bonus; a squashed one is sampled)
        torch.manual_seed(2)
        entropy = head.entropy(obs)
        torch.manual_seed(2)
        assert torch.equal(entropy, head.entropy(obs.float()))
    with pytest.raises(TypeError, match=r"takes float tensors obs and actions, got ndarray and Tensor \(torch.as_tensor"):
        head.imitation_loss(obs.numpy(), actions)
    with pytest.raises(TypeError, match="got actions of torch.bool"):
        head.imitation_loss(obs, actions > 0)
