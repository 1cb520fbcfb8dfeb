"""The MuJoCo Warp backend, on Warp's CPU device (no GPU here): contract, agreement, randomization.

The first run compiles Warp's kernels (tens of seconds); later runs use ~/.cache/warp.
"""

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


def test_renders(pair):
    frame = pair[0].render(0)
    assert frame.shape[2] == 3 and frame.std() > 5


def test_humanoid_models_run_with_newton_and_track_the_exact_backend(caplog):
    # gymnasium's humanoid XMLs name the PGS solver, which MuJoCo Warp lacks: it switches to Newton, says so
    with caplog.at_level("WARNING", logger="envs.mjwarp"):
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


def test_a_model_warp_cannot_take_is_named(monkeypatch):
    import mujoco_warp

    def refuse(*args, **kwargs):
        raise NotImplementedError("mjFOO is unsupported.")

    monkeypatch.setattr(mujoco_warp, "put_model", refuse)
    with pytest.raises(ValueError, match="MuJoCo Warp cannot simulate Reacher-v5's model .*mjFOO.*env.backend=mujoco"):
        make_env("Reacher-v5", 2, backend="mjwarp", device="cpu")
