"""Bad configuration fails before any work, with a message naming the key."""

import re
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from robo_rl.config import ALGO_SCHEMAS
from robo_rl.validation import ConfigError
from robo_rl.train import train
from tests.helpers import FAST, compose


@pytest.mark.parametrize("override, words", [
    ("algo.lrr=0.1", ["unknown key 'algo.lrr'; did you mean algo.lr?"]),
    ("algo=sac algo.lrr=0.1", ["unknown key 'algo.lrr'; the keys there are name, gamma", "robo-rl train algo=sac --help"]),
    ("stepz=10", ["unknown key 'stepz'; did you mean steps?"]),
    ("algo.minibatch_size=big", ["minibatch_size", "Integer"]),
    ("env.num_envs=2.5", ["num_envs"]),
    ("steps=1.5e0", ["steps", "Integer"]),  # a whole number in scientific notation is accepted (below), this is not
    ("steps=1e-3", ["steps", "Integer"]),
    ("algo=dqn", ["algo/dqn", "sac"]),
])
def test_unknown_or_mistyped_keys_fail_at_composition(override, words):
    with pytest.raises(ConfigError) as exc:  # worded as the CLI words it
        compose(*override.split())
    for w in words:
        assert w in str(exc.value)


@pytest.mark.parametrize("overrides, key", [
    (["steps=-5"], "steps"),
    (["algo=sac", "algo.batch_size=0"], "algo.batch_size"),
    (["algo=ppo", "algo.minibatch_size=100000"], "algo.minibatch_size"),
    (["algo=ppo", "algo.target_kl=0"], "algo.target_kl"),
    (["policy.activation=sigmoidz"], "policy.activation"),
    (["env.vectorization=threads"], "env.vectorization"),
    (["algo=sac", "algo.tau=2"], "algo.tau"),
    (["algo=sac", "env.normalize_reward=true"], "normalize_reward"),
    (["algo=gorl_sac", "env.normalize_reward=true"], "normalize_reward"),  # the off-policy runner ignores it
    (["env.backend=isaacsim"], "env.backend"),
    (["env.randomize.body_mass_scale=[1.2,0.8]"], "env.randomize.body_mass_scale"),
    (["env.randomize.geom_friction_scale=[-1,1]"], "env.randomize.geom_friction_scale"),
    # out of range, once accepted silently
    (["env.max_episode_steps=0"], "env.max_episode_steps"),
    # gymnasium.make's own argument, given as a task keyword: "multiple values for keyword argument", naming neither
    (["env.kwargs.max_episode_steps=5"], "env.kwargs.max_episode_steps=5: the time limit is not one of the task's "
                                         "keyword arguments: give env.max_episode_steps=<n>"),
    (["env.reward_clip=0"], "env.reward_clip"),
    (["policy.obs_clip=-1"], "policy.obs_clip"),
    (["algo=ppo", "algo.clip_range=-0.2"], "algo.clip_range"),
    (["algo=ppo", "algo.max_grad_norm=-1"], "algo.max_grad_norm"),
    (["algo=ppo", "algo.gae_lambda=1.5"], "algo.gae_lambda"),
    (["algo=ppo", "algo.lr=0"], "algo.lr"),
    (["algo=td3", "algo.policy_delay=0"], "algo.policy_delay"),  # was a ZeroDivisionError at the first update
    (["algo=td3", "algo.target_noise=-0.1"], "algo.target_noise"),
    (["algo=sac", "algo.buffer_size=100"], "algo.buffer_size"),
    (["algo=sac", "algo.init_alpha=-1"], "algo.init_alpha"),
    (["algo=sac", "algo.init_alpha=1e300"], "algo.init_alpha"),  # float32 inf: stopped at the first checkpoint
    (["algo=sac", "algo.actor_lr=0"], "algo.actor_lr"),
    (["steps=1e20"], "steps"),
    (["seed=4294967296"], "seed"),
    (["algo=sac", "algo.target_update_every=0"], "algo.target_update_every"),  # was a ZeroDivisionError
    (["algo=sac", "algo.utd=1e6"], "algo.utd"),  # a run that never finishes its first step
    (["algo=expo", "algo.edit_hidden=[0]"], "algo.edit_hidden"),
    (["algo=gorl", "algo.latent_kl_coef=-1"], "algo.latent_kl_coef"),
    (["algo=gorl", "algo.latent_kl_coef=0.01"], "algo.latent_kl_coef"),  # its prior is not the recentred latent's
    (["algo=ppo", "algo.fused=maybe"], "algo.fused"),
    (["policy.log_std_init=50"], "policy.log_std_init"),
    (["env=pendulum", "env.randomize.action_delay=[0,100000]"], "env.randomize.action_delay"),
    # NaN and inf, once found only by training
    (["algo=sac", "algo.target_entropy=nan"], "algo.target_entropy"),
    (["algo=ppo", "algo.ent_coef=nan"], "algo.ent_coef"),
    (["algo=parl", "algo.action_lr=nan"], "algo.action_lr"),
    (["algo=td3", "algo.exploration_noise=inf"], "algo.exploration_noise"),
    (["policy.log_std_init=nan"], "policy.log_std_init"),
    (["env.kwargs.ctrl_cost_weight=nan"], "env.kwargs.ctrl_cost_weight"),
    (["policy.obs_clip=inf"], r"policy.obs_clip=inf: must be a finite number; for no clipping give a large bound"),
    (["env.randomize.body_mass_scale=[0.5,nan]"], r"env.randomize.body_mass_scale\[1\]"),
    # a nested list passed the List[int] schema and stopped validation with a TypeError traceback (an empty run_dir left)
    (["algo=sac", "algo.critic_hidden=[[256]]"], r"algo.critic_hidden=\[\[256\]\]: needs at least one layer"),
    (["policy.hidden_sizes=[[64],[64]]"], "policy.hidden_sizes"),
    (["algo=sac", "safety.cost_critic.hidden=[[1]]"], "safety.cost_critic.hidden"),
    # a width of 1e9 stopped the network build with the allocator's "can't allocate memory" traceback
    (["algo=sac", "policy.hidden_sizes=[1e9]", "env=pendulum", "steps=200"], r"policy.hidden_sizes=\[1000000000\]: needs"),
    (["algo=gorl_sac", "policy=latent", "policy.decoder_hidden=[1e9]", "env=pendulum", "steps=200"], "policy.decoder_hidden"),
    (["env=pendulum", "env.randomize.action_delay=[[1]]"], r"env.randomize.action_delay=\(\[1\],\): expected a range"),
    (["env=pendulum", "env.randomize.action_delay=[]"], r"env.randomize.action_delay=\(\): expected a range"),  # was max()'s
    # finite but beyond float32: trained, then stopped with "value cannot be converted to type float without overflow"
    (["algo=ppo", "policy.obs_clip=1e300", "env=pendulum", "steps=200"], r"policy.obs_clip=1e\+300: beyond float32's range"),
    (["algo=ppo", "env.reward_clip=1e300", "env=pendulum", "steps=200"], r"env.reward_clip=1e\+300: beyond float32's range"),
    (["algo=td3", "algo.target_noise_clip=1e300", "env=pendulum", "steps=200"], "algo.target_noise_clip"),
    (["algo=sac", "demos.lr=1e300", "env=pendulum", "steps=200"], "demos.lr"),
    # was torch's "Overflow when unpacking long"; the learner's "unknown activation 'sigmoidz'" named no key
    (["threads=1e12", "env=pendulum", "steps=200"], r"threads=1000000000000: must be between 1 and"),
    (["algo=gorl_sac", "algo.refit_threads=1e12", "env=pendulum", "steps=200"],  # the same, at the first refit
     r"algo.refit_threads=1000000000000: must be between 0 and"),
    # counts of 1e12: hung after the banner (PPO's epochs, an evaluation's episodes, PA-RL's gradient steps on Q, a
    # GoRL refit's epochs) or stopped with "out of memory", exit 1, while the networks were built
    (["algo=ppo", "algo.epochs=1e12", "env=pendulum", "steps=200"], r"algo.epochs=1000000000000: must be between 1 and 1,000 "),
    (["algo=sac", "eval.episodes=1e12", "env=pendulum", "steps=200"], r"eval.episodes=1000000000000: must be between 1 and 100,000"),
    (["algo=parl", "algo.grad_steps=1e12", "env=pendulum", "steps=200"], r"algo.grad_steps=1000000000000: must be between 0 and"),
    (["algo=gorl", "algo.refit_epochs=1e12", "env=pendulum", "steps=200"], r"algo.refit_epochs=1000000000000: must be between 0 and"),
    # 2**63 reached torch.split at the first refit, after the run started: "Overflow when unpacking long long"
    (["algo=gorl_sac", "policy=latent", "algo.refit_batch_size=9223372036854775808", "env=pendulum", "steps=200"],
     r"algo.refit_batch_size=9223372036854775808: must be between 1 and"),
    (["algo=sac", "algo.num_critics=1e12", "env=pendulum", "steps=200"], r"algo.num_critics=1000000000000: must be between 1 and"),
    (["algo=sac", "safety.passivity_aware=true", "safety.cost_critic.num_critics=1e12", "env=pendulum", "steps=200"],
     r"safety.cost_critic.num_critics=1000000000000: must be between 1 and"),
    (["algo=sac", "policy=mixture", "policy.components=1e12", "env=pendulum", "steps=200"],
     r"policy.components=1000000000000: must be between 1 and"),
    (["algo=expo", "policy=flow", "policy.chunk=1e12", "env=pendulum", "steps=200"], r"policy.chunk=1000000000000: must be between 1 and"),
    # with demos.path: 1e12 gradient steps before the first env step, with no progress line
    (["algo=sac", "demos.pretrain_steps=1e12", "env=pendulum", "steps=200"], r"demos.pretrain_steps=1000000000000: must be between 0 and 10,000,000"),
    (["algo=sac", "demos.critic_steps=1e12", "env=pendulum", "steps=200"], r"demos.critic_steps=1000000000000: must be between 0 and 10,000,000"),
    (["algo=ppo", "algo.epochs=0"], r"algo.epochs=0: must be between 1 and"),  # the lower end as before
    (["algo=sac", "algo.num_critics=0"], r"algo.num_critics=0: must be between 1 and"),
    (["algo=sac", "env.num_envs=8", "algo.buffer_size=4", "env=pendulum"],  # the other key of the two is named too
     r"algo.buffer_size=4: must hold at least one step of every env \(env.num_envs=8\)"),
    (["algo=expo", "algo.edit_activation=sigmoidz", "env=pendulum", "steps=200"],
     r"algo.edit_activation=sigmoidz: unknown activation"),
    (["algo=expo", "algo.target_samples=0", "env=pendulum", "steps=200"], r"algo.target_samples=0: must be >= 1"),
    (["algo=parl", "algo.target_candidates=0", "env=pendulum", "steps=200"], r"algo.target_candidates=0: must be >= 1"),
])
def test_semantic_errors_name_the_key_and_write_nothing(tmp_path, overrides, key):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train(compose(*overrides, *FAST), run_dir)
    assert not run_dir.exists()


