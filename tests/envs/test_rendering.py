"""MP4 writing (PyAV): frame count and the exact frame rate of the task's step."""

import numpy as np
import pytest

from envs.rendering import Mp4Writer


def write_mp4(path, frames, fps) -> int:
    """All ``frames`` into one MP4, as `robo-rl eval video=true` writes them (one ``add`` per drawn frame)."""
    with Mp4Writer(path, fps) as video:
        for frame in frames:
            video.add(frame)
    return video.count


def test_videos_play_at_the_task_s_exact_rate(tmp_path):
    av = pytest.importorskip("av")
    frames = [np.full((48, 64, 3), 10 * i % 255, np.uint8) for i in range(200)]
    path = tmp_path / "v.mp4"
    assert write_mp4(path, frames, 1 / 0.015) == 200  # Humanoid's control step: 200/3 fps, not 67
    with av.open(str(path)) as container:
        assert float(container.streams.video[0].average_rate) == pytest.approx(200 / 3)
        assert sum(1 for _ in container.decode(video=0)) == 200
        assert container.duration / 1e6 == pytest.approx(3.0, abs=1e-3)  # 200 steps of 0.015 s


def test_a_video_path_that_cannot_take_the_file_is_refused_in_one_line(tmp_path):
    pytest.importorskip("av")
    (tmp_path / "videos").write_text("not a directory")  # e.g. a file where <run_dir>/videos should go
    frames = [np.zeros((16, 16, 3), np.uint8)] * 3
    with pytest.raises(ValueError, match=r"cannot write the video .*videos/v\.mp4: .*videos is a file, not a directory"):
        write_mp4(tmp_path / "videos" / "v.mp4", frames, 30)
    (tmp_path / "d.mp4").mkdir()
    with pytest.raises(ValueError, match=r"d\.mp4: it is not a file"):
        write_mp4(tmp_path / "d.mp4", frames, 30)


@pytest.mark.parametrize("bad, what", [
    (np.zeros((16, 16, 3), np.float32), r"frame 2 is not an RGB image \[H, W, 3\] of uint8 .*float32"),
    (np.zeros((16, 16), np.uint8), r"frame 2 is not an RGB image .*\(16, 16\)"),
    (np.zeros((20, 16, 3), np.uint8), r"frame 2 is 16x20, the first was 16x16"),
])
def test_frames_that_are_not_one_size_of_rgb_image_are_refused_and_leave_no_file(tmp_path, bad, what):
    pytest.importorskip("av")
    path = tmp_path / "v.mp4"
    with pytest.raises(ValueError, match=what):
        write_mp4(path, [np.zeros((16, 16, 3), np.uint8)] * 2 + [bad], 30)
    assert not path.exists()  # no half-written video left behind


def _gymnasium_version() -> tuple[int, ...]:
    import gymnasium

    return tuple(int(part) for part in gymnasium.__version__.split(".")[:2])


# gymnasium's own renderer changed its default view before 1.4 (the batched backend's frames are the same with every
# version, gymnasium 1.1-1.3's differ from them and from 1.4's): the frames are compared with 1.4's
@pytest.mark.skipif(_gymnasium_version() < (1, 4), reason="gymnasium < 1.4 draws its default view differently")
@pytest.mark.parametrize("task", ["HalfCheetah-v5", "Hopper-v5"])
def test_batched_frames_draw_the_state_the_observation_describes(task, monkeypatch, tmp_path):
    # gymnasium's render() after step() draws the geom positions MuJoCo computed at the start of the last substep
    # (mj_step does not recompute them); the batched backend draws the current state, which is gymnasium's frame
    # once its kinematics are brought up to date. At reset both are the same picture.
    import gymnasium as gym
    import mujoco
    import torch

    from envs import make_env

    monkeypatch.chdir(tmp_path)  # gymnasium's HalfCheetah makes MuJoCo warn, into MUJOCO_LOG.TXT in the working dir
    ours = make_env(task, num_envs=1, backend="mujoco", kwargs={"width": 96, "height": 64})
    theirs = gym.make(task, render_mode="rgb_array", width=96, height=64)
    ours.reset(seed=3)
    theirs.reset(seed=3)
    try:
        first = ours.render(0)  # headless rendering is part of the test set-up (README: Rendering)
        assert np.array_equal(first, theirs.render())
        rng = np.random.default_rng(0)
        for _ in range(5):
            action = rng.uniform(-1, 1, ours.action_space.shape[-1]).astype(np.float32)
            ours.step(torch.as_tensor(action)[None])
            theirs.step(action)
        frame = ours.render(0)
        assert not np.array_equal(frame, first)  # the scene moved
        mujoco.mj_forward(theirs.unwrapped.model, theirs.unwrapped.data)
        assert np.array_equal(frame, theirs.render())
    finally:
        ours.close()
        theirs.close()


