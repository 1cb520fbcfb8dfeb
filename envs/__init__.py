"""What is acted on: simulator backends behind one batched, torch-native env contract.

``make_env`` is the one way to build an env from a backend name; see ``envs.base`` for the
contract every backend keeps.

Importing the package does not import torch: the contract (``BatchedEnv``, ``StepResult``) loads on
first use and the backends when an env is built, so torch-free tools (``robo-rl deploy`` on a robot
computer, ``robo-rl compare``) can use its helpers (rendering defaults, MuJoCo's log routing, the task
registry) without paying torch's start-up.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from envs.randomization import RandomizationSpec
from envs.resources import MIN_BYTES_PER_ENV, check_envs_fit
import envs.tasks  # noqa: F401  (registers robo-rl's own gymnasium tasks)
from envs.rendering import headless_gl_default

headless_gl_default()  # before MuJoCo is imported: offscreen rendering needs EGL/OSMesa without a display

if TYPE_CHECKING:
    import torch

    from envs.base import BatchedEnv, StepResult

BACKENDS = ("auto", "gymnasium", "mujoco", "mjwarp", "isaac")


def make_env(
    task_id: str,
    num_envs: int = 1,
    backend: str = "gymnasium",
    vectorization: str = "sync",
    kwargs: dict[str, Any] | None = None,
    max_episode_steps: int | None = None,
    device: str | torch.device = "cpu",
    threads: int = 0,
    randomize: RandomizationSpec | dict[str, Any] | None = None,
    render: bool = False,
) -> BatchedEnv:
    """Build ``num_envs`` copies of ``task_id`` on the named simulator backend.

    ``vectorization`` applies to the gymnasium backend, ``threads`` (physics threads, 0 = all
    CPUs) to the batched MuJoCo backend. ``auto`` picks the batched MuJoCo backend for the tasks it
    covers (bit-identical to gymnasium, several times faster) and gymnasium for every other id.
    ``randomize`` turns on domain randomization (``envs.randomization``; a spec or its dict).
    ``render`` prepares gymnasium-backend envs for ``render()`` (the MuJoCo backend always can).
    """
    if not isinstance(task_id, str) or not task_id.strip():
        raise TypeError(f"make_env: task_id must be a gymnasium id such as 'Hopper-v5', got {task_id!r}")
    for name, value, least in (("num_envs", num_envs, 1), ("max_episode_steps", max_episode_steps, 1), ("threads", threads, 0)):
        if value is None and name == "max_episode_steps":
            continue  # the task's own time limit
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise ValueError(f"{task_id}: {name}={value!r} must be an integer >= {least}"
                             + (" (or None: the task's own time limit)" if name == "max_episode_steps" else "")
                             + (" (0: all CPUs)" if name == "threads" else ""))
    num_envs, threads = int(num_envs), int(threads)
    kwargs = _checked_kwargs(task_id, kwargs)
    device = _checked_device(task_id, device)
    if isinstance(randomize, dict):
        randomize = RandomizationSpec.from_dict(randomize)
    elif randomize is not None and not isinstance(randomize, RandomizationSpec):
        raise TypeError(f"{task_id}: randomize takes a RandomizationSpec or its dict, got {randomize!r} (the CLI's "
                        "presets, randomize=mild|strong, are the YAML files in robo_rl/configs/randomize/)")
    if backend == "auto":
        from envs.mujoco.tasks import TASKS

        backend = "mujoco" if task_id in TASKS else "gymnasium"
    if backend != "mujoco":  # which checks its own floor, the task's simulation state (several times this one)
        check_envs_fit(task_id, num_envs, MIN_BYTES_PER_ENV)
    if backend == "gymnasium":
        from envs.gymnasium_backend import GymnasiumBatchedEnv

        with _mujoco_warnings_logged(_builds_mujoco(task_id)):
            return GymnasiumBatchedEnv(task_id, num_envs, vectorization, kwargs, max_episode_steps, device, randomize,
                                       render)
    if backend == "mujoco":
        from envs.mujoco import MujocoBatchedEnv

        with _mujoco_warnings_logged(True):
            return MujocoBatchedEnv(task_id, num_envs, kwargs, max_episode_steps, threads, device, randomize)
    if backend == "mjwarp":
        from envs.mjwarp import MjwarpBatchedEnv

        with _mujoco_warnings_logged(True):
            return MjwarpBatchedEnv(task_id, num_envs, kwargs, max_episode_steps, device, randomize)
    if backend == "isaac":
        from envs.isaac import make_isaac_env

        if randomize is not None and randomize.enabled:
            raise ValueError("env.backend=isaac: randomize inside the Isaac task's own config (its event manager)")
        if max_episode_steps is not None:  # the adapter has no time limit of its own to apply it
            raise ValueError(f"env.max_episode_steps={max_episode_steps}: env.backend=isaac keeps the task's own episode "
                             "length (set it in the Isaac task's config, or through env.kwargs where its factory takes "
                             "it); leave env.max_episode_steps unset")
        return make_isaac_env(task_id, num_envs, device, kwargs)
    raise ValueError(f"unknown env backend {backend!r}; choose one of {', '.join(BACKENDS)}")


@contextmanager
def _mujoco_warnings_logged(active: bool) -> Iterator[None]:
    """MuJoCo's warnings while envs are built from Python (gymnasium's HalfCheetah asset compiles with a deprecated
    attribute: one warning per env copy) through robo-rl's log, once per kind, as the CLI and ``train()`` route them:
    MuJoCo's own handler printed each and appended it to MUJOCO_LOG.TXT in the working directory. A handler already
    set (the CLI's, a run's, the caller's own) is left alone."""
    if not active:
        yield
        return
    import mujoco

    if mujoco.get_mju_user_warning() is not None:
        yield
        return
    from envs.mujoco_log import routed_mujoco_warnings

    with routed_mujoco_warnings():
        yield


def _builds_mujoco(task_id: str) -> bool:
    """Whether the gymnasium task ``task_id`` simulates with MuJoCo (its entry point is gymnasium's MuJoCo envs or
    robo-rl's ContactMaze, not its TwoGoals); False for an id the registry does not know (building it names it)."""
    import gymnasium as gym

    try:
        entry = gym.spec(task_id).entry_point
    except Exception:  # noqa: BLE001 - unknown or malformed ids fail when the env is built, named
        return False
    module = entry.split(":")[0] if isinstance(entry, str) else getattr(entry, "__module__", "") or ""
    return "mujoco" in module or module == "envs.tasks.contact_maze"


def _checked_kwargs(task_id: str, kwargs: Any) -> Mapping[str, Any] | None:
    """The task's keyword arguments: a mapping whose numbers are finite (a NaN or infinite weight turns every
    reward into NaN); a bound inside a range (a tuple) may be infinite, never NaN."""
    if kwargs is None:
        return None
    if not isinstance(kwargs, Mapping):
        raise TypeError(f"{task_id}: kwargs takes a mapping of the task's keyword arguments, e.g. "
                        f"{{'ctrl_cost_weight': 0.1}}; got {kwargs!r}")
    for key, value in kwargs.items():
        items = value if isinstance(value, Sequence) and not isinstance(value, str) else None
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{task_id}: kwargs {key}={value}: must be a finite number")
        if items is not None and any(isinstance(v, float) and math.isnan(v) for v in items):
            raise ValueError(f"{task_id}: kwargs {key}={value}: NaN is no bound (inf is)")
    defaults = declared_defaults(task_id)
    typed = {key: _as_declared(task_id, key, value, defaults[key]) for key, value in kwargs.items() if key in defaults}
    if all(typed[key] is kwargs[key] for key in typed):
        return kwargs
    return {**kwargs, **typed}


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _as_declared(task_id: str, key: str, value: Any, default: Any) -> Any:
    """``value`` as the task's constructor takes ``key``, whose default is ``default``: a true/false argument given
    as text (``env.kwargs.terminate_when_unhealthy=no`` reaches the task as the string 'no', which Python reads as
    true) becomes a bool, a number given as text is refused, and a frame size must be a positive integer."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower() if isinstance(value, (str, int)) else None
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError(f"{task_id}: kwargs {key}={value!r}: takes true or false (or yes/no, on/off, 1/0)")
    if isinstance(default, numbers.Real) and isinstance(value, str):
        raise ValueError(f"{task_id}: kwargs {key}={value!r}: takes a number (its default is {default!r})")
    if key in ("width", "height") and isinstance(default, numbers.Integral):  # the frames' size (MuJoCo tasks)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{task_id}: kwargs {key}={value!r}: the frames' {key} in pixels, an integer >= 1")
    return value


def declared_defaults(task_id: str) -> dict[str, Any]:
    """The keyword arguments ``task_id``'s constructor declares, with their defaults, as far as they can be read
    without building it (the gymnasium registry's entry point; with the id's registered kwargs over them); {} for
    an id that is not registered (yet: a ``module:Id`` whose module is not imported, an Isaac task)."""
    import inspect

    import gymnasium as gym

    spec = gym.registry.get(task_id.rpartition(":")[2])
    if spec is None:
        return {}
    try:
        creator = (gym.envs.registration.load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str)
                   else spec.entry_point)
        # a class's __init__, and its bases' where it passes **kwargs on (Hopper's width and height are MujocoEnv's)
        functions = [c.__init__ for c in creator.__mro__ if "__init__" in vars(c)] if inspect.isclass(creator) else [creator]
        declared: dict[str, Any] = {}
        for function in functions:
            parameters = inspect.signature(function).parameters.values()
            for p in parameters:
                if p.default is not inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD:
                    declared.setdefault(p.name, p.default)
            if not any(p.kind is p.VAR_KEYWORD for p in parameters):
                break
    except Exception:  # noqa: BLE001 - an entry point that cannot be loaded here fails, named, when the env is built
        return {}
    return {**declared, **{k: v for k, v in (spec.kwargs or {}).items() if k in declared}}


def _checked_device(task_id: str, device: Any) -> torch.device:
    import torch

    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{task_id}: device={device!r} is not a torch device (cpu, cuda, cuda:1): {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{task_id}: device={device}: CUDA is not available on this machine; use device='cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()  # (or the simulators were built, and the first tensor failed on the ordinal)
        raise ValueError(f"{task_id}: device={device}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return device


def __getattr__(name: str) -> Any:
    if name in ("BatchedEnv", "StepResult"):  # imported here, not above: envs.base imports torch
        from envs import base

        return getattr(base, name)
    raise AttributeError(f"module 'envs' has no attribute {name!r}")


__all__ = ["BACKENDS", "BatchedEnv", "RandomizationSpec", "StepResult", "make_env"]