def checked(*overrides):
    from robo_rl.defaults import resolve_defaults
    from robo_rl.validation import validate

    validate(resolve_defaults(compose(*overrides)))


@pytest.mark.parametrize("overrides, key", [
    # widths that each fit but whose weight matrix does not (1e10 weights: 40 GB written as the network is initialized)
    (["algo=sac", "algo.critic_hidden=[100000,100000]"], r"algo.critic_hidden=\[100000, 100000\]: needs"),
    (["algo=sac", "safety.passivity_aware=true", "safety.cost_critic.hidden=[65536,65536]"], "safety.cost_critic.hidden"),
    (["algo=ppo", "policy.hidden_sizes=[65537]"], "policy.hidden_sizes"),
])
def test_absurd_layer_sizes_are_refused_before_any_network_is_built(overrides, key):
    with pytest.raises(ConfigError, match=key):
        checked(*overrides, "env=pendulum")


@pytest.mark.parametrize("overrides, message", [
    (["algo=sac", "safety.cost_budget=0.1"], "safety.cost_budget=0.1: only passivity-aware training reads it"),
    (["algo=ppo", "safety.lagrange_lr=0.5", "safety.cost_critic.num_critics=3"],
     r"safety.lagrange_lr=0.5: only passivity-aware .* \(also: safety.cost_critic.num_critics\)"),
    (["algo=sac", "safety.cost_critic.hidden=[32]"], r"safety.cost_critic.hidden=\[32\]: only passivity-aware"),
    (["algo=sac", "demos.pretrain_steps=10"], r"demos.pretrain_steps=10: no demonstrations are given \(demos.path"),
    (["algo=ppo", "demos.replay=false"], "demos.replay=False: no demonstrations are given"),
    (["algo=sac", "algo.autotune_alpha=false", "algo.target_entropy=-3"],
     "algo.target_entropy=-3.0: the temperature is tuned toward the target entropy only with algo.autotune_alpha=true"),
    (["algo=gorl_sac", "algo.autotune_alpha=false", "algo.alpha_lr=1e-3"], "algo.alpha_lr=0.001: the temperature"),
    (["algo=sac", "env.reward_clip=5"], "env.reward_clip=5.0: it clips normalized rewards, and env.normalize_reward=false"),
    (["algo=ppo", "env.normalize_reward=false", "env.reward_clip=5"], "env.reward_clip=5.0: it clips normalized"),
    (["algo=sac", "policy.obs_clip=5"], "policy.obs_clip=5.0: it clips normalized observations"),
    (["algo=td3", "algo.target_noise=0", "algo.target_noise_clip=0.1"],
     "algo.target_noise_clip=0.1: it bounds the target policy's smoothing noise, and algo.target_noise=0 adds none"),
    (["algo=parl", "algo.action_lr=0", "algo.grad_steps=5"], "algo.grad_steps=5: gradient steps on the actions of size "
                                                             "algo.action_lr=0 leave them where they are"),
    (["algo=parl", "algo.grad_steps=0", "algo.action_lr=0.1"], "algo.action_lr=0.1: it is the step size .* "
                                                               "algo.grad_steps=0 takes none"),
])
def test_a_key_nothing_in_the_run_would_read_is_refused(overrides, message):
    # each was accepted and silently ignored: the run said nothing while the user believed the setting in force
    with pytest.raises(ConfigError, match=message):
        checked(*overrides, "env=pendulum")


