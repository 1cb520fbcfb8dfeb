"""The MuJoCo Warp backend, on Warp's CPU device (no GPU here): contract, agreement, randomization.

The first run compiles Warp's kernels (tens of seconds); later runs use ~/.cache/warp.
"""

import logging

import pytest
import torch

pytest.importorskip("mujoco_warp")
from envs import make_env  # noqa: E402


@pytest.fixture(scope="module")
def pair():
    warp_env = make_env("Hopper-v5", 3, backend="mjwarp", device="cpu")
    exact = make_env("Hopper-v5", 3, backend="mujoco")
    return warp_env, exact


def test_tracks_the_exact_backend_within_float32(pair):
    warp_env, exact = pair
    assert torch.equal(warp_env.reset(seed=0), exact.reset(seed=0))  # same reset noise, same layout
    g = torch.Generator().manual_seed(0)
    for t in range(40):
        a = torch.rand(3, 3, generator=g) * 2 - 1
        rw, re = warp_env.step(a), exact.step(a)
        assert (rw.obs - re.obs).abs().max() < 1e-3, f"step {t}"  # float32 vs float64 physics
        assert (rw.reward - re.reward).abs().max() < 1e-3
        assert torch.equal(rw.terminated, re.terminated) and torch.equal(rw.truncated, re.truncated)
    assert rw.obs.device == warp_env.device and rw.obs.dtype == torch.float32


def test_step_before_the_first_reset_is_refused_and_a_loaded_snapshot_needs_none(pair):
    # as on every backend (envs/base.py): it stepped from the unseeded state the env was built in
    fresh = make_env("Hopper-v5", 3, backend="mjwarp", device="cpu")
    with pytest.raises(RuntimeError, match=r"Hopper-v5: step\(\) before the first reset\(\); call env.reset"):
        fresh.step(torch.zeros(3, 3))
    warp_env = pair[0]
    warp_env.reset(seed=0)
    snap = warp_env.state_dict()
    fresh.load_state_dict(snap)  # no reset(): a loaded state is one to continue from
    assert torch.equal(fresh.step(torch.full((3, 3), 0.3)).obs, warp_env.step(torch.full((3, 3), 0.3)).obs)


def test_render_and_snapshot_need_a_reset_and_every_method_after_close_names_the_task():
    # as on every backend (envs/base.py): they drew and saved the unseeded state the env was built in, and after close
    # state_dict, load_state_dict, set_physics_params and render still ran (async gymnasium raised there)
    from tests.helpers import check_reset_first_and_closed_named

    check_reset_first_and_closed_named(make_env("Hopper-v5", 2, backend="mjwarp", device="cpu",
                                                randomize={"body_mass_scale": [1.0, 1.0]}),
                                       simulation=lambda e: e.d)  # close() frees the worlds' data


def test_randomized_gravity_and_snapshot():
    env = make_env("Hopper-v5", 2, backend="mjwarp", device="cpu", randomize={"gravity_scale": [0.0, 0.0]})
    z0 = env.reset(seed=0)[:, 0]
    for _ in range(20):
        obs = env.step(torch.zeros(2, 3)).obs
    assert torch.allclose(obs[:, 0], z0, atol=0.002)  # floats without gravity
    snap = env.state_dict()
    a = env.step(torch.full((2, 3), 0.3)).obs
    env.load_state_dict(snap)
    b = env.step(torch.full((2, 3), 0.3)).obs
    assert torch.allclose(a, b, atol=1e-6)
    env.set_physics_params({"gravity_scale": [[1.0], [0.0]]})  # fixed: world 0 falls again, world 1 floats
    z0 = env.reset(seed=0)[:, 0]
    for _ in range(20):
        obs = env.step(torch.zeros(2, 3)).obs
    assert float(obs[0, 0]) < float(z0[0]) - 0.01 and abs(float(obs[1, 0] - z0[1])) < 0.002
    assert env.physics_params()["gravity_scale"].flatten().tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="body_mass_scale cannot be set, only the factors this env randomizes"):
        env.set_physics_params({"body_mass_scale": [[1.2, 1.2, 1.2, 1.2, 1.2]]}, ids=[0])


