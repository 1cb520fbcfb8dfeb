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
from typing import Any

import numpy as np


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


def _mujoco_gl_at_import() -> str | None:
    """The MUJOCO_GL value MuJoCo chose its OpenGL platform from (read once, when mujoco was imported)."""
    import sys

    module = sys.modules.get("mujoco.rendering.classic.gl_context") or sys.modules.get("mujoco.gl_context")
    value = getattr(module, "_MUJOCO_GL", None)
    return value if isinstance(value, str) else None


def _no_rendering_message(exc: Exception) -> str:
    now = os.environ.get("MUJOCO_GL", "")
    used = _mujoco_gl_at_import()
    if used is not None and used != now.lower().strip():
        # e.g. gymnasium.make("HalfCheetah-v5", ...) before `import envs`: mujoco then picked GLFW, which needs a display
        return (f"MuJoCo cannot render offscreen: it was imported with MUJOCO_GL={used or 'unset'} (it reads the variable "
                f"once, on import), before MUJOCO_GL={now or 'unset'} was set ({exc}). Import envs (or robo_rl) before "
                "anything that imports mujoco, e.g. gymnasium.make of a MuJoCo task, or set MUJOCO_GL=egl before starting Python.")
    return (f"MuJoCo cannot render offscreen (MUJOCO_GL={now or 'unset'}): {exc}. "
            "On a machine without a display install EGL (Debian: apt-get install libegl1 libgl1-mesa-dri) or "
            "OSMesa (apt-get install libosmesa6) and set MUJOCO_GL=egl or osmesa before starting Python.")


class MujocoRenderer:
    """RGB frames of MuJoCo simulations, with a gymnasium task's default camera."""

    def __init__(self, model: Any, camera_config: dict[str, Any] | None = None, width: int = 480, height: int = 480) -> None:
        import mujoco

        self._mujoco = mujoco
        width = min(width, int(model.vis.global_.offwidth)) if model.vis.global_.offwidth else width
        height = min(height, int(model.vis.global_.offheight)) if model.vis.global_.offheight else height
        try:
            self.renderer = mujoco.Renderer(model, height=height, width=width)
        except Exception as exc:  # no usable OpenGL platform, or a frame larger than it can hold
            if "framebuffer is not complete" not in str(exc).lower():
                # no context at all (and a second try after GLFW failed aborts the process): the platform
                raise RenderingUnavailable(_no_rendering_message(exc)) from exc
            size = model.vis.global_.offwidth, model.vis.global_.offheight  # the offscreen buffer MuJoCo allocates
            try:
                model.vis.global_.offwidth = model.vis.global_.offheight = 64
                mujoco.Renderer(model, height=64, width=64).close()
            except Exception:  # noqa: BLE001 - no frame at all: the platform
                raise RenderingUnavailable(_no_rendering_message(exc)) from exc
            finally:
                model.vis.global_.offwidth, model.vis.global_.offheight = size
            raise RenderingUnavailable(f"MuJoCo cannot draw {width} x {height} frames here ({exc}); it draws smaller "
                                       "ones: lower the task's width and height (env.kwargs.width, "
                                       "env.kwargs.height)") from exc
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
        from envs.base import MissingDependency  # (envs.base imports torch; this module does not)

        raise MissingDependency("writing MP4 needs PyAV: pip install av (or pip install 'robo-rl[video]')") from None
    return av


def check_video_path(path: str | Path) -> Path:
    """``path`` can take an MP4: nothing but a file is in the way and its directory (made if missing) takes files.
    Raises ValueError naming the path otherwise, so a caller can refuse before it records anything."""
    path = Path(path)
    for parent in (path.parent, *path.parent.parents):  # the first existing ancestor must be a writable directory
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"cannot write the video {path}: {parent} is a file, not a directory; move it away")
            break
    if path.is_dir() or (path.exists() and not path.is_file()):
        raise ValueError(f"cannot write the video {path}: it is not a file; move it away")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"cannot write the video {path}: {parent} is read-only; make it writable or copy the run somewhere writable")
    return path


class Mp4Writer:
    """An H.264 MP4 written frame by frame (RGB [H, W, 3] uint8), so a long video never sits in memory whole.

    ``with Mp4Writer(path, fps) as video: video.add(frame)``; ``video.count`` frames are in the file once the block
    ends. A path that cannot take the file, or a frame that is not an RGB image of the first frame's size, raises
    ValueError saying which; a failed or abandoned video (an exception in the block) leaves no file behind, and
    leaves a video already at ``path`` (e.g. an earlier evaluation's of the same checkpoint) as it was: the frames go
    to a hidden file next to it, renamed over ``path`` once the video is complete."""

    def __init__(self, path: str | Path, fps: float) -> None:
        self._av = require_pyav()
        self.path = check_video_path(path)
        self._partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        self.fps = fps
        self.count = 0
        self._stream: Any = None
        # the directories made for it (videos/), innermost first: a failed video leaves no empty one behind either
        self._made = [d for d in (self.path.parent, *self.path.parent.parents) if not os.path.lexists(d)]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container = self._av.open(str(self._partial), "w", format="mp4")
        except OSError as exc:
            self._partial.unlink(missing_ok=True)
            self._remove_made()
            raise ValueError(f"cannot write the video {self.path}: {exc.strerror or exc}") from None

    def add(self, frame: np.ndarray) -> None:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or min(frame.shape[:2]) < 2:
            raise ValueError(f"cannot write the video {self.path}: frame {self.count} is not an RGB image [H, W, 3] of "
                             f"uint8 (got shape {frame.shape}, dtype {frame.dtype}); the env's render() must return one")
        if self._stream is None:
            # exact rates: Humanoid's 0.015 s step is 200/3 fps (67 would play 0.5% fast)
            rate = max(Fraction(1), Fraction(self.fps).limit_denominator(1000))
            self._stream = self._container.add_stream("libx264", rate=rate)
            self._stream.height, self._stream.width = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2  # yuv420: even sizes
            self._stream.pix_fmt = "yuv420p"
            self._size = frame.shape[:2]
        elif frame.shape[:2] != self._size:
            raise ValueError(f"cannot write the video {self.path}: frame {self.count} is {frame.shape[1]}x{frame.shape[0]}, "
                             f"the first was {self._size[1]}x{self._size[0]}; a video's frames all have one size")
        image = np.ascontiguousarray(frame[: self._stream.height, : self._stream.width])
        try:
            for packet in self._stream.encode(self._av.VideoFrame.from_ndarray(image, format="rgb24")):
                self._container.mux(packet)
        except OSError as exc:  # a full disk, the directory removed, ...
            raise ValueError(f"cannot write the video {self.path}: {exc.strerror or exc}") from None
        self.count += 1

    def close(self, keep: bool = True) -> None:
        """Finish the file (``keep=False``: remove it)."""
        try:
            if keep and self._stream is not None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
        except OSError as exc:
            keep = False
            raise ValueError(f"cannot write the video {self.path}: {exc.strerror or exc}") from None
        finally:
            try:
                self._container.close()
            except OSError:
                keep = False
            try:
                if keep:
                    os.replace(self._partial, self.path)
            except OSError as exc:
                keep = False
                raise ValueError(f"cannot write the video {self.path}: {exc.strerror or exc}") from None
            finally:
                if not keep:
                    self._partial.unlink(missing_ok=True)
                    self._remove_made()

    def _remove_made(self) -> None:
        for directory in self._made:
            try:
                directory.rmdir()
            except OSError:  # not empty (an earlier video, another process's): left as it is
                return

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(keep=exc_type is None)