@pytest.mark.parametrize("overrides", [
    ["algo=sac", "safety.cost_budget=0.05", "safety.cost_critic.hidden=[256,256]"],  # their defaults: nothing set
    ["algo=sac", "algo.critic_hidden=[32]", "algo.critic_lr=1e-3"],  # the cost critic follows them, unused
    ["algo=sac", "algo.autotune_alpha=false", "algo.init_alpha=0.2"],
    ["algo=ppo", "env.reward_clip=5", "policy.obs_clip=5"],  # PPO normalizes both
    ["algo=sac", "policy.normalize_obs=true", "policy.obs_clip=5"],
    ["algo=td3", "algo.target_noise=0"],
    ["algo=parl", "algo.action_lr=0"],  # the documented way to turn the local optimization off
    ["algo=parl", "algo.grad_steps=0"],
    # both keys at the value that turns the step off: each says what the other does (refused as "unread" by each other)
    ["algo=parl", "algo.grad_steps=0", "algo.action_lr=0"],
    ["algo=td3", "algo.target_noise=0", "algo.target_noise_clip=0"],
    *[[f"algo={name}"] for name in ALGO_SCHEMAS],  # every learner's defaults
])
def test_keys_at_their_defaults_or_read_by_the_run_are_accepted(overrides):
    checked(*overrides, "env=pendulum")


def test_a_demos_key_without_the_step_that_reads_it_is_refused(tmp_path):
    from robo_rl.demos import save_demos

    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    save_demos(path, rng.normal(size=(8, 3)), rng.uniform(-2, 2, size=(8, 1)), rng.normal(size=8),
               rng.normal(size=(8, 3)), np.zeros(8, bool))
    with pytest.raises(ConfigError, match="demos.lr=0.01: it sets the pretraining .* demos.pretrain_steps=0"):
        checked("algo=sac", "env=pendulum", f"demos.path={path}", "demos.pretrain_steps=0", "demos.lr=1e-2")
    with pytest.raises(ConfigError, match="demos.critic_steps=5: .* demos.replay=false preloads none"):
        checked("algo=sac", "env=pendulum", f"demos.path={path}", "demos.replay=false", "demos.critic_steps=5")
    with pytest.raises(ConfigError, match=r"demos.critic_steps=5: .* algo=ppo \(on-policy\) has no replay buffer"):
        checked("algo=ppo", "env=pendulum", f"demos.path={path}", "demos.critic_steps=5")
    checked("algo=sac", "env=pendulum", f"demos.path={path}", "demos.replay=false", "demos.critic_steps=0")


@pytest.mark.parametrize("overrides, backend, on_policy, eval_envs, said", [
    (["algo=sac", "env=hopper", "env.vectorization=async"], "mujoco", False, 10,
     ["env.vectorization=async: only the gymnasium backend reads it, and Hopper-v5 runs on the mujoco backend, so it "
      "changes nothing (env.backend=gymnasium to use it)"]),
    (["algo=sac", "env.threads=4"], "mjwarp", False, 10, ["env.threads=4: only the batched MuJoCo backend reads it"]),
    (["algo=sac", "eval.num_envs=4"], "isaac", False, None,
     ["eval.num_envs=4: Hopper-v5 allows one simulator per process, so evaluations run on the training envs"]),
    (["algo=gorl", "algo.refit_on=executed", "algo.refit_redraw=false"], "mujoco", True, 10,
     ["algo.refit_redraw=False: with algo.refit_on=executed a refit fits the executed actions"]),
    (["algo=gorl", "algo.reset_latent=false", "algo.recenter_latent=false", "algo.keep_latent_std=false"], "mujoco",
     True, 10, ["algo.keep_latent_std=False: it shapes the latent policy's reset after a decoder refit, and "
                "algo.reset_latent=false makes none", "algo.recenter_latent=False: it shapes"]),
    (["algo=td3", "eval.deterministic=false"], "mujoco", False, 10,
     ["eval.deterministic=False: the deterministic head has no distribution to sample"]),
    (["algo=gorl", "algo.stages=5", "algo.refit_every=10"], "mujoco", True, 10,
     ["algo.stages=5: algo.refit_every=10 sets when the decoder is refit instead"]),
    (["algo=gorl_sac", "algo.refit_epochs=0", "algo.reset_latent=false", "algo.decoder_lr=1e-3",
      "algo.refit_every=50"], "mujoco", False, 10,
     ["algo.refit_every=50: algo.refit_epochs=0 keeps the decoder fixed", "algo.decoder_lr=0.001: algo.refit_epochs=0"]),
    # the dataset is still allocated and collected: its size is not "nothing"
    (["algo=gorl", "algo.refit_epochs=0", "algo.reset_latent=false", "algo.dataset_size=1000"], "mujoco", True, 10,
     ["algo.dataset_size=1000: algo.refit_epochs=0 keeps the decoder fixed (a refit fits nothing and, with "
      "algo.reset_latent=false, resets nothing), so it changes only the memory set aside for a dataset no refit reads"]),
    # at their defaults, or read: nothing to say
    (["algo=gorl", "algo.reset_latent=false"], "gymnasium", True, 10, []),
    (["algo=gorl", "algo.refit_every=10"], "mujoco", True, 10, []),
    (["algo=gorl", "algo.refit_epochs=0", "algo.reset_latent=false"], "mujoco", True, 10, []),
    (["algo=sac", "env.vectorization=async", "env.threads=0", "eval.num_envs=10"], "gymnasium", False, 10, []),
    (["algo=sac", "checkpoint.save_replay=false", "eval.num_envs=3", "eval.episodes=5"], "mujoco", False, 3, []),
    (["algo=sac", "eval.deterministic=false"], "mujoco", False, 10, []),
])
def test_keys_a_run_ignores_harmlessly_are_named(overrides, backend, on_policy, eval_envs, said):
    from robo_rl.defaults import resolve_defaults
    from robo_rl.validation import ignored_keys

    lines = ignored_keys(resolve_defaults(compose(*overrides)), backend, on_policy, eval_envs)
    assert len(lines) == len(said) and all(line.startswith(start) for line, start in zip(lines, said))


