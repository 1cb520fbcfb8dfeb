"""The fused SAC, TD3 and EXPO steps (hand-derived gradients, offpolicy_fused.py) compute the autograd path's update."""

import copy

import numpy as np
import pytest
import torch

from policies import build_head
from robo_rl.learners.base import Batch
from robo_rl.learners.sac import SAC
from robo_rl.learners.sac_lagrangian import LagrangianSAC
from robo_rl.learners.td3 import TD3

OBS, ACT, B = 11, 3, 64
LOW, HIGH = np.array([-2.0, -1.0, 0.1]), np.array([0.5, 1.0, 2.7])  # an asymmetric box: to_unit/from_unit matter


def learner(algo, fused, activation="relu", hidden=(32, 24), head_options=None, cls=None, **kw):
    torch.manual_seed(0)
    name = "deterministic" if algo == "td3" else "gaussian"
    head = build_head(name, OBS, LOW, HIGH, normalize_obs=True, hidden_sizes=hidden, activation=activation,
                      **(head_options or {}))
    head.obs_norm.update(torch.randn(500, OBS) * 2 + 1)
    cls = cls or (TD3 if algo == "td3" else SAC)
    if algo == "sac":
        kw.setdefault("init_alpha", 0.3)  # alpha's terms and Q's both matter
    return cls(head, fused=fused, critic_hidden=hidden, critic_activation=activation, **kw)


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    unit = torch.rand(B, ACT, generator=g) * 2 - 1
    actions = torch.as_tensor(LOW, dtype=torch.float32) + (unit + 1) / 2 * torch.as_tensor(HIGH - LOW, dtype=torch.float32)
    return Batch(torch.randn(B, OBS, generator=g) * 2, actions, torch.randn(B, generator=g),
                 torch.randn(B, OBS, generator=g) * 2, (torch.rand(B, generator=g) < 0.2).float())


def loss_args(learner_):
    return () if isinstance(learner_, TD3) else (learner_.log_alpha.detach().exp(),)


def autograd_gradients(learner_, data, seed=3):
    """(critic loss, mean Q, critic gradients, actor loss, actor gradients) of the autograd path."""
    args = loss_args(learner_)
    torch.manual_seed(seed)  # the target-smoothing noise (TD3), the next and current actions' draws (SAC)
    critic_loss, q_mean = learner_._critic_loss(data, *args)
    critic = torch.autograd.grad(critic_loss, learner_._critic_params)
    actor_loss = learner_._actor_loss(data.obs, *args)
    actor_loss = actor_loss if isinstance(learner_, TD3) else actor_loss[0]
    actor = torch.autograd.grad(actor_loss, learner_._actor_params)
    return critic_loss.detach(), q_mean, critic, actor_loss.detach(), actor


def fused_gradients(learner_, data, seed=3):
    step, args = learner_._fused_step, loss_args(learner_)
    torch.manual_seed(seed)
    critic_loss, q_mean, critic = step.critic_gradients(data, *args)
    actor_loss, *rest = step.actor_gradients(data.obs, *args)
    return critic_loss, q_mean, critic, actor_loss, rest[-1]


def relative_error(reference, other):
    return max(((r - o).abs().max() / r.abs().max()).item() for r, o in zip(reference, other))


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a.state_dict().values(), b.state_dict().values()) if x.is_floating_point())


CASES = [("td3", "relu", (32, 24), 2, {}), ("td3", "tanh", (32, 24), 2, {}), ("td3", "relu", (16,), 3, {}),
         ("td3", "tanh", (16, 16, 8), 1, {}), ("sac", "relu", (32, 24), 2, {}), ("sac", "tanh", (16, 16, 8), 3, {}),
         ("sac", "relu", (16,), 2, {"state_dependent_std": False, "log_std_init": -0.5}),
         # a first layer wide enough (128) for the actor's weight gradient to be taken as (x^T g)^T: linear_weight_grad
         ("td3", "relu", (128, 24), 2, {}), ("sac", "tanh", (128,), 2, {})]


