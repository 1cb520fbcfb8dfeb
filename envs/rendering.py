"""Offscreen rendering of batched envs and MP4 writing.

MuJoCo picks its OpenGL platform when it is first imported, from ``MUJOCO_GL``. Without a display
(servers, CI) the only working choices are EGL (GPU, or Mesa's software renderer on a CPU machine)
and OSMesa; ``headless_gl_default`` sets EGL unless the user chose otherwise, and ``envs`` calls it
on import. Batched MuJoCo envs are drawn with ``mujoco.Renderer`` from a per-simulation model and
data, with the camera gymnasium's task uses; gymnasium envs render through ``render_mode="rgb_array"``.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from envs.base import MissingDependency


def headless_gl_default() -> None:
    """Without a display and an explicit choice: EGL for MuJoCo's offscreen rendering, and SDL's dummy video
    driver for pygame (gymnasium's classic-control frames), which otherwise prints an XDG_RUNTIME_DIR error."""
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        if "MUJOCO_GL" not in os.environ:
            os.environ["MUJOCO_GL"] = "egl"
            os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")


class RenderingUnavailable(RuntimeError):
    """This process cannot render frames (no usable OpenGL platform); the message says what to install or set."""


class MujocoRenderer:
    """RGB frames of MuJoCo simulations, with a gymnasium task's default camera."""

    def __init__(self, model: Any, camera_config: dict[str, Any] | None = None, width: int = 480, height: int = 480) -> None:
        import mujoco

        self._mujoco = mujoco
        width = min(width, int(model.vis.global_.offwidth)) if model.vis.global_.offwidth else width
        height = min(height, int(model.vis.global_.offheight)) if model.vis.global_.offheight else height
        try:
            self.renderer = mujoco.Renderer(model, height=height, width=width)
        except Exception as exc:  # no usable OpenGL platform
            raise RenderingUnavailable(
                f"MuJoCo cannot render offscreen (MUJOCO_GL={os.environ.get('MUJOCO_GL', 'unset')}): {exc}. "
                "On a machine without a display install EGL (Debian: apt-get install libegl1 libgl1-mesa-dri) or "
                "OSMesa (apt-get install libosmesa6) and set MUJOCO_GL=egl or osmesa before starting Python."
            ) from exc
        self.camera = mujoco.MjvCamera()
        self.camera_config = dict(camera_config or {})
        self._placed = False

    def _place_camera(self, data: Any) -> None:
        """gymnasium's offscreen camera: free, centred on the median geom, at the model's extent,
        then the task's DEFAULT_CAMERA_CONFIG on top (its trackbodyid has no effect on a free camera)."""
        cam = self.camera
        cam.type = self._mujoco.mjtCamera.mjCAMERA_FREE
        cam.fixedcamid = -1
        for i in range(3):
            cam.lookat[i] = np.median(data.geom_xpos[:, i])
        cam.distance = self.renderer.model.stat.extent
        for key, value in self.camera_config.items():
            if isinstance(value, np.ndarray):
                getattr(cam, key)[:] = value
            else:
                setattr(cam, key, value)
        self._placed = True

    def render(self, data: Any) -> np.ndarray:
        if not self._placed:
            self._place_camera(data)
        self.renderer.update_scene(data, camera=self.camera)
        return self.renderer.render().copy()

    def close(self) -> None:
        self.renderer.close()


def gym_camera_config(gym_class: type) -> dict[str, Any]:
    """The DEFAULT_CAMERA_CONFIG of a gymnasium MuJoCo task module (empty if it has none)."""
    import sys

    module = sys.modules.get(gym_class.__module__)
    return dict(getattr(module, "DEFAULT_CAMERA_CONFIG", None) or {})


def require_pyav() -> Any:
    """The ``av`` module (PyAV, the MP4 encoder), or MissingDependency saying how to install it."""
    try:
        import av
    except ImportError:
        raise MissingDependency("writing MP4 needs PyAV: pip install av (or pip install 'robo-rl[video]')") from None
    return av


def write_mp4(path: str | Path, frames: Iterable[np.ndarray], fps: float) -> int:
    """Encode RGB frames [H, W, 3] uint8 as H.264 MP4; returns the number of frames written."""
    av = require_pyav()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with av.open(str(path), "w") as container:
        stream = None
        for frame in frames:
            if stream is None:
                # exact rates: Humanoid's 0.015 s step is 200/3 fps (67 would play 0.5% fast)
                stream = container.add_stream("libx264", rate=max(Fraction(1), Fraction(fps).limit_denominator(1000)))
                stream.height, stream.width = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2  # yuv420 needs even sizes
                stream.pix_fmt = "yuv420p"
            image = np.ascontiguousarray(frame[: stream.height, : stream.width])
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
            count += 1
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    return count