def test_a_world_ending_its_episode_leaves_the_others_alone_under_mass_randomization():
    # each world has its own masses, and its own constants derived from them (set_const at its reset)
    def world_1(push_world_0):
        env = make_env("Hopper-v5", 2, backend="mjwarp", device="cpu", randomize={"body_mass_scale": [0.5, 1.5]})
        env.reset(seed=0)
        a = torch.zeros(2, 3)
        a[0] = -1.0 if push_world_0 else 0.0  # full torque: world 0 falls (measured: ends at steps 6 and 12)
        obs, rewards, ended = [], [], torch.zeros(2, dtype=torch.bool)
        for _ in range(15):
            r = env.step(a)
            obs.append(r.obs[1])
            rewards.append(r.reward[1])
            ended |= r.terminated | r.truncated
        return torch.stack(obs), torch.stack(rewards), ended

    pushed, calm = world_1(True), world_1(False)
    assert pushed[2].tolist() == [True, False] and not calm[2].any()  # only world 0 reset, and only when pushed
    assert torch.equal(pushed[0], calm[0]) and torch.equal(pushed[1], calm[1])


def test_reset_without_a_seed_continues_the_seeded_generators(pair):
    env = pair[0]
    first = [env.reset(seed=0), env.reset(), env.reset()]
    again = [env.reset(seed=0), env.reset(), env.reset()]
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert not torch.equal(first[1], first[2])


def test_seeds_beyond_64_bits_reset_as_on_the_exact_backend(pair):
    # any integer >= 0 is a seed (gymnasium's generators take it): torch's noise generator raised "Overflow when
    # unpacking long long" for seeds >= 2**64, after the reset noise generators had been reseeded
    warp_env, exact = pair
    for seed in (2**64 - 1, 2**64 + 5):
        assert torch.equal(warp_env.reset(seed=seed), exact.reset(seed=seed))


def test_renders(pair):
    pair[0].reset(seed=0)
    frame = pair[0].render(0)
    assert frame.shape[2] == 3 and frame.std() > 5


def test_humanoid_models_run_with_newton_and_track_the_exact_backend(caplog, monkeypatch):
    # gymnasium's humanoid XMLs name the PGS solver, which MuJoCo Warp lacks: it switches to Newton, says so
    monkeypatch.setattr(logging.getLogger("robo_rl"), "propagate", True)  # a CLI test may have turned it off
    with caplog.at_level("WARNING", logger="robo_rl"):  # a child of robo_rl's: the console and train.log
        warp_env = make_env("HumanoidStandup-v5", 2, backend="mjwarp", device="cpu")
    assert "no PGS solver" in caplog.text and warp_env.solver_note
    exact = make_env("HumanoidStandup-v5", 2, backend="mujoco")
    assert torch.allclose(warp_env.reset(seed=3), exact.reset(seed=3), atol=1e-5)
    g = torch.Generator().manual_seed(0)
    for t in range(20):
        a = torch.rand(2, 17, generator=g) * 0.8 - 0.4
        rw, re = warp_env.step(a), exact.step(a)
        assert (rw.obs[:, :45] - re.obs[:, :45]).abs().max() < 1e-3, f"qpos/qvel at step {t}"
        assert (rw.obs - re.obs).abs().max() < 0.05, f"inertia/velocity/force terms at step {t}"
        assert torch.allclose(rw.reward, re.reward, rtol=1e-4, atol=1e-3), f"reward at step {t}"


def test_a_model_warp_cannot_take_is_named(tmp_path):
    # gymnasium's Reacher with MuJoCo's forward/inverse comparison turned on, which MuJoCo Warp does not implement
    from pathlib import Path

    import gymnasium

    xml = (Path(gymnasium.__file__).parent / "envs/mujoco/assets/reacher.xml").read_text()
    option = '<option gravity="0 0 -9.81" integrator="RK4" timestep="0.01"/>'
    assert option in xml
    (tmp_path / "reacher.xml").write_text(xml.replace(option, option[:-2] + '><flag fwdinv="enable"/></option>'))
    with pytest.raises(ValueError, match="MuJoCo Warp cannot simulate Reacher-v5's model .*mjENBL_FWDINV.*env.backend=mujoco"):
        make_env("Reacher-v5", 2, backend="mjwarp", device="cpu", kwargs={"xml_file": str(tmp_path / "reacher.xml")})