def test_a_resume_s_start_up_notes_do_not_advise_a_key_the_resume_keeps():
    # a resumed run's note said "(env.backend=gymnasium to use it)", and the resume refused env.backend=gymnasium
    from robo_rl.defaults import resolve_defaults
    from robo_rl.train import RESUME_OVERRIDABLE
    from robo_rl.validation import ignored_keys

    cfg = resolve_defaults(compose("algo=sac", "env=hopper", "env.vectorization=async"))
    assert "env.backend=gymnasium to use it" in ignored_keys(cfg, "mujoco", False, 10)[0]
    cfg.resume = "runs/r"
    (line,) = ignored_keys(cfg, "mujoco", False, 10)
    assert line.endswith("so it changes nothing") and "env.backend" not in RESUME_OVERRIDABLE, line


@pytest.mark.parametrize("overrides, keys", [
    (["+algo.foo=1"], ["'algo.foo'"]),
    (["+env.foo=2"], ["'env.foo'"]),
    (["+foo=1"], ["'foo'"]),
    (["algo=sac", "+policy.bar=1", "+env.randomize.q=2"], ["'policy.bar'", "'env.randomize.q'"]),
])
def test_keys_added_with_plus_that_no_schema_defines_fail(tmp_path, overrides, keys):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="unknown key") as exc:
        train(compose(*overrides, *FAST), run_dir)
    assert all(k in str(exc.value) for k in keys)
    assert not run_dir.exists()


def test_whole_numbers_in_scientific_notation_fill_integer_keys():
    from robo_rl.config import integer_keys, integral_literals

    cfg = compose("algo=sac", "steps=1e6", "algo.buffer_size=2.5e5", "algo.actor_lr=1e-4")
    assert (cfg.steps, cfg.algo.buffer_size, cfg.algo.actor_lr) == (1_000_000, 250_000, 1e-4)
    assert type(cfg.steps) is int
    keys = integer_keys()
    assert {"steps", "seed", "algo.learning_starts", "env.num_envs", "policy.steps"} <= keys
    assert "algo.actor_lr" not in keys and "env.id" not in keys
    assert integral_literals(["seed=0e0,1e0,2", "++steps=3E4", "env.id=1e5", "checkpoint.keep=1.5e0"], keys) == [
        "seed=0,1,2", "++steps=30000", "env.id=1e5", "checkpoint.keep=1.5e0"]
    assert integral_literals(["steps=1500.0", "seed=-1e3", "env.num_envs=2.5"], keys) == [
        "steps=1500", "seed=-1000", "env.num_envs=2.5"]


def test_whole_numbers_in_scientific_notation_fill_integer_lists_as_integer_keys():
    """policy.hidden_sizes=[1e3,256] was refused ("could not be converted to Integer") while steps=1e3 worked."""
    from robo_rl.config import integer_keys, integral_literals

    cfg = compose("algo=sac", "policy.hidden_sizes=[1e3,256]", "algo.critic_hidden=[ 2.56e2 ]",
                  "env.randomize.action_delay=[0,1e1]")
    assert (list(cfg.policy.hidden_sizes), list(cfg.algo.critic_hidden), list(cfg.env.randomize.action_delay)) == (
        [1000, 256], [256], [0, 10])
    assert integral_literals(["policy.hidden_sizes=[1e3,64],[2e2]", "policy.hidden_sizes=[1.5e0]",
                              "steps=range(1,1e3)"], integer_keys()) == [
        "policy.hidden_sizes=[1000,64],[200]", "policy.hidden_sizes=[1.5e0]", "steps=range(1,1e3)"]
    # exactly the number written: int(float("1e30")) is 1000000000000000019884624838656
    assert integral_literals(["seed=1e30", "steps=2.5e5"], integer_keys()) == [f"seed={10**30}", "steps=250000"]


def test_an_integer_beyond_float_range_is_a_type_error_not_a_traceback():
    # 1e400 reads as inf: rewriting it as a whole number raised OverflowError (a traceback, exit 1)
    with pytest.raises(ConfigError, match=r"Value 'inf' of type 'float' could not be converted to Integer.*steps=1e400"):
        compose("steps=1e400")


def test_true_false_keys_refuse_other_numbers(capsys):
    """OmegaConf reads any nonzero integer as true: compile=2 (a count, or a typo) would have run as true."""
    from robo_rl.commands.common import parse_options
    from robo_rl.commands.train import train_main
    from robo_rl.config import EvalCommandConfig, boolean_keys

    assert {"compile", "policy.squash", "algo.anneal_lr", "eval.deterministic"} <= boolean_keys()
    assert "steps" not in boolean_keys() and "precision" not in boolean_keys()
    with pytest.raises(ConfigError, match="^compile: must be true or false, got 2$"):
        compose("compile=2")
    with pytest.raises(ConfigError, match="policy.squash: must be true or false, got -1"):
        compose("policy.squash='-1'")
    assert train_main(["-m", "compile=true,3", "steps=10"]) == 2  # a sweep's later value too, before any job
    assert "compile: must be true or false, got 3" in capsys.readouterr().err
    with pytest.raises(ValueError, match="deterministic: must be true or false, got 2 .see robo-rl eval --help"):
        parse_options(["run_dir=x", "deterministic=2"], EvalCommandConfig, "eval")
    cfg = compose("compile=1", "policy.squash=0", "algo.anneal_lr=no", "eval.deterministic=true")
    assert (cfg.compile, cfg.policy.squash, cfg.algo.anneal_lr, cfg.eval.deterministic) == (True, False, False, True)
    assert parse_options(["run_dir=x", "deterministic=0"], EvalCommandConfig, "eval").deterministic is False


def test_free_form_env_kwargs_are_not_unknown_keys():
    from robo_rl.defaults import resolve_defaults
    from robo_rl.validation import unknown_keys

    assert unknown_keys(resolve_defaults(compose("env.kwargs.ctrl_cost_weight=0.1"))) == []
    assert unknown_keys(resolve_defaults(compose("algo=gorl", "safety=passivity", "env=contact_maze"))) == []