def test_mujoco_imported_before_the_headless_default_is_named_as_the_cause():
    # gymnasium.make("HalfCheetah-v5") before `import envs` imports mujoco with MUJOCO_GL unset (GLFW, which needs a
    # display); the message said MUJOCO_GL=egl, the value robo-rl set too late, and advised installing EGL
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY")}
    code = (
        "import mujoco\n"
        "from envs import make_env\n"
        "from envs.rendering import RenderingUnavailable\n"
        "env = make_env('Hopper-v5', num_envs=1, backend='mujoco')\n"
        "env.reset(seed=0)\n"
        "try:\n"
        "    env.render(0)\n"
        "    print('RENDERED')\n"
        "except RenderingUnavailable as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    if "RENDERED" in out:
        pytest.skip("this machine renders with MuJoCo's default platform")
    assert "it was imported with MUJOCO_GL=unset" in out and "before MUJOCO_GL=egl was set" in out
    assert "Import envs (or robo_rl) before anything that imports mujoco" in out


def test_a_video_written_frame_by_frame_decodes_to_its_frames_and_an_abandoned_one_is_removed(tmp_path):
    av = pytest.importorskip("av")
    frames = [np.full((32, 48, 3), 7 * i % 255, np.uint8) for i in range(20)]
    assert write_mp4(tmp_path / "a.mp4", frames, 25) == 20
    with av.open(str(tmp_path / "a.mp4")) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert decoded.shape == (20, 32, 48, 3)
    # flat grey frames survive H.264 within a few levels: the frames are the ones added, in order
    assert np.abs(decoded.astype(int).mean(axis=(1, 2, 3)) - [f[0, 0, 0] for f in frames]).max() < 4
    with pytest.raises(KeyboardInterrupt):
        with Mp4Writer(tmp_path / "c.mp4", 25) as video:
            video.add(frames[0])
            raise KeyboardInterrupt  # e.g. the evaluation stopped half-way
    assert not (tmp_path / "c.mp4").exists()


def test_a_failed_video_leaves_no_empty_directory_it_made(tmp_path):
    # robo-rl eval video=true whose renderer (or encoder) failed removed the partial MP4 but left <run_dir>/videos/
    # empty, as if a video had been written there; a directory that held something before stays
    pytest.importorskip("av")
    for first_frame in (True, False):  # failed after a frame, or before any
        with pytest.raises(RuntimeError):
            with Mp4Writer(tmp_path / "run" / "videos" / "eval-step600.mp4", 25) as video:
                if first_frame:
                    video.add(np.zeros((16, 16, 3), np.uint8))
                raise RuntimeError("the renderer failed")
        assert list(tmp_path.iterdir()) == []  # neither videos/ nor run/, which it made too
    (tmp_path / "videos").mkdir()
    with pytest.raises(RuntimeError):
        with Mp4Writer(tmp_path / "videos" / "eval-step600.mp4", 25):
            raise RuntimeError("the renderer failed")
    assert [p.name for p in tmp_path.iterdir()] == ["videos"] and list((tmp_path / "videos").iterdir()) == []


def test_an_abandoned_video_leaves_the_one_already_at_its_path_as_it_was(tmp_path):
    # robo-rl eval video=true writes <run_dir>/videos/eval-step<N>.mp4: a second evaluation of the same checkpoint
    # that failed or was stopped half-way deleted the first one's video (a kill left it truncated)
    pytest.importorskip("av")
    frames = [np.full((16, 16, 3), 40 * i, np.uint8) for i in range(5)]
    path = tmp_path / "eval-step600.mp4"
    write_mp4(path, frames, 25)
    first = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with Mp4Writer(path, 25) as video:
            video.add(frames[0])
            assert path.read_bytes() == first  # still the complete one while the new one is written
            raise KeyboardInterrupt
    assert path.read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no partial file left behind
    assert write_mp4(path, frames[:3], 25) == 3 and path.read_bytes() != first  # a finished one replaces it
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
