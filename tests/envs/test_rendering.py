"""MP4 writing (PyAV): frame count and the exact frame rate of the task's step."""

import numpy as np
import pytest

from envs.rendering import write_mp4


def test_videos_play_at_the_task_s_exact_rate(tmp_path):
    av = pytest.importorskip("av")
    frames = [np.full((48, 64, 3), 10 * i % 255, np.uint8) for i in range(200)]
    path = tmp_path / "v.mp4"
    assert write_mp4(path, frames, 1 / 0.015) == 200  # Humanoid's control step: 200/3 fps, not 67
    with av.open(str(path)) as container:
        assert float(container.streams.video[0].average_rate) == pytest.approx(200 / 3)
        assert sum(1 for _ in container.decode(video=0)) == 200
        assert container.duration / 1e6 == pytest.approx(3.0, abs=1e-3)  # 200 steps of 0.015 s