def test_contact_forces_after_a_reset_with_an_acceleration_sensor(tmp_path):
    # a custom model with a framelinacc sensor: MuJoCo's forward computes cfrc_ext at a reset (gymnasium observes
    # it); they used to be zeroed there, and the other worlds' post-step values overwritten by that forward
    from pathlib import Path

    import gymnasium

    xml = (Path(gymnasium.__file__).parent / "envs/mujoco/assets/humanoidstandup.xml").read_text()
    (tmp_path / "standup.xml").write_text(
        xml.replace("</mujoco>", '<sensor><framelinacc objtype="body" objname="torso"/></sensor></mujoco>'))
    kwargs = {"xml_file": str(tmp_path / "standup.xml")}
    warp_env = make_env("HumanoidStandup-v5", 2, backend="mjwarp", device="cpu", kwargs=kwargs, max_episode_steps=2)
    exact = make_env("HumanoidStandup-v5", 2, backend="mujoco", kwargs=kwargs, max_episode_steps=2)
    ow, oe = warp_env.reset(seed=3), exact.reset(seed=3)
    assert oe[:, -78:].abs().max() > 1.0  # cfrc_ext, the last 78 terms: the body lies on the floor
    assert torch.allclose(ow, oe, rtol=1e-3, atol=0.05)
    a = torch.full((2, 17), 0.1)
    for t in range(3):  # the time limit resets both worlds at step 2
        rw, re = warp_env.step(a), exact.step(a)
        assert torch.allclose(rw.obs, re.obs, rtol=1e-3, atol=0.05), f"step {t}"
    kept = warp_env._cfrc_ext[1].clone()
    warp_env._reset_worlds(torch.tensor([True, False]))  # world 1 goes on with its post-step contact forces
    assert torch.equal(warp_env._cfrc_ext[1], kept)


def test_a_task_warp_does_not_run_is_refused_naming_this_backend():
    # it used to say "env.backend=mujoco has no task", to a user who asked for mjwarp
    with pytest.raises(ValueError, match=r"env.backend=mjwarp has no task 'Pendulum-v1'.*env.backend=gymnasium"):
        make_env("Pendulum-v1", 2, backend="mjwarp", device="cpu")
    with pytest.raises(ValueError, match="device=cuda or device=cpu"):
        make_env("Hopper-v5", 2, backend="mjwarp", device="meta")


def test_a_mujoco_warp_without_per_world_model_arrays_is_named(monkeypatch):
    # put_model(batch_sizes=) first shipped in mujoco-warp 3.10 (3.9.0.1's is put_model(mjm)): with an older release
    # every env failed in its constructor with "put_model() got an unexpected keyword argument 'batch_sizes'"
    import mujoco_warp

    from envs.base import MissingDependency

    monkeypatch.setattr(mujoco_warp, "put_model", lambda mjm: None)
    monkeypatch.setattr(mujoco_warp, "__version__", "3.9.0.1", raising=False)
    with pytest.raises(MissingDependency, match=r"needs mujoco-warp >= 3.10 .*found 3.9.0.1: pip install --upgrade"):
        make_env("Hopper-v5", 1, backend="mjwarp", device="cpu")