def test_unknown_task_fails_before_any_run_files(tmp_path):
    with pytest.raises(ValueError, match="Walker2d-v5"):
        train(compose("env.id=Walker2D-v5", *FAST), tmp_path / "run")
    with pytest.raises(ValueError, match="env.backend=gymnasium"):
        train(compose("env.id=Pendulum-v1", "env.backend=mujoco", *FAST), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_task_module_that_fails_as_it_runs_is_named_before_any_run_files(tmp_path, monkeypatch):
    # only an ImportError was caught: the RuntimeError of a user's broken module left resolve_defaults (and then
    # make_env) as a traceback, exit 1, where README promises the module named before any work
    (tmp_path / "robo_rl_test_broken_tasks.py").write_text("raise RuntimeError('no robot connected')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"^env.id=robo_rl_test_broken_tasks:Arm-v0: importing 'robo_rl_test_broken_tasks', "
                                         r"the module that should register 'Arm-v0', failed: RuntimeError: no robot "
                                         r"connected$"):
        train(compose("env.id=robo_rl_test_broken_tasks:Arm-v0", *FAST), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_td3_selects_the_deterministic_head_and_refuses_gaussian(tmp_path):
    assert compose("algo=td3").policy.name == "deterministic"
    for head in ("gaussian", "mixture", "diffusion"):  # whatever else the head lacks, the advice is the same
        with pytest.raises(ValueError, match="use policy=deterministic"):
            train(compose("algo=td3", f"policy={head}", *FAST), tmp_path / "run")


@pytest.mark.parametrize("head", ["gaussian", "deterministic", "mixture", "diffusion", "flow", "latent"])
def test_the_learners_a_refusal_points_to_take_the_head(head):
    # a refusal's advice ("train the flow head with algo=expo or parl") names only learners that accept the head
    from policies.heads.base import TRAINED_BY
    from robo_rl.build import check_head_and_learner
    from robo_rl.defaults import resolve_defaults

    named = re.findall(r"\b(sac|td3|ppo|expo|parl|gorl|gorl_sac)\b", TRAINED_BY[head].split("(")[0])
    assert named
    for algo in named:
        check_head_and_learner(resolve_defaults(compose(f"algo={algo}", f"policy={head}", "env=pendulum", *FAST)))


@pytest.mark.parametrize("overrides, words", [
    (["algo=sac", "policy=flow"], ["algo=sac cannot train the 'flow' head", "train the flow head with algo=expo or parl"]),
    (["algo=ppo", "policy=deterministic"], ["algo=ppo cannot train the 'deterministic' head"]),
    (["algo=expo", "policy=latent"], ["leaves the latent policy untrained"]),
    (["algo=parl", "policy=flow", "policy.chunk=2"], ["set policy.chunk=1"]),
    (["algo=parl", "policy=diffusion", "policy.scheduler=dpm++"], ["policy.scheduler='dpm++'"]),
    (["algo=gorl", "algo.refit_epochs=0"], ["algo.refit_epochs=0 with algo.reset_latent=true"]),
    (["algo=gorl_sac", "policy.decoder=diffusion"], ["needs policy.decoder=flow"]),
])
def test_a_head_or_learner_that_cannot_work_is_refused_before_any_env_is_built(tmp_path, monkeypatch, overrides, words):
    """The pair (and each one's options) is checked on stand-in dimensions before the env is built and stepped:
    a task of many envs (or async workers) would otherwise start, and step once, only to be refused."""
    import robo_rl.train as train_module

    def no_env(*args, **kwargs):
        raise AssertionError("an env was built before the refusal")

    monkeypatch.setattr(train_module, "build_env_checked", no_env)
    with pytest.raises(ConfigError) as exc:
        train(compose(*overrides, "env=pendulum", *FAST), tmp_path / "run")
    assert all(w in str(exc.value) for w in words), str(exc.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, advice", [
    (["algo=gorl", "policy=latent", "algo.refit_epochs=0"], "algo.reset_latent=false"),
    (["algo=expo", "policy=diffusion", "policy.beta_schedule=linear"], "policy.beta_schedule=squaredcos_cap_v2"),
])
def test_the_override_a_head_or_learner_refusal_names_is_a_key_and_is_accepted(overrides, advice):
    # "reset_latent=false" and "use beta_schedule=squaredcos_cap_v2", typed as told, were unknown keys
    from robo_rl.build import check_head_and_learner
    from robo_rl.defaults import resolve_defaults

    with pytest.raises(ConfigError) as exc:
        check_head_and_learner(resolve_defaults(compose(*overrides, "env=pendulum", *FAST)))
    assert re.search(rf"(?<![\w.]){re.escape(advice)}\b", str(exc.value)), str(exc.value)
    check_head_and_learner(resolve_defaults(compose(*overrides, advice, "env=pendulum", *FAST)))


@pytest.mark.parametrize("kwarg, words", [
    ("env.kwargs.xml_file=/nonexistent/hopper.xml", ["could not be built", "/nonexistent/hopper.xml"]),
    ("env.kwargs.healthy_z_range=5", ["cannot run a step", "healthy_z_range"]),  # read at the first step
    # read at the first step, where it failed ("cannot run a step"); refused as the env is made since 2026-12-07
    ("env.kwargs.ctrl_cost_weight=abc", ["Hopper-v5: kwargs ctrl_cost_weight='abc': takes a number"]),
])
def test_task_arguments_that_break_the_env_fail_before_any_run_files(tmp_path, kwarg, words):
    with pytest.raises(ValueError) as exc:  # (a ConfigError, or make_env's own ValueError naming the task)
        train(compose("algo=sac", kwarg, *FAST), tmp_path / "run")
    assert all(w in str(exc.value) for w in words) and "Hopper-v5" in str(exc.value)
    assert not (tmp_path / "run").exists()


def test_randomization_presets_compose():
    assert compose("randomize=off").env.randomize.body_mass_scale is None
    strong = compose("randomize=strong").env.randomize
    assert list(strong.body_mass_scale) == [0.7, 1.3] and list(strong.action_delay) == [0, 1]
    assert list(compose("env.randomize.gravity_scale=[0.5,1.5]").env.randomize.gravity_scale) == [0.5, 1.5]


def test_learner_defaults_fill_nulls():
    from robo_rl.defaults import resolve_defaults

    sac = resolve_defaults(compose("algo=sac"))
    ppo = resolve_defaults(compose())
    assert ppo.algo.name == "ppo" and ppo.env.backend == "auto" and ppo.threads == 1 and sac.threads is None
    assert list(sac.policy.hidden_sizes) == [256, 256] and sac.policy.squash is True and sac.env.num_envs == 1
    assert list(ppo.policy.hidden_sizes) == [64, 64] and ppo.policy.squash is False and ppo.env.num_envs == 64
    assert ppo.steps == 1_000_000 and sac.steps == 100_000
    # explicit values win over learner defaults
    assert list(resolve_defaults(compose("algo=ppo", "policy.hidden_sizes=[32]")).policy.hidden_sizes) == [32]
    # the flow head's integration steps: EXPO's 3, any other learner's 4 (the head's own), a given value as given;
    # a head without the key (diffusion: inference_steps) does not get it
    expo = resolve_defaults(compose("algo=expo"))
    assert expo.policy.name == "flow" and expo.policy.steps == 3
    assert resolve_defaults(compose("algo=parl")).policy.steps == 4
    assert resolve_defaults(compose("algo=expo", "policy.steps=4")).policy.steps == 4
    assert "steps" not in resolve_defaults(compose("algo=expo", "policy=diffusion")).policy
    # the default the config fills in is the head's own (a FlowHead built in Python without steps=)
    import inspect

    from policies.heads.flow import FlowHead
    from robo_rl.defaults import HEAD_DEFAULTS

    assert HEAD_DEFAULTS["policy.steps"] == inspect.signature(FlowHead).parameters["steps"].default


@pytest.mark.parametrize("overrides, named", [
    (["algo=expo"], "flow head (3 steps)"), (["algo=parl"], "flow head (4 steps)"),
    (["algo=expo", "policy.steps=4"], "flow head (4 steps)"), (["algo=sac"], "gaussian head"),
    (["algo=parl", "policy=diffusion"], "diffusion head (10 of 100 steps)"),
    (["algo=gorl"], "latent head (flow decoder, 4 steps)")])
def test_the_opening_line_names_the_head_with_its_sampling_steps(overrides, named):
    # the flow head's steps are the learner's default (EXPO 3, the others 4): the run says which it got
    from robo_rl.defaults import resolve_defaults
    from robo_rl.train import head_summary

    assert head_summary(resolve_defaults(compose(*overrides)).policy) == named


def test_evaluations_every_twentieth_of_the_run_but_not_more_than_training():
    from robo_rl.defaults import resolve_defaults

    assert resolve_defaults(compose()).eval.every == 50_000  # PPO 1M on Hopper: 20 evaluations
    assert resolve_defaults(compose("algo=sac")).eval.every == 5_000  # SAC 100k
    # 2,000 steps on Humanoid (1,000-step episodes): every 5,000 steps, i.e. only the final evaluation
    assert resolve_defaults(compose("algo=sac", "env=humanoid", "steps=2000")).eval.every == 5_000
    assert resolve_defaults(compose("steps=2000", "env.max_episode_steps=100", "eval.episodes=4")).eval.every == 200
    assert resolve_defaults(compose("steps=2000", "env.id=no_such_module:Task-v0")).eval.every == 100  # limit unknown
    # module:Id: the module registers the id (tests.helpers: NaNAfter, 100-step limit)
    assert resolve_defaults(compose("steps=2000", "env.id=tests.helpers:robo_rl_test/NaNAfter-v0")).eval.every == 500
    assert resolve_defaults(compose("env=humanoid", "steps=2000", "eval.every=10")).eval.every == 10  # as given
    # robo-rl's own tasks are registered for this, whether or not envs was imported already
    assert resolve_defaults(compose("env=contact_maze", "algo=sac", "steps=2000")).eval.every == 1_000  # 200-step limit


@pytest.mark.parametrize("algo", sorted(ALGO_SCHEMAS))
def test_task_defaults_fill_nulls_before_the_learners(algo):
    from robo_rl.defaults import TASK_DEFAULTS, resolve_defaults, task_defaults, unset

    # every key a task sets for this learner is unset in its config, or it would never apply
    raw = compose(f"algo={algo}")
    for key in {k for per_algo in TASK_DEFAULTS.values() for k in per_algo.get(algo, {})}:
        assert unset(raw, key), (algo, key)
    # Swimmer's own settings, whether the task comes from env= or env.id=; only for the learners measured there
    swimmer = TASK_DEFAULTS["Swimmer-v5"].get(algo, {})
    for override in ("env=swimmer", "env.id=Swimmer-v5"):
        cfg = compose(f"algo={algo}", override)
        assert task_defaults(cfg) == swimmer
        resolved = resolve_defaults(cfg)
        for key, value in swimmer.items():
            assert OmegaConf.select(resolved, key) == value


def test_ant_ppo_settings():
    from robo_rl.defaults import resolve_defaults, task_defaults

    cfg = resolve_defaults(compose("env=ant"))
    assert cfg.env.kwargs.include_cfrc_ext_in_observation is False
    assert "include_cfrc_ext_in_observation" not in resolve_defaults(compose("env=ant", "algo=sac")).env.kwargs
    given = compose("env=ant", "env.kwargs.include_cfrc_ext_in_observation=true")
    assert task_defaults(given) == {} and resolve_defaults(given).env.kwargs.include_cfrc_ext_in_observation is True


def test_swimmer_ppo_settings():
    from robo_rl.defaults import resolve_defaults, task_defaults

    cfg = resolve_defaults(compose("env=swimmer"))
    assert (cfg.env.num_envs, cfg.algo.rollout_steps) == (4, 512)
    hopper = resolve_defaults(compose())
    assert (hopper.env.num_envs, hopper.algo.rollout_steps) == (64, 32)
    # the command line wins, and is then not reported as the task's
    cfg = compose("env=swimmer", "env.num_envs=8")
    assert task_defaults(cfg) == {"algo.rollout_steps": 512}
    assert (resolve_defaults(cfg).env.num_envs, resolve_defaults(cfg).algo.rollout_steps) == (8, 512)


def test_existing_run_dir_is_not_overwritten(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("algo: {name: sac}\n")
    with pytest.raises(ConfigError, match="already holds a run; continue it with resume="):
        train(compose("algo=sac", *FAST), run_dir)


def test_a_run_is_not_written_into_a_sweep_s_directory(tmp_path):
    # it took the sweep's top directory, and robo-rl compare runs=<the sweep> then showed that run and none of the jobs
    sweep = tmp_path / "sweep"
    (sweep / "seed=0").mkdir(parents=True)
    (sweep / "seed=0" / "config.yaml").write_text("algo: {name: sac}\n")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    with pytest.raises(ConfigError, match=r"holds a -m sweep \(multirun.yaml\); choose another run_dir"):
        train(compose("algo=sac", "env=pendulum", "steps=40", "algo.critic_hidden=[16]", "policy.hidden_sizes=[16]",
                      "eval.episodes=1", "eval.num_envs=1", *FAST), sweep)
    assert sorted(p.name for p in sweep.iterdir()) == ["multirun.yaml", "seed=0"]


def test_resume_refuses_changing_the_run(tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose("algo=sac", "env=pendulum", "steps=300", "algo.learning_starts=100", "algo.critic_hidden=[16]",
                  "policy.hidden_sizes=[16]", "eval.episodes=1", "eval.num_envs=1", *FAST)
    train(cfg, run_dir)
    with pytest.raises(ConfigError, match="algo.tau cannot change on resume"):
        train(compose(f"resume={run_dir}", "algo=sac", "algo.tau=0.1"), Path("unused"), [f"resume={run_dir}", "algo.tau=0.1"])
    # composed with the saved run's learner and head, not the default PPO's: SAC's keys are known without algo=sac
    resumed = compose(f"resume={run_dir}", "algo.tau=0.1")
    assert (resumed.algo.name, resumed.policy.name) == ("sac", "gaussian")
    with pytest.raises(ConfigError, match="algo.tau cannot change on resume"):
        train(resumed, Path("unused"), [f"resume={run_dir}", "algo.tau=0.1"])
    for group in ("algo=td3", "env=hopper", "seed=1", "safety=box", "randomize=mild"):
        with pytest.raises(ConfigError, match=f"{group.split('=')[0]} cannot change on resume"):
            train(compose(f"resume={run_dir}", group), Path("unused"), [f"resume={run_dir}", group])
    # the run's own values are no change: the resume goes ahead (the run is complete, so it only reports)
    same = [f"resume={run_dir}", "algo=sac", "env=pendulum", "policy=gaussian", "seed=0", "algo.tau=0.005",
            "algo.learning_starts=100", "safety=none", "randomize=off"]
    assert train(compose(*same), Path("unused"), same)["steps"] >= 300
    # how the update is computed (the fused step or autograd: the same update) may change, as compile= may
    fused = [f"resume={run_dir}", "algo.fused=off"]
    assert train(compose(*fused), Path("unused"), fused)["steps"] >= 300


@pytest.mark.parametrize("algo", sorted(ALGO_SCHEMAS))
def test_python_api_defaults_match_the_cli(algo):
    """A learner built in Python (`PARL(policy)`) gets the defaults `robo-rl train algo=<a>` uses: the config
    schema and the constructor name the same options, and a default changed in one must change in the other."""
    import dataclasses
    import inspect

    from robo_rl.build import LEARNERS

    params = inspect.signature(LEARNERS[algo].__init__).parameters
    shared = 0
    for field in dataclasses.fields(ALGO_SCHEMAS[algo]):
        param = params.get(field.name)
        if param is None or param.default is inspect.Parameter.empty:
            continue
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        assert (tuple(default) if isinstance(default, list) else default) == param.default, field.name
        shared += 1
    assert shared >= 3  # the comparison really ran over the learner's options


@pytest.mark.parametrize("edit, words", [
    (("steps: ", "steps: [", 1), ["not valid YAML", "line"]),
    (("seed: ", "seedz: ", 1), ["seedz", "not in 'TrainConfig'"]),
    (("seed: 0", "seed: abc", 1), ["seed", "abc"]),
    (("name: sac", "name: sacx", 1), ["algo.name='sacx'"]),
])
def test_an_edited_or_damaged_run_config_is_named_on_resume(tmp_path, edit, words):
    from robo_rl.defaults import resolve_defaults
    from robo_rl.runs import load_run_config

    text = OmegaConf.to_yaml(resolve_defaults(compose("algo=sac")))
    (tmp_path / "config.yaml").write_text(text.replace(*edit))
    with pytest.raises(ValueError) as exc:
        load_run_config(tmp_path)
    assert str(tmp_path / "config.yaml") in str(exc.value) and all(w in str(exc.value) for w in words)
    (tmp_path / "config.yaml").write_text("- a list\n")
    with pytest.raises(ValueError, match="not a run config"):
        load_run_config(tmp_path)


def test_an_emptied_run_config_or_something_else_in_its_place_is_named(tmp_path):
    # an empty config.yaml read as "unknown algo.name=None or policy.name=None", and a directory in its place as missing
    from robo_rl.runs import load_run_config

    (tmp_path / "config.yaml").write_text("")
    with pytest.raises(ValueError) as exc:
        load_run_config(tmp_path)
    assert str(exc.value) == f"{tmp_path / 'config.yaml'} is empty; it was edited or damaged (a run writes its whole config there)"
    (tmp_path / "config.yaml").unlink()
    (tmp_path / "config.yaml").mkdir()
    with pytest.raises(FileNotFoundError) as exc:
        load_run_config(tmp_path)
    assert str(exc.value) == f"{tmp_path} is not a robo-rl run directory (config.yaml is a directory, not a run's config file)"
    (tmp_path / "config.yaml").rmdir()
    with pytest.raises(FileNotFoundError) as exc:
        load_run_config(tmp_path)
    assert str(exc.value) == f"{tmp_path} is not a robo-rl run directory (config.yaml missing)"


def test_the_python_api_refuses_what_the_cli_cannot_pass(tmp_path, monkeypatch):
    from robo_rl.train import compose_config

    with pytest.raises(TypeError, match=r"a list of key=value strings, e.g. compose_config\(\['algo=sac'\]\)"):
        compose_config("algo=sac")
    with pytest.raises(TypeError, match="a list of key=value strings"):
        compose_config(None)
    generated = compose_config(o for o in ["algo=sac", "steps=123"])  # a generator is read once, not used up
    with pytest.raises(ConfigError, match=r"unknown key 'stepz'; did you mean steps\?"):  # as the CLI says it
        compose_config(["stepz=10"])
    assert generated.algo.name == "sac" and generated.steps == 123
    monkeypatch.chdir(tmp_path)
    for run_dir in ("", "  ", 5):
        with pytest.raises(ConfigError, match="run_dir must name a directory"):
            train(compose("algo=sac", *FAST), run_dir)
    assert list(tmp_path.iterdir()) == []  # '' once trained into the working directory
    (tmp_path / "a_file").write_text("x")
    for run_dir, words in (("a_file", "that is a file, not a directory"),
                           ("a_file/run", "a_file is a file, so no directory can be made under it")):
        with pytest.raises(ConfigError, match=f"train\\(cfg, run_dir='{run_dir}'\\): {words}"):
            train(compose("algo=sac", *FAST), run_dir)
    # named in cfg, the directory is named by its key: resume= was reported as run_dir=
    with pytest.raises(ConfigError, match="resume=a_file: that is a file, not a directory"):
        train(compose("algo=sac", *FAST, "resume=a_file"))
    with pytest.raises(ConfigError, match="run_dir=a_file: that is a file, not a directory"):
        train(compose("algo=sac", *FAST, "run_dir=a_file"))
    for blank in ("", "  "):  # an unset shell variable: not a new run in a directory of its own
        with pytest.raises(ConfigError, match=f"resume='{blank}' is blank .*leave resume= out to start a new run"):
            train(compose("algo=sac", *FAST, f"resume='{blank}'"), "runs/x")
    with pytest.raises(TypeError, match="train\\(cfg\\) takes the config compose_config\\(\\[...\\]\\) returns, got dict"):
        train({"algo": {"name": "sac"}}, "runs/x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
    # a directory this user may not write in (root may write anywhere: os.access stands in for another user's view)
    import os

    import robo_rl.runs

    (tmp_path / "locked").mkdir()
    real_access = os.access
    monkeypatch.setattr(robo_rl.runs.os, "access", lambda p, mode: Path(p).name != "locked" and real_access(p, mode))
    for run_dir, words in (("locked/run", "locked is not writable by this user"),
                           ("locked", "that directory is not writable by this user")):
        with pytest.raises(ConfigError, match=f"train\\(cfg, run_dir='{run_dir}'\\): {words}, so the run cannot be"):
            train(compose("algo=sac", *FAST), run_dir)
    from robo_rl.commands.train import run_dir_problem

    assert "locked is not writable by this user" in run_dir_problem(["algo=sac", "run_dir=locked/run"])
    assert list((tmp_path / "locked").iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_run_dir_the_filesystem_refuses_is_named_before_any_work(tmp_path):
    # /proc takes no new directories whatever its permissions say (and root passes os.access everywhere): Hydra's
    # mkdir failed there with a traceback
    from robo_rl.commands.train import run_dir_problem
    from robo_rl.runs import directory_problem

    assert "run_dir=/proc/robo_rl_test/run: /proc does not accept new directories (" in run_dir_problem(
        ["algo=sac", "run_dir=/proc/robo_rl_test/run"])
    with pytest.raises(ConfigError, match="/proc does not accept new directories .*choose another path"):
        train(compose("algo=sac", *FAST), "/proc/robo_rl_test/run")
    assert directory_problem(tmp_path / "new" / "run") is None and directory_problem(tmp_path) is None
    assert list(tmp_path.iterdir()) == []  # the probe's directory is gone


def test_progress_lines_need_a_positive_interval():  # (FAST sets log.progress_seconds, so not in the table above)
    from robo_rl.defaults import resolve_defaults
    from robo_rl.validation import validate

    with pytest.raises(ConfigError, match=r"log.progress_seconds=0.0: must be > 0"):
        validate(resolve_defaults(compose("log.progress_seconds=0")))


@pytest.mark.parametrize("algo", sorted(ALGO_SCHEMAS))
def test_every_on_off_switch_of_a_learner_can_be_flipped(algo):
    # algo.anneal_lr=false was once refused as a learning rate that "must be > 0" (its name ends in _lr)
    from dataclasses import fields

    from robo_rl.defaults import resolve_defaults
    from robo_rl.validation import validate

    switches = [f for f in fields(ALGO_SCHEMAS[algo]) if f.type in (bool, "bool")]
    for f in switches:
        validate(resolve_defaults(compose(f"algo={algo}", f"algo.{f.name}={str(not f.default).lower()}")))
    assert switches or algo not in ("ppo", "gorl")  # PPO's anneal_lr at least


@pytest.mark.parametrize("overrides", [
    ["algo=sac", "policy.log_std_init=-1"],  # SAC's Gaussian: the network outputs the log std
    ["algo=gorl_sac", "policy.log_std_init=-1"],  # its latent Gaussian likewise
    ["algo=ppo", "policy.state_dependent_std=true", "policy.log_std_init=-1"],
])
def test_log_std_init_with_a_state_dependent_std_is_refused(overrides):
    # it was accepted and never read: GaussianHead makes a log_std parameter only for a state-independent std
    from robo_rl.defaults import resolve_defaults
    from robo_rl.validation import validate

    with pytest.raises(ConfigError, match=r"policy\.log_std_init=-1\.0: .*state_dependent_std=false"):
        validate(resolve_defaults(compose(*overrides)))


@pytest.mark.parametrize("overrides, refused", [
    (["algo=sac", "policy.unit_actions=false"], True),  # squashed: tanh's (-1, 1) is the box; nothing to keep in env units
    (["algo=expo", "policy=mixture", "policy.unit_actions=false"], True),
    (["algo=ppo", "policy.unit_actions=false"], False),  # unsquashed: SB3's convention, as runs saved before it
    (["algo=ppo", "policy=mixture", "policy.unit_actions=false"], False),
])
def test_unit_actions_false_is_refused_where_it_would_be_ignored(overrides, refused):
    from robo_rl.defaults import resolve_defaults
    from robo_rl.validation import validate

    cfg = resolve_defaults(compose(*overrides))
    if refused:
        with pytest.raises(ConfigError, match=r"policy\.unit_actions=False: .*policy\.squash=false"):
            validate(cfg)
    else:
        validate(cfg)


@pytest.mark.parametrize("overrides", [
    ["algo=ppo", "policy.log_std_init=-1"],  # state-independent std (PPO's default): the parameter starts there
    ["algo=gorl", "policy.log_std_init=-1"],
    ["algo=sac", "policy.state_dependent_std=false", "policy.log_std_init=-1"],
    ["algo=sac", "policy.log_std_init=0"],  # the default, written out
])
def test_log_std_init_is_accepted_where_it_sets_the_initial_std(overrides):
    from robo_rl.build import build_env, build_policy
    from robo_rl.defaults import resolve_defaults
    from robo_rl.validation import validate

    cfg = resolve_defaults(compose(*overrides, "env=pendulum"))
    validate(cfg)
    env = build_env(cfg)
    try:
        head = build_policy(cfg, env)
    finally:
        env.close()
    head = getattr(head, "latent", head)
    if not head.state_dependent_std:
        assert float(head.log_std[0]) == float(cfg.policy.log_std_init)


@pytest.mark.parametrize("algo", ["ppo", "gorl"])
def test_an_update_of_one_sample_is_refused(algo):
    # rollout_steps * num_envs = 1 passed validation and stopped at the first update with exit 1, as if training
    # had diverged: "non-finite explained_variance (nan)" (the variance of one return)
    from robo_rl.defaults import resolve_defaults
    from robo_rl.validation import validate

    with pytest.raises(ConfigError, match=r"algo\.rollout_steps=1: rollout_steps \* num_envs = 1"):
        validate(resolve_defaults(compose(f"algo={algo}", "env.num_envs=1", "algo.rollout_steps=1", "algo.minibatch_size=1")))
    validate(resolve_defaults(compose(f"algo={algo}", "env.num_envs=1", "algo.rollout_steps=2", "algo.minibatch_size=1")))


def test_task_keyword_arguments_may_exceed_float32():
    # env.kwargs go to gymnasium.make as float64 (inf bounds a range there): the float32 limit is for robo-rl's own keys
    from robo_rl.defaults import resolve_defaults
    from robo_rl.validation import validate

    validate(resolve_defaults(compose("env=pendulum", "env.kwargs.g=1e300")))
    with pytest.raises(ConfigError, match=r"policy\.obs_clip=1e\+300: .*\(also: env\.reward_clip\)"):
        validate(resolve_defaults(compose("env=pendulum", "policy.obs_clip=1e300", "env.reward_clip=-1e300")))


def test_compose_config_reads_a_config_dir_as_the_cli_does(tmp_path, monkeypatch):
    # robo-rl train --config-dir DIR from Python: DIR/<group>/<name>.yaml is <group>=<name>, checked by the schema
    from robo_rl.config import compose_config

    (tmp_path / "cfgs" / "env").mkdir(parents=True)
    (tmp_path / "cfgs" / "env" / "arm.yaml").write_text("id: Pendulum-v1\nmax_episode_steps: 50\n")
    monkeypatch.chdir(tmp_path)
    cfg = compose_config(["env=arm", "seed=2"], config_dir="cfgs")
    assert (cfg.env.id, cfg.env.max_episode_steps, cfg.seed) == ("Pendulum-v1", 50, 2)
    assert cfg.config_dir == str(tmp_path / "cfgs")  # recorded, absolute
    assert compose_config(["env=hopper"], config_dir="cfgs").env.id == "Hopper-v5"  # the packaged ones stay
    with pytest.raises(ConfigError, match="Could not find 'env/arm'"):
        compose_config(["env=arm"])
    (tmp_path / "cfgs" / "env" / "arm.yaml").write_text("id: Pendulum-v1\nmax_episode_step: 50\n")
    with pytest.raises(ConfigError, match=f"^{tmp_path}/cfgs/env/arm.yaml: unknown key 'env.max_episode_step'; "
                                          "did you mean env.max_episode_steps"):
        compose_config(["env=arm"], config_dir=tmp_path / "cfgs")