@pytest.mark.parametrize("algo, activation, hidden, critics, head_options", CASES)
def test_fused_gradients_equal_autograds(algo, activation, hidden, critics, head_options):
    auto = learner(algo, "off", activation, hidden, head_options, num_critics=critics)
    fused = learner(algo, "on", activation, hidden, head_options, num_critics=critics)
    assert auto._fused_step is None and fused._fused_step is not None
    data = batch()
    expected, got = autograd_gradients(auto, data), fused_gradients(fused, data)
    for i in (0, 1, 3):  # critic loss, mean Q, actor loss
        assert float(got[i]) == pytest.approx(float(expected[i]), rel=1e-5, abs=1e-6)
    for i in (2, 4):  # critic, actor gradients: one per parameter, same shapes and order
        assert [g.shape for g in got[i]] == [g.shape for g in expected[i]]
        assert all(g.dtype == torch.float32 and g.is_contiguous() for g in got[i])
        assert relative_error(expected[i], got[i]) < 1e-5


def test_sac_log_std_clamp_passes_no_gradient_where_it_binds():
    # a state-independent log-std outside [LOG_STD_MIN, LOG_STD_MAX] on one dimension: autograd's clamp gives that
    # dimension no gradient, and the fused step must not either
    auto, fused = (learner("sac", f, head_options={"state_dependent_std": False}) for f in ("off", "on"))
    for sac in (auto, fused):
        with torch.no_grad():
            sac.policy.log_std.copy_(torch.tensor([3.0, 0.0, -25.0]))
    expected, got = autograd_gradients(auto, batch()), fused_gradients(fused, batch())
    log_std_grad = expected[4][0]  # the head's own parameter comes before its MLP's
    assert log_std_grad[0] == 0 and log_std_grad[2] == 0 and log_std_grad[1] != 0
    torch.testing.assert_close(got[4][0], log_std_grad, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("algo", ["td3", "sac"])
def test_fused_update_equals_autograd_over_several_updates(algo):
    auto, fused = learner(algo, "off"), learner(algo, "on")
    for k in range(5):  # TD3's policy_delay 2: its actor, and its targets, move on updates 2 and 4
        data = batch(seed=10 + k)
        torch.manual_seed(k)
        m_auto = auto.update(data)
        torch.manual_seed(k)
        m_fused = fused.update(data)
        assert set(m_auto) == set(m_fused)
        for key in m_auto:
            assert float(m_fused[key]) == pytest.approx(float(m_auto[key]), rel=1e-4, abs=1e-6), key
    if algo == "td3":
        assert set(m_auto) == {"critic_loss", "q_mean"} and int(fused.num_updates) == 5
    else:
        assert set(m_auto) == {"critic_loss", "actor_loss", "q_mean", "entropy", "alpha", "alpha_loss"}
        assert float(fused.log_alpha.detach()) != float(learner("sac", "on").log_alpha.detach())  # the temperature moved
    assert max_diff(auto, fused) < 1e-5  # parameters, targets, log alpha and the update counter
    for name, opt in auto.optimizers().items():
        sa, sf = opt.state_dict(), fused.optimizers()[name].state_dict()
        for i in sa["state"]:
            torch.testing.assert_close(sa["state"][i]["exp_avg"], sf["state"][i]["exp_avg"], rtol=1e-4, atol=1e-9)
            assert float(sa["state"][i]["step"]) == float(sf["state"][i]["step"]) == (2 if (algo, name) == ("td3", "actor") else 5)


@pytest.mark.parametrize("algo, hidden", [("td3", (32, 24)), ("sac", (32, 24)), ("td3", (128, 24))])
def test_fused_bf16_is_as_close_to_float32_as_autocast(algo, hidden):
    # precision=bf16: the fused step runs its matmuls in bfloat16 where autocast would. Both differ from float32 by
    # bfloat16's rounding (8 bits of mantissa: ~0.4% a value, more after a few layers); the fused step's gradients
    # must be no further from float32's than autocast's are (for TD3 here they are as far: 0.5% for the critic's,
    # 12% for the actor's first layer, whose gradient is small next to the rounding of what it is made from).
    reference = autograd_gradients(learner(algo, "off", hidden=hidden), batch())
    auto, fused = learner(algo, "off", hidden=hidden), learner(algo, "on", hidden=hidden)
    auto.autocast_update(torch.bfloat16)
    fused.autocast_update(torch.bfloat16)
    assert fused._fused_step.dtype == torch.bfloat16
    autocast, got = autograd_gradients(auto, batch()), fused_gradients(fused, batch())
    for i in (2, 4):
        err_autocast, err_fused = relative_error(reference[i], autocast[i]), relative_error(reference[i], got[i])
        assert 1e-4 < err_fused < max(2 * err_autocast, 0.02)  # bf16 was used, and no worse than autocast's
        assert all(g.dtype == torch.float32 for g in got[i])
    assert float(got[0]) == pytest.approx(float(reference[0]), rel=0.02)


@pytest.mark.parametrize("algo", ["td3", "sac"])
def test_bf16_casts_are_renewed_when_the_parameters_move(algo):
    # under bf16 an update casts each parameter once while it holds still: the critics' casts must be renewed after
    # the critic step (the actor loss reads the moved critics), every cast after the update. Uncached casts give
    # the reference: the same bfloat16 values, so the two learners must stay bit-identical
    cached, uncached = learner(algo, "on"), learner(algo, "on")
    for each in (cached, uncached):
        each.autocast_update(torch.bfloat16)
    uncached._fused_step.update = uncached._fused_step._update  # every cast made afresh
    for k in range(4):
        for each in (cached, uncached):
            torch.manual_seed(k)
            each.update(batch(seed=k))
    assert max_diff(cached, uncached) == 0.0 and max_diff(cached, learner(algo, "on")) > 1e-4


@pytest.mark.parametrize("algo", ["td3", "sac"])
def test_fused_state_survives_checkpoint_round_trip(algo):
    a = learner(algo, "on")
    a.update(batch())
    state = copy.deepcopy(a.training_state())
    b = learner(algo, "on")
    b.load_training_state(state)  # copies into the parameters the step reads
    for each in (a, b):
        torch.manual_seed(9)
        each.update(batch(seed=2))
    assert max_diff(a, b) == 0.0


def test_unsupported_learners_fall_back_or_explain():
    assert learner("td3", "auto", critic_layer_norm=True)._fused_step is None  # silently the autograd path
    with pytest.raises(ValueError, match="algo.fused=on: the fused TD3 step needs plain critic MLPs with relu or tanh "
                                         r"\(algo.critic_layer_norm=false\); use algo.fused=auto"):
        learner("td3", "on", critic_layer_norm=True)
    with pytest.raises(ValueError, match="algo.fused=on: the fused SAC step needs a plain actor MLP"):
        learner("sac", "on", activation="elu")
    with pytest.raises(ValueError, match="auto, on or off"):
        learner("td3", "yes")
    torch.manual_seed(0)
    head = build_head("gaussian", OBS, LOW, HIGH, hidden_sizes=(16,))
    assert LagrangianSAC(head, critic_hidden=(16,))._fused_step is None
    with pytest.raises(ValueError, match=r"the fused SAC step computes plain SAC's update, not LagrangianSAC's "
                                         r"\(sac_lagrangian\); use algo.fused=auto"):
        LagrangianSAC(head, critic_hidden=(16,), fused="on")


@pytest.mark.parametrize("algo", ["td3", "sac"])
def test_linear_critics_take_the_autograd_path(algo):
    # critic_hidden=() (the command line refuses it; the Python API builds linear critics): the fused step's
    # backward starts from a last hidden layer, so it must leave such critics to autograd rather than fail
    def build(fused):
        torch.manual_seed(0)
        head = build_head("deterministic" if algo == "td3" else "gaussian", OBS, LOW, HIGH, hidden_sizes=(16,))
        return (TD3 if algo == "td3" else SAC)(head, critic_hidden=(), fused=fused)

    auto, off = build("auto"), build("off")
    assert auto._fused_step is None
    for each in (auto, off):
        torch.manual_seed(0)
        each.update(batch())
    assert max_diff(auto, off) == 0.0
    with pytest.raises(ValueError, match=f"algo.fused=on: the fused {algo.upper()} step needs critics with at least "
                                         r"one hidden layer \(critic_hidden\); use algo.fused=auto"):
        build("on")


class TD3BC(TD3):
    """TD3 with a behaviour-cloning term in the actor loss (Fujimoto and Gu 2021's shape): a user's subclass."""

    def actor_loss(self, obs):
        return super().actor_loss(obs) + self.policy.sample(obs)[0].square().mean()


def test_a_td3_subclass_takes_the_autograd_path():
    # the fused step computes plain TD3's losses, never the subclass's: under fused=auto (the default) it would
    # drop the override without a word, so the subclass's update must be the autograd one, bit for bit
    auto, off = (learner("td3", fused, policy_delay=1, cls=TD3BC) for fused in ("auto", "off"))
    assert auto._fused_step is None
    for each in (auto, off):
        torch.manual_seed(0)
        each.update(batch())
    assert max_diff(auto, off) == 0.0
    with pytest.raises(ValueError, match="algo.fused=on: the fused TD3 step computes plain TD3's update, not "
                                         "TD3BC's; use algo.fused=auto"):
        learner("td3", "on", cls=TD3BC)


@pytest.mark.parametrize("fused", ["on", "off"])
@pytest.mark.parametrize("algo", ["td3", "sac"])
def test_a_deep_copy_of_a_learner_trains_as_the_original(algo, fused):
    # copy.deepcopy kept torch's optimizer state but not FusedAdam's own attributes: the copy's first update failed
    # ("'FusedAdam' object has no attribute '_fused'"), on either path
    original = learner(algo, fused)
    original.update(batch())
    twin = copy.deepcopy(original)
    for each in (original, twin):
        torch.manual_seed(4)
        each.update(batch(seed=7))
    assert max_diff(original, twin) == 0.0 and max_diff(original, learner(algo, fused)) > 0.0


@pytest.mark.parametrize("wrap", ["compile", "autocast"])
def test_a_deep_copy_of_a_learner_with_wrapped_losses_trains_as_the_original(wrap):
    # compile=true and precision=bf16 wrap the losses in functions that closed over the learner: a deep copy kept the
    # original's, so its updates computed their losses (and gradients) on the original's networks
    original = learner("sac", "off")
    if wrap == "compile":
        original.compile_update(backend="eager")  # dynamo without inductor: the same wrapping, no C++ build
    else:
        original.autocast_update()
    original.update(batch())
    twin = copy.deepcopy(original)
    for each in (original, twin):  # the original first: a twin reading its networks would now see other weights
        torch.manual_seed(4)
        each.update(batch(seed=7))
    assert max_diff(original, twin) == 0.0


@pytest.mark.parametrize("algo, precision", [("td3", "fp32"), ("sac", "fp32"), ("sac", "bf16")])
def test_compile_runs_the_fused_step_as_compiled_graphs(algo, precision):
    # compile=true: the fused step's gradient computations become compiled C++ graphs, which draw the same noise
    # (torch's generator: the target smoothing, SAC's action samples) and compute the eager fused step's update
    eager, compiled = learner(algo, "auto"), learner(algo, "auto")
    compiled.compile_update()
    for each in (eager, compiled) if precision == "bf16" else ():
        each.autocast_update()
    assert compiled._fused
    step = compiled._fused_step
    assert all(hasattr(f, "_torchdynamo_orig_callable") for f in (step.critic_gradients, step.actor_gradients))
    for seed in (7, 8, 9):  # TD3's delayed actor steps on the second
        for each in (eager, compiled):
            torch.manual_seed(seed)
            each.update(batch(seed))
    assert max_diff(eager, learner(algo, "auto")) > 5e-4  # both trained (3 Adam steps), alike to float rounding:
    assert max_diff(eager, compiled) < (1e-4 if precision == "bf16" else 1e-5)
    # the autograd path's losses are compiled too, for when the learner leaves the fused step (fused=off, a move)
    assert "_critic_loss" in compiled.__dict__
    # a deep copy runs its own compiled step (the graphs compiled the original's, bound to the copy), as the original
    twin = copy.deepcopy(compiled)
    for each in (compiled, twin):  # the original first: a twin computing on its networks would see other weights
        torch.manual_seed(10)
        each.update(batch(10))
    assert max_diff(compiled, twin) == 0.0


def test_compiled_losses_draw_the_noise_the_eager_ones_draw():
    # the autograd path's compiled losses (fused=off, a learner moved or cast off the fused step, and every learner
    # without one: PA-RL, GoRL-SAC, Lagrangian SAC) drew inductor's own random numbers: compile=true trained on
    # other target-smoothing noise than compile=false. In float64 rounding is ~1e-12; other noise moves it by ~1e-3.
    eager, compiled = learner("td3", "off").double(), learner("td3", "off").double()
    compiled.compile_update()
    for each in (eager, compiled):  # one update: the critic's, on noisy targets (the actor steps on the second)
        torch.manual_seed(7)
        each.update(Batch(*(t.double() for t in batch(7))))
    assert max_diff(eager, learner("td3", "off").double()) > 1e-4
    assert max_diff(eager, compiled) < 1e-9


def test_each_compiled_gradient_computation_has_its_own_compiled_code():
    # dynamo keeps compiled code per code object and recompiles on a miss, up to recompile_limit (8) entries. Compiled
    # through their no_grad decorator, every step's critic and actor gradients shared one code object: a learner took
    # two entries, and in a multirun the fifth job with another network shape or precision ran eager (torch's warning
    # on the console). Each function compiles once here, without a recompile.
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        each = learner("td3", "auto")
        each.compile_update()
        for seed in (1, 2):  # the actor steps on the second
            each.update(batch(seed))
    assert max_diff(each, learner("td3", "auto")) > 0.0


@pytest.mark.parametrize("algo, said", [
    ("td3", "compile=true: the first update compiles the fused step's gradient computations"),
    ("sac", "compile=true: the first update compiles the fused step's gradient computations"),
    ("expo", "compile=true: the first update compiles the fused step's gradient computations and td_target"),
    ("parl", "compile=true: the first update compiles the loss computations (critic_loss)"),
    ("ppo", "compile=true: nothing ppo's update runs here is compiled, so it changes nothing"),  # its numpy step runs
    ("gorl", "compile=true: nothing gorl's update runs here is compiled, so it changes nothing"),  # no losses to compile
    # SAC's update with GoRL-SAC's own losses (through the frozen decoder): README said it compiled nothing
    ("gorl_sac", "compile=true: the first update compiles the loss computations (critic_loss, actor_loss)"),
])
def test_compile_says_at_start_up_what_it_compiles(algo, said, caplog):
    # GoRL (PPO's numpy step inside, a decoder refit) and PPO on the CPU run nothing compile=true compiles: the
    # start-up log said the first update would compile, and the option silently did nothing
    from robo_rl.build import build_env, build_learner, build_policy
    from robo_rl.defaults import resolve_defaults
    from tests.helpers import compose

    cfg = resolve_defaults(compose(f"algo={algo}", "env=pendulum", "compile=true"))
    env = build_env(cfg, num_envs=1, vectorization="sync", randomize=False)
    try:
        with caplog.at_level("INFO", logger="robo_rl"):
            build_learner(cfg, build_policy(cfg, env))  # compiling waits for the first update: nothing is built here
    finally:
        env.close()
    assert said in caplog.text


def test_train_says_what_compile_does_after_its_opening_line(tmp_path):
    # build_learner logged the compile line as it built the learner, before train() had said what the run is: the
    # console and train.log opened with "compile=true: ..." above "robo-rl: td3 on ..."
    import logging

    from robo_rl.train import compose_config, train
    from tests.helpers import robo_rl_records

    run_dir = tmp_path / "run"
    with robo_rl_records(logging.INFO) as records:  # (no update: steps end before algo.learning_starts, so nothing
        train(compose_config(["algo=td3", "env=pendulum", "compile=true", "steps=20",  # is compiled)
                              "algo.learning_starts=100", "eval.episodes=1", "log.tensorboard=false", "log.plot=false",
                              f"run_dir={run_dir}"]))
    lines = [r.getMessage() for r in records]
    said = "compile=true: the first update compiles"
    opening = [i for i, line in enumerate(lines) if line.startswith("robo-rl: td3 on Pendulum-v1")]
    compiled = [i for i, line in enumerate(lines) if line.startswith(said)]
    assert len(opening) == 1 and len(compiled) == 1 and opening[0] < compiled[0]
    assert any(" over 1 episode (length " in line for line in lines)  # (was "over 1 episodes")
    log_lines = (run_dir / "train.log").read_text().splitlines()
    assert "robo-rl: td3 on Pendulum-v1" in log_lines[0] and said in log_lines[1]


def test_compile_without_a_cpp_compiler_fails_at_start_up():
    # inductor builds its C++ kernels at the first update, after algo.learning_starts: without a compiler the run
    # would end there, so building the learner says so
    from torch._inductor import config as inductor_config
    from torch._inductor.cpp_builder import cpp_compiler_search

    from robo_rl.build import build_env, build_learner, build_policy
    from robo_rl.defaults import resolve_defaults
    from robo_rl.validation import ConfigError
    from tests.helpers import compose

    cfg = resolve_defaults(compose("algo=td3", "env=pendulum", "compile=true"))
    env = build_env(cfg, num_envs=1, vectorization="sync", randomize=False)
    # inductor's own patch: monkeypatch's undo deleted cpp.cxx, so every later compile in the process failed
    cpp_compiler_search.cache_clear()
    compilers = inductor_config.cpp.cxx
    try:
        with inductor_config.patch({"cpp.cxx": ("no-such-c++-compiler",)}), pytest.raises(
                ConfigError, match="^compile=true: torch.compile needs a C\\+\\+ compiler on the CPU and found none it can "
                                   "run .*or set compile=false$"):
            build_learner(cfg, build_policy(cfg, env))
        assert inductor_config.cpp.cxx == compilers  # put back: later compiles in the process find their compiler
    finally:
        cpp_compiler_search.cache_clear()
        env.close()


def test_compile_without_pythons_headers_fails_at_start_up(tmp_path, monkeypatch):
    # inductor builds its kernels as Python extension modules: without Python.h (a Python without its -dev package)
    # the first update's build failed, after algo.learning_starts
    import sysconfig

    from robo_rl.build import build_env, build_learner, build_policy
    from robo_rl.defaults import resolve_defaults
    from robo_rl.validation import ConfigError
    from tests.helpers import compose

    cfg = resolve_defaults(compose("algo=sac", "env=pendulum", "compile=true"))
    env = build_env(cfg, num_envs=1, vectorization="sync", randomize=False)
    policy = build_policy(cfg, env)
    env.close()
    build_learner(cfg, policy)  # this Python has its headers
    get_path = sysconfig.get_path
    monkeypatch.setattr(sysconfig, "get_path", lambda name, *a, **kw: str(tmp_path) if name == "include"
                        else get_path(name, *a, **kw))
    with pytest.raises(ConfigError, match=f"^compile=true: torch.compile builds its C\\+\\+ kernels against Python's "
                                          f"headers, and {tmp_path} has no Python.h; install them .*or set compile=false$"):
        build_learner(cfg, policy)


def test_a_learner_moved_off_the_cpu_leaves_the_fused_step():
    # the meta device stands in for cuda (no GPU here)
    assert not learner("sac", "auto").to("meta")._fused
    with pytest.raises(ValueError, match="algo.fused=on: the fused TD3 step runs on CPU only, and this learner was "
                                         "moved to meta; use algo.fused=auto"):
        learner("td3", "on").to("meta")._fused


@pytest.mark.parametrize("algo", ["td3", "sac"])
def test_a_learner_cast_from_float32_leaves_the_fused_step(algo):
    # learner.double() after construction: the fused step computes in float32 (it casts the batch to it), so under
    # fused=auto it must leave the update to autograd, which runs in float64, instead of failing on mixed dtypes
    auto, off = learner(algo, "auto").double(), learner(algo, "off").double()
    assert not auto._fused
    data = Batch(*(t.double() for t in batch()))
    for each in (auto, off):
        torch.manual_seed(0)
        each.update(data)
    assert max_diff(auto, off) == 0.0
    with pytest.raises(ValueError, match=f"algo.fused=on: the fused {algo.upper()} step needs float32 parameters, and "
                                         "this learner was cast to torch.float64; use algo.fused=auto"):
        learner(algo, "on").double()._fused


@pytest.mark.parametrize("algo", ["td3", "sac"])
@pytest.mark.parametrize("part", ["critic", "actor"])
def test_a_frozen_parameter_leaves_the_fused_step(algo, part):
    # the fused step computes every gradient itself: a parameter frozen after construction (requires_grad_(False)) was
    # trained on as if it were not. Under fused=auto the update goes to autograd, which refuses it as with fused=off;
    # fused=on names the frozen parameter
    outcomes = []
    for fused in ("auto", "off"):
        each = learner(algo, fused)
        frozen = (each._critic_params if part == "critic" else each._actor_params)[-2].requires_grad_(False)  # a weight
        before = frozen.clone()
        assert not each._fused
        with pytest.raises(RuntimeError, match="does not require grad") as err:
            for _ in range(2):  # (TD3's actor steps every second update)
                each.update(batch())
        outcomes.append(str(err.value))
        assert torch.equal(frozen, before)
    assert outcomes[0] == outcomes[1]
    each = learner(algo, "on")
    (each._critic_params if part == "critic" else each._actor_params)[-1].requires_grad_(False)  # a bias
    with pytest.raises(ValueError, match=f"algo.fused=on: the fused {algo.upper()} step trains every parameter of its "
                                         r"networks, and 1 of this learner's were frozen \(requires_grad=False\); use "
                                         "algo.fused=auto"):
        each.update(batch())


# -- EXPO: the critic, edit-policy and temperature steps fused; the base's imitation step stays autograd's ----------

def expo(fused, cls=None, **kw):
    from robo_rl.learners.expo import EXPO

    torch.manual_seed(0)
    head = build_head("flow", OBS, LOW, HIGH, normalize_obs=True, hidden_sizes=(32, 32), steps=2)
    head.obs_norm.update(torch.randn(500, OBS) * 2 + 1)
    kw = {"critic_hidden": (32, 24), "edit_hidden": (32, 24), "init_alpha": 0.3, **kw}
    return (cls or EXPO)(head, fused=fused, **kw)


def expo_autograd_gradients(learner_, data, seed=3):
    """(critic loss, critic gradients, edit loss, edit gradients) of EXPO's autograd path, one update's worth."""
    base = learner_.base
    torch.manual_seed(seed)
    critic_loss, _, base_actions = learner_._critic_loss(data, edit_samples=True)
    critic = torch.autograd.grad(critic_loss, learner_._critic_params)
    sample, drawn = learner_.edit.sample, []
    learner_.edit.sample = lambda obs, actions: drawn.append(sample(obs, actions)) or drawn[-1]  # to count clipping
    edit_loss, _ = learner_.edit_loss(data.obs, base_actions, learner_.log_alpha.detach().exp())
    edit = torch.autograd.grad(edit_loss, learner_._edit_params)
    shifted = base_actions + drawn[0][0].detach()
    clipped = int(((shifted > base.action_high) | (shifted < base.action_low)).sum())
    return critic_loss.detach(), critic, edit_loss.detach(), edit, clipped


def expo_fused_gradients(learner_, data, seed=3):
    step, base = learner_._fused_step, learner_.base
    torch.manual_seed(seed)
    target, base_actions = learner_._td_target(data, edit_samples=True)
    obs_n = base.obs_norm(data.obs)
    critic_loss, _, critic = step.critic_gradients(torch.cat([obs_n, base.to_unit(data.actions)], -1), target)
    edit_loss, _, edit = step.actor_gradients(obs_n, base_actions, learner_.log_alpha.detach().exp())
    return critic_loss, critic, edit_loss, edit


@pytest.mark.parametrize("options", [{}, {"edit_scale": 2.0}, {"edit_activation": "tanh", "num_critics": 3},
                                     {"edit_hidden": (16,), "critic_hidden": (16, 16, 8)}])
def test_fused_expo_gradients_equal_autograds(options):
    # an untrained flow base puts many actions on the box's bounds, and edit_scale=2 (edits of up to the whole box
    # width) pushes more past them: there the clip passes no gradient (the test checks that clipping happened)
    auto, fused = expo("off", **options), expo("on", **options)
    assert auto._fused_step is None and fused._fused
    data = batch()
    expected, got = expo_autograd_gradients(auto, data), expo_fused_gradients(fused, data)
    assert expected[4] > 0
    for i in (0, 2):  # critic loss, edit loss
        assert float(got[i]) == pytest.approx(float(expected[i]), rel=1e-5, abs=1e-6)
    for i in (1, 3):  # critic, edit-policy gradients: one per parameter, same shapes and order
        assert [g.shape for g in got[i]] == [g.shape for g in expected[i]]
        assert all(g.dtype == torch.float32 and g.is_contiguous() for g in got[i])
        assert relative_error(expected[i], got[i]) < 1e-5


def test_the_edit_clip_passes_gradient_as_torchs_minimum_and_maximum():
    # a tie with the bound passes half the gradient in torch: an edited action exactly on a bound
    from robo_rl.learners.offpolicy_fused import _bound_grad

    x = torch.tensor([[-2.0, 0.5, 1.0], [0.5, 0.5, 3.0]], requires_grad=True)
    bound, grad = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    for clip, passes in ((torch.minimum, x < bound), (torch.maximum, x > bound)):
        (expected,) = torch.autograd.grad(clip(x, bound), x, grad)
        torch.testing.assert_close(_bound_grad(grad, x.detach(), bound, passes), expected, rtol=0, atol=0)


def test_fused_expo_update_equals_autograd_over_several_updates():
    auto, fused = expo("off"), expo("on")
    for k in range(4):
        data = batch(seed=10 + k)
        torch.manual_seed(k)
        m_auto = auto.update(data)
        torch.manual_seed(k)
        m_fused = fused.update(data)
        assert list(m_auto) == list(m_fused) == ["critic_loss", "q_mean", "edit_loss", "base_loss", "alpha",
                                                  "edit_entropy"]  # metrics.csv's columns, in the same order
        for key in m_auto:
            assert float(m_fused[key]) == pytest.approx(float(m_auto[key]), rel=1e-4, abs=1e-6), key
    assert float(fused.log_alpha.detach()) != float(expo("on").log_alpha.detach())  # the temperature moved
    assert max_diff(auto, fused) < 1e-5 and max_diff(fused, expo("on")) > 1e-4
    for name, opt in auto.optimizers().items():
        sa, sf = opt.state_dict(), fused.optimizers()[name].state_dict()
        for i in sa["state"]:
            torch.testing.assert_close(sa["state"][i]["exp_avg"], sf["state"][i]["exp_avg"], rtol=1e-4, atol=1e-9)
    twin = copy.deepcopy(fused)  # a copy trains its own networks, as the original
    for each in (fused, twin):
        torch.manual_seed(4)
        each.update(batch(seed=7))
    assert max_diff(fused, twin) == 0.0


def test_expo_learners_the_fused_step_cannot_run():
    from robo_rl.learners.expo import EXPO

    class EditedEXPO(EXPO):
        pass

    assert expo("auto", critic_layer_norm=True)._fused_step is None
    assert expo("auto", edit_activation="elu")._fused_step is None
    assert expo("auto", cls=EditedEXPO)._fused_step is None
    with pytest.raises(ValueError, match=r"algo.fused=on: the fused EXPO step needs a plain edit policy MLP with relu or "
                                         r"tanh \(no layer norm\); use algo.fused=auto"):
        expo("on", edit_activation="elu")
    with pytest.raises(ValueError, match="the fused EXPO step computes plain EXPO's update, not EditedEXPO's"):
        expo("on", cls=EditedEXPO)
    # autocast (the Python API: precision=bf16 is refused for EXPO) casts the critic loss only: EXPO leaves the fused
    # step, whose edit loss would multiply in bf16
    auto = expo("auto")
    auto.autocast_update()
    assert auto._fused_step is None
    with pytest.raises(ValueError, match="algo.fused=on: the fused EXPO step computes in float32 only"):
        expo("on").autocast_update()
    frozen = expo("auto")
    frozen.log_alpha.requires_grad_(False)
    assert not frozen._fused  # the step would go on tuning it


def test_compile_runs_the_fused_expo_step_and_its_td_target_compiled():
    # compile=true for EXPO: the fused step's gradient computations and the TD target it calls (the base's sampling
    # chain, the edits, the target critics' scores) run compiled, drawing torch's noise as the eager step does
    eager, compiled = expo("auto"), expo("auto")
    assert compiled.compile_update() == "the fused step's gradient computations and td_target"
    step = compiled._fused_step
    assert all(hasattr(f, "_torchdynamo_orig_callable") for f in (step.critic_gradients, step.actor_gradients,
                                                                   compiled._td_target))
    for seed in (7, 8):
        for each in (eager, compiled):
            torch.manual_seed(seed)
            each.update(batch(seed))
    assert max_diff(eager, expo("auto")) > 5e-4 and max_diff(eager, compiled) < 1e-5


@pytest.mark.parametrize("fused, denoiser, written_out", [("auto", "mlp", True), ("off", "mlp", False),
                                                          ("auto", "residual", False)])
def test_expo_trains_a_flow_base_with_its_written_out_backward_on_the_fused_path(monkeypatch, fused, denoiser, written_out):
    from robo_rl.learners.expo import EXPO

    torch.manual_seed(0)
    head = build_head("flow", OBS, LOW, HIGH, hidden_sizes=(16, 16), steps=2, denoiser=denoiser)
    each = EXPO(head, fused=fused, critic_hidden=(16, 16), edit_hidden=(16,))
    calls = []
    gradients = head.imitation_gradients
    monkeypatch.setattr(head, "imitation_gradients", lambda *a: calls.append(1) or gradients(*a))
    before = [p.clone() for p in head.parameters()]
    each.update(batch())
    assert len(calls) == written_out and all(not torch.equal(a, b) for a, b in zip(before, head.parameters()))