def test_warp_prints_no_line_per_kernel_module():
    # warp-lang 1.19 ignores config.quiet: every run (and its evaluation env) printed ~45 "Module ... load" lines
    import subprocess
    import sys
    from pathlib import Path

    code = ("import torch; from envs import make_env; "
            "env = make_env('Hopper-v5', 1, backend='mjwarp', device='cpu'); env.reset(seed=0); "
            "env.step(torch.zeros(1, 3))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert "Module " not in out.stdout + out.stderr and "initialized" not in out.stdout


def test_a_snapshot_of_another_number_of_worlds_is_refused_and_divergences_are_kept(pair):
    one = make_env("Hopper-v5", 1, backend="mjwarp", device="cpu")
    one.reset(seed=0)
    with pytest.raises(ValueError, match="saved env state holds 1 envs, this env has 3"):
        pair[0].load_state_dict(one.state_dict())  # used to broadcast world 0's state over all three
    one.qvel[0, 0] = float("nan")  # a diverged simulation: reset, counted, and the count survives a snapshot
    assert one.step(torch.zeros(1, 3)).info["diverged"].tolist() == [True] and one.diverged_total == 1
    again = make_env("Hopper-v5", 1, backend="mjwarp", device="cpu")
    again.load_state_dict(one.state_dict())
    assert again.diverged_total == 1


def test_unseeded_envs_draw_their_own_observation_noise():
    # the noise generator started from torch's fixed default seed: every unseeded env drew the same noise
    def first_obs():
        env = make_env("Hopper-v5", 2, backend="mjwarp", device="cpu", kwargs={"reset_noise_scale": 0.0},
                       randomize={"obs_noise_std": 0.1})
        return env.reset()

    a, b = first_obs(), first_obs()
    assert not torch.allclose(a, b)


def test_a_loaded_snapshot_is_not_changed_by_the_env_moving_on(pair):
    # load_state_dict kept the snapshot's observation tensor as the env's own, and the next reset wrote the reset
    # observation into it: the caller's snapshot changed, and loading it again restored the wrong observation
    env = pair[0]
    env.reset(seed=0)
    for _ in range(5):
        env.step(torch.full((3, 3), 0.3))
    snap = env.state_dict()
    taken = snap["obs"].clone()
    env.load_state_dict(snap)
    env.reset(seed=1)
    assert torch.equal(snap["obs"], taken)
    env.load_state_dict(snap)  # the same snapshot again, e.g. to branch a second time from it
    assert torch.equal(env.state_dict()["obs"], taken)


def test_a_resumed_sac_run_is_bit_identical_to_an_unbroken_one(tmp_path):
    # the restored observation was a view into state.safetensors at its offset in the file, 8 bytes past a 16-byte
    # boundary in this run's checkpoints, and MKL's product for a 2-row input rounds such an input differently:
    # the first action after the resume differed in the last bit, and the run drifted from there
    import shutil

    import numpy as np

    from robo_rl.checkpoint import load_checkpoint
    from robo_rl.train import train
    from tests.helpers import FAST, compose

    common = ("algo=sac", "env=hopper", "env.backend=mjwarp", "device=cpu", "env.num_envs=2", "randomize=mild",
              "algo.learning_starts=100", "algo.batch_size=32", "policy.hidden_sizes=[32,32]",
              "algo.critic_hidden=[32,32]", "eval.every=200", "eval.episodes=2", "eval.num_envs=2",
              "checkpoint.every=400", "env.max_episode_steps=60", "threads=1", "seed=3", "steps=440", *FAST)
    train(compose(*common), tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "cut")  # as if it had stopped right after its step-400 checkpoint
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_0000000440")
    train(compose(f"resume={tmp_path / 'cut'}"), tmp_path / "unused", [f"resume={tmp_path / 'cut'}"])
    full, full_replay = load_checkpoint(tmp_path / "full" / "checkpoints" / "step_0000000440")
    cut, cut_replay = load_checkpoint(tmp_path / "cut" / "checkpoints" / "step_0000000440")
    for key in ("actions", "obs", "rewards", "next_obs"):  # the 40 steps after the resume included
        assert np.array_equal(full_replay[key], cut_replay[key]), key
    for name, weights in full["learner"]["modules"].items():
        assert torch.equal(weights, cut["learner"]["modules"][name]), name


def test_a_snapshot_with_factors_this_env_has_no_arrays_for_is_refused(pair):
    # loaded, physics_params() reported the snapshot's zero gravity while every world fell under the nominal one
    floating = make_env("Hopper-v5", 3, backend="mjwarp", device="cpu", randomize={"gravity_scale": [0.0, 0.0]})
    floating.reset(seed=0)
    env = pair[0]
    with pytest.raises(ValueError, match=r"Hopper-v5 on mjwarp: the saved env state has physics factors gravity_scale "
                                         r"that this env does not randomize \(none\).*randomize=\{'gravity_scale': "):
        env.load_state_dict(floating.state_dict())
    assert env.physics_params()["gravity_scale"].eq(1.0).all()  # refused before anything was loaded
    nominal = make_env("Hopper-v5", 3, backend="mjwarp", device="cpu")
    nominal.reset(seed=0)
    env.load_state_dict(nominal.state_dict())  # nominal: loads
