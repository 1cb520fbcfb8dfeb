"""Export a trained policy as one self-contained file plus a JSON sidecar.

The graph maps a raw observation (and, for generative policies, an explicit noise input) to the
action the policy acts with, in env units and within the bounds:
  * the observation normalizer is part of the graph (its statistics are constants);
  * Gaussian / deterministic / mixture heads export their deterministic action;
  * diffusion and flow heads unroll their configured sampling steps; the initial noise is an input
    (zeros by default at run time: deterministic); a chunk head's graph returns the chunk [batch, H, A];
  * GoRL exports the latent mean decoded by the decoder; EXPO and PA-RL export the best of their N
    candidates by the critic, with the candidates' noise as an input (default: the fixed seed-0
    noise the policy's deterministic acting uses, stored in the sidecar).
The sidecar records the spaces and bounds, the control period, the safety-filter chain, the robo-rl
version, the source checkpoint and the sha256 of the model file; the runtime refuses a model whose
checksum or shapes do not match it. ONNX files are checked with ``onnx.checker`` and compared with
the torch policy in onnxruntime before the export is written.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
import logging
import math
import numbers
import os
import secrets
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator

import numpy as np

FORMAT = "robo-rl-export"
FORMAT_VERSION = 1
FORMATS = ("onnx", "torchscript")
MODEL_FILES = ("policy.onnx", "policy.pt")  # the model file of each format
#: the module an export is made from vs the policy's own deterministic ``act``: the same eager operations
ACTING_TOLERANCE = 1e-5


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_out_dir(out_dir: str | Path, key: str = "out_dir",
                  holds: str = "an export is a directory holding the model and policy.json") -> Path:
    """``out_dir`` as a Path if an export can be written there, else a ValueError naming ``key``.

    The directory may exist (an earlier export is replaced) or not (it is created with its parents),
    but neither it nor any existing ancestor may be a file, and the nearest existing one must be
    writable. Nothing is created here.
    """
    if not str(out_dir).strip():
        raise ValueError(f"{key}={str(out_dir)!r}: give a directory, or leave {key} unset for the default")
    path = Path(out_dir)
    if os.path.lexists(path) and not path.is_dir():
        raise ValueError(f"{key}={out_dir}: {path} exists and is not a directory; choose another {key} ({holds})")
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{key}={out_dir}: {existing} is a file, so no directory can be made under it; "
                         f"choose another {key}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{key}={out_dir}: {existing} is not writable; choose another {key}")
    return path


def noise_dim(policy: Any) -> int:
    """Noise numbers per observation the exported graph takes (0: no noise input)."""
    if hasattr(policy, "noise_dim"):
        return int(policy.noise_dim())
    if hasattr(policy, "noise_shape") and not hasattr(policy, "latent"):
        return int(policy.noise_shape(1)[1])
    return 0


def default_noise(policy: Any) -> list[float] | None:
    """What the runtime feeds the noise input by default (None: zeros)."""
    if hasattr(policy, "fixed_noise") and noise_dim(policy):
        import torch

        return policy.fixed_noise(1, torch.device("cpu"))[0].tolist()
    return None


def export_module(policy: Any):  # -> torch.nn.Module
    """A torch module with the export's signature: (obs) or (obs, noise) -> action [B, A] (or chunk [B, H, A])."""
    import torch

    class WithNoise(torch.nn.Module):
        def __init__(self, p: Any) -> None:
            super().__init__()
            self.policy = p

        def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
            return self.policy.clip_action(self.policy(obs, noise))

    class Deterministic(torch.nn.Module):
        def __init__(self, p: Any) -> None:
            super().__init__()
            self.policy = p

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            if hasattr(self.policy, "latent"):  # GoRL: the latent mean, then the decoder
                z = self.policy.decoder_input(self.policy.latent_variable(obs, deterministic=True), obs)
                return self.policy.decoder.from_unit(self.policy.decoder.generate(obs, z))[:, 0]
            return self.policy.clip_action(self.policy(obs))

    # defined after the others: a traced graph records source lines, and the other exports' stay as they were
    class Chunks(torch.nn.Module):
        def __init__(self, p: Any) -> None:
            super().__init__()
            self.policy = p

        def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:  # -> chunks [B, H, A]
            return self.policy.clip_action(self.policy.forward_chunk(obs, noise))

    if chunk_length(policy) > 1:
        module = Chunks(policy)
    else:
        module = WithNoise(policy) if noise_dim(policy) else Deterministic(policy)
    return module.eval()


def chunk_length(policy: Any) -> int:
    """Actions per query the exported graph returns (1: one action [batch, A]; H: a chunk [batch, H, A], of which
    the runtime runs the sidecar's ``chunk.execute`` per query, as robo-rl's evaluation does)."""
    return int(getattr(policy, "action_chunk", 1)) if hasattr(policy, "forward_chunk") else 1


@contextlib.contextmanager
def _quiet_exporter() -> Any:
    """Hide the torch exporter's own chatter (torchvision ops it skips, its internal deprecations, a note
    on the batch axis's name): none of it is about the user's policy, and parity is checked after."""
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry.level
    registry.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message=r"# The axis name")
            yield
    finally:
        registry.setLevel(level)


@_quiet_exporter()
def _export_onnx(module: Any, example: tuple, path: Path, input_names: list[str]) -> str:
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        torch.onnx.export(module, example, str(path), input_names=input_names, output_names=["action"],
                          dynamic_shapes=tuple({0: batch} for _ in example), dynamo=True, opset_version=18,
                          verbose=False)
        return "dynamo"
    except Exception:  # older torch or an op the new exporter lacks: the TorchScript-based exporter
        # torch 2.4's export has no dynamo= (it is always TorchScript-based there); from 2.9 its default is True
        legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        torch.onnx.export(module, example, str(path), input_names=input_names, output_names=["action"],
                          dynamic_axes={name: {0: "batch"} for name in [*input_names, "action"]}, opset_version=17,
                          **legacy)
        return "torchscript-based"


def export_policy(
    policy: Any,
    out_dir: str | Path,
    fmt: str = "onnx",
    *,
    observation_low: np.ndarray | None = None,
    observation_high: np.ndarray | None = None,
    control_dt: float | None = None,
    task: str | None = None,
    safety: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    check_obs: np.ndarray | None = None,
    check_samples: int = 64,
    tolerance: float = 1e-5,
) -> dict[str, Any]:
    """Export ``policy`` (any head, or a learner's acting policy) to ``out_dir``; returns the sidecar.

    The exported file is compared with the torch policy on ``check_obs`` (real observations, if
    given) plus ``check_samples`` random ones, at that batch size and at batch 1, before the sidecar is written;
    a difference above ``tolerance`` (per action dimension, times the half-range where it exceeds 1) is an
    error, so an export that exists is an export that was checked. The module the file is made from is
    compared with the policy's deterministic ``act`` too. The arguments the sidecar records (``control_dt``, the
    ``safety`` chain, built against the policy's dimensions, the observation bounds, ``metadata``) are checked
    before any work, as the runtime and the deployment loop would refuse them only later. Model and sidecar are written to
    temporary names, fsynced, and renamed into place (model first, sidecar last): a crash leaves the
    previous export or the new one, or a new model next to the old sidecar, which the runtime refuses
    (its sha256 does not match).
    """
    import torch

    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}: choose one of {', '.join(FORMATS)}")
    out_dir = check_out_dir(out_dir)  # before the graph is built and checked, not when it is written
    # the sidecar's control period: the runtime refuses one that is not a positive number, so refuse it before any work
    if control_dt is not None:
        if isinstance(control_dt, bool) or not isinstance(control_dt, numbers.Real) \
                or not (math.isfinite(control_dt) and control_dt > 0):
            raise ValueError(f"control_dt={control_dt!r}: the control period in seconds, a finite number > 0 "
                             "(or None when unknown)")
        control_dt = float(control_dt)  # a numpy float is no JSON number
    tensors = (*policy.parameters(), *policy.buffers())
    if any(m.training for m in policy.modules()) or any(t.device.type != "cpu" for t in tensors):
        # a learner's head (train mode, maybe on cuda): exported from a copy, so that training goes on as it was
        # (``.eval()`` turned a user head's dropout off, ``.cpu()`` moved it off the learner's device)
        policy = copy.deepcopy(policy)
    policy = policy.cpu().eval()
    module = export_module(policy)
    k = noise_dim(policy)
    chunk = chunk_length(policy)
    obs_dim = int(policy.obs_dim)
    # the sidecar's filter chain must run on this policy's actions and observations at its control period (the
    # deployment loop would refuse it only at start-up); stored as plain lists, as the sidecar is JSON
    from sim2real.filters import build_chain
    from sim2real.filters.spec import plain

    build_chain(safety, int(policy.act_dim), obs_dim, control_dt)
    for key, values in (("observation_low", observation_low), ("observation_high", observation_high)):
        if values is not None and np.size(values) != obs_dim:  # the sidecar would record another space
            raise ValueError(f"{key} has {np.size(values)} values, but the policy observes {obs_dim}: pass the "
                             "observation space's bounds")
    if check_obs is not None and (np.ndim(check_obs) not in (1, 2) or np.shape(check_obs)[-1] != obs_dim):
        # reshaped to [-1, obs_dim], rows of another width would be regrouped into states nobody visited
        raise ValueError(f"check_obs of shape {list(np.shape(check_obs))}: expected observations [N, {obs_dim}]")
    filters = plain(safety.get("filters") if isinstance(safety, Mapping) else safety) or []
    safety = {"filters": json.loads(json.dumps(filters, default=_json_array))}
    try:  # written last, into the JSON sidecar: refused now rather than after the graph is checked
        json.dumps(metadata or {}, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata: {exc}; give JSON values (strings, finite numbers, lists, mappings)") from None
    generator = torch.Generator().manual_seed(0)
    real = torch.as_tensor(np.asarray(check_obs, dtype=np.float32)).reshape(-1, obs_dim) if check_obs is not None else torch.zeros(0, obs_dim)
    scale = policy.obs_norm.stats.var.sqrt().float().cpu() if policy.obs_norm.enabled else torch.ones(obs_dim)
    centre = policy.obs_norm.stats.mean.float().cpu() if policy.obs_norm.enabled else torch.zeros(obs_dim)
    # random states around the visited ones (off the policy's path, where an export is as likely to differ)
    randoms = centre + scale * torch.randn(max(int(check_samples), 2), obs_dim, generator=generator)
    obs = torch.cat([real, randoms], dim=0)
    defaults = default_noise(policy)
    if k:
        fixed = torch.tensor(defaults).expand(obs.shape[0], k) if defaults is not None else torch.zeros(obs.shape[0], k)
        # the default noise, and random noise: parity must hold for whatever noise the runtime feeds
        noise = torch.cat([fixed, torch.randn(obs.shape[0], k, generator=generator)], dim=0)
        obs = torch.cat([obs, obs], dim=0)
    example = (obs[:2],) if k == 0 else (obs[:2], noise[:2])
    input_names = ["obs"] if k == 0 else ["obs", "noise"]
    with torch.no_grad():
        reference = (module(obs) if k == 0 else module(obs, noise)).numpy()
    if not np.isfinite(reference).all():
        raise ValueError("the policy produces non-finite actions on the check observations; not exporting it")
    # float32 rounding happens in the head's unit action space and is scaled by the half-range: an action
    # bound of +-100 turns 1e-7 into 1e-5, so the tolerance is per dimension times the half-range where it exceeds 1
    half_range = ((policy.action_high - policy.action_low) / 2).detach().cpu().numpy().astype(np.float64)
    limit = tolerance * np.maximum(half_range, 1.0)
    # the module the file is made from must compute what the policy acts with (with the default noise):
    # comparing the file with that module alone would pass a graph that leaves out, say, the normalizer
    acting_rows = obs.shape[0] // 2 if k else obs.shape[0]  # with noise, the first half has the default noise
    with torch.no_grad():
        act = policy.act_chunk if chunk > 1 else policy.act  # a chunk head acts with whole chunks (ChunkExecutor)
        acting = act(obs[:acting_rows], deterministic=True).cpu().numpy()
    gap = np.abs(reference[:acting_rows] - acting)
    if not (gap <= ACTING_TOLERANCE * np.maximum(half_range, 1.0)).all():  # the same eager operations: rounding only
        raise RuntimeError(f"the graph to export differs from the policy's deterministic action by {float(gap.max()):.2e} "
                           f"(> {ACTING_TOLERANCE:g}): the export path of the {getattr(policy, 'name', type(policy).__name__)} "
                           "head does not compute what it acts with (a robo-rl bug); nothing was written")
    made = [d for d in (out_dir, *out_dir.parents) if not os.path.lexists(d)]  # innermost first: removed on failure
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. under /proc, writable by root yet refusing new directories: a bare "[Errno 2]"
        raise ValueError(f"out_dir={out_dir}: the directory cannot be made ({exc.strerror}); choose another "
                         "out_dir") from None
    # a name of its own: another export into this directory at the same time (two `robo-rl export` runs) wrote,
    # renamed away or deleted the other's file under a fixed one, and could publish its model with this one's sidecar
    try:
        tmp = _temporary(out_dir, ".policy.onnx." if fmt == "onnx" else ".policy.pt.")
    except BaseException:
        _remove_empty(made)
        raise
    side = tmp.with_name(tmp.name + ".data")  # the dynamo exporter writes large weights beside the model
    try:
        if fmt == "onnx":
            import onnx

            exporter = _export_onnx(module, example, tmp, input_names)
            model = onnx.load(str(tmp))  # with any external data
            onnx.checker.check_model(model, full_check=True)
            onnx.save(model, str(tmp))  # one self-contained file
            side.unlink(missing_ok=True)  # so no side file is left next to the export
            session = _session(tmp)

            def run(*inputs: torch.Tensor) -> np.ndarray:
                return session.run(None, dict(zip(input_names, (x.numpy() for x in inputs))))[0]
            path = out_dir / "policy.onnx"
        else:
            with warnings.catch_warnings():  # its "might not generalize to other inputs": the check below runs other batch sizes
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                traced = torch.jit.trace(module, example, check_trace=False)
            traced.save(str(tmp))
            exporter = "torch.jit.trace"
            loaded = torch.jit.load(str(tmp))

            def run(*inputs: torch.Tensor) -> np.ndarray:
                with torch.no_grad():
                    return loaded(*inputs).numpy()
            path = out_dir / "policy.pt"
        inputs = (obs,) if k == 0 else (obs, noise)
        outputs = run(*inputs)
        single = run(*(x[:1] for x in inputs))  # batch 1, as a robot calls it (the graph was traced at batch 2)
        if outputs.shape != reference.shape or single.shape != reference[:1].shape:
            raise RuntimeError(f"the exported {fmt} policy returns actions of shape {list(outputs.shape)} for "
                               f"{obs.shape[0]} observations and {list(single.shape)} for one, expected "
                               f"{list(reference.shape)} and {list(reference[:1].shape)} (the graph does not keep the "
                               "batch axis at every batch size); nothing was written")
        diffs = [np.abs(outputs - reference), np.abs(single - reference[:1])]
        if hasattr(policy, "tied_choice"):  # best of candidates: a tie between two may go either way in another runtime
            for diff, got in zip(diffs, (outputs, single)):
                off = np.flatnonzero((diff > limit).any(1))
                if off.size:
                    tied = policy.tied_choice(obs[off], noise[off] if k else None, torch.as_tensor(got[off]),
                                              torch.as_tensor(limit, dtype=torch.float32)).numpy()
                    diff[off[tied]] = 0.0
        errors = np.maximum(diffs[0].max(0), diffs[1].max(0))
        max_error = float(errors.max())
        if not (errors <= limit).all():
            raise RuntimeError(f"the exported {fmt} policy differs from the torch policy by {max_error:.2e} (> {tolerance:g}"
                               + (" times the action half-range" if (half_range > 1).any() else "") + "); nothing was written")
    except BaseException:  # a failed export leaves nothing behind, not even the directories it made
        tmp.unlink(missing_ok=True)
        side.unlink(missing_ok=True)
        _remove_empty(made)
        raise
    low, high = policy.action_low.cpu().numpy(), policy.action_high.cpu().numpy()
    norm = policy.obs_norm

    def bounds(values: np.ndarray | None) -> list[float | None]:
        if values is None:
            return [None] * obs_dim
        return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=np.float64).reshape(-1)]

    sidecar = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "robo_rl_version": _version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "model_file": path.name,
        "model_format": fmt,
        "exporter": exporter,
        "sha256": sha256_of(tmp),
        "task": task,
        "head": getattr(policy, "name", type(policy).__name__),
        "observation": {"dim": obs_dim, "dtype": "float32", "low": bounds(observation_low), "high": bounds(observation_high)},
        "action": {"dim": int(policy.act_dim), "low": low.tolist(), "high": high.tolist()},
        "noise": {"dim": k, "default": defaults if defaults is not None else "zeros"} if k else None,
        "inputs": [{"name": "obs", "shape": ["batch", obs_dim], "dtype": "float32"}]
        + ([{"name": "noise", "shape": ["batch", k], "dtype": "float32"}] if k else []),
        "outputs": [{"name": "action", "shape": ["batch", *([chunk] if chunk > 1 else []), int(policy.act_dim)],
                     "dtype": "float32"}],
        # a chunk head: the graph returns H actions per query, of which the runtime runs the first `execute`
        **({"chunk": {"length": chunk, "execute": int(policy.execute)}} if chunk > 1 else {}),
        "control": {"dt": control_dt, "rate_hz": (1.0 / control_dt) if control_dt else None},
        "normalization": {"observation": "in the graph", "enabled": bool(norm.enabled), "clip": norm.clip, "eps": norm.eps,
                          "mean": norm.stats.mean.tolist(), "var": norm.stats.var.tolist()},
        "sampling": _sampling(policy),
        "safety": safety,
        # tolerance: per action dimension, times the half-range where it exceeds 1 (float32 rounding scales with it)
        "checked": {"observations": int(obs.shape[0]), "real_observations": int(real.shape[0]),
                    "max_abs_error": max_error, "tolerance": tolerance, "tolerance_per_dimension": limit.tolist()},
        **(metadata or {}),
    }
    try:
        _publish(tmp, path, sidecar)
    except BaseException:  # before the renames: no temporary file is left behind (after them, see _publish)
        tmp.unlink(missing_ok=True)
        _remove_empty(made)
        raise
    return sidecar


def _temporary(directory: Path, prefix: str) -> Path:
    """A new empty file ``<prefix><random>.tmp`` in ``directory`` that no other export has (``O_EXCL``), with the
    permissions a plain write would give the model (``tempfile.mkstemp`` makes it owner-only). The run files' twin is
    ``robo_rl.metrics.new_hidden_file``: sim2real, installed on robots without robo_rl, does not import it."""
    while True:
        path = directory / f"{prefix}{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:  # another export's: draw another name
            continue


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``directory`` itself (no lock file is left in it): two exports publishing into
    one directory at once rename their pairs one after the other, not model A, model B, sidecar B, sidecar A. On a
    system or filesystem without ``flock`` there is no lock (the runtime refuses a mixed pair: sha256)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # e.g. ENOLCK on a network filesystem
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_empty(directories: list[Path]) -> None:
    """Remove the directories a failed export created (innermost first), those still empty."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:  # not empty (another process wrote there meanwhile): left as it is
            return


def _json_array(value: Any) -> Any:
    """A numpy array or number in a filter spec as its JSON list or number."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"safety: {value!r:.60} is not a number or list the sidecar's JSON can hold")


def _publish(tmp_model: Path, model: Path, sidecar: dict[str, Any]) -> None:
    """Both files under temporary names and fsynced, then renamed: the model first, the sidecar last.

    A crash in between leaves the new model next to the previous sidecar, whose sha256 the runtime
    finds does not match, so a mixed pair is refused rather than run.
    """
    tmp_json = _temporary(model.parent, ".policy.json.")
    try:
        tmp_json.write_text(json.dumps(sidecar, indent=2))
        _fsync(tmp_model)
        _fsync(tmp_json)
        with _directory_lock(model.parent):
            previous = _previous_model(model.parent)
            tmp_model.replace(model)
            tmp_json.replace(model.parent / "policy.json")
            # an earlier export in the other format: its model would stay beside a sidecar that no longer describes it
            if previous is not None and previous != model.name and previous in MODEL_FILES:
                (model.parent / previous).unlink(missing_ok=True)
    except BaseException:
        tmp_json.unlink(missing_ok=True)  # (gone once renamed)
        raise
    _fsync(model.parent)


def _previous_model(out_dir: Path) -> str | None:
    """The model file the export already in ``out_dir`` names (None: no readable earlier export)."""
    path = out_dir / "policy.json"
    if not path.is_file():  # (a named pipe there would wait for a writer, under the directory's lock)
        return None
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(previous, dict) or previous.get("format") != FORMAT:
        return None
    name = previous.get("model_file")
    return name if isinstance(name, str) else None


def _fsync(path: Path) -> None:
    """Flush a file's contents (or a directory's entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _session(path: Path):  # -> onnxruntime.InferenceSession
    """A one-thread CPU session, as the runtime makes (kept here so export does not need the runtime)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _sampling(policy: Any) -> dict[str, Any] | None:
    """How a generative policy's graph samples (steps unrolled, solver/scheduler), for the record."""
    inner = getattr(policy, "base", None) or getattr(policy, "decoder", None) or policy
    keys = ("steps", "solver", "scheduler_kind", "inference_steps", "train_steps", "beta_schedule", "action_chunk")
    info = {key: getattr(inner, key) for key in keys
            if isinstance(getattr(inner, key, None), (int, str))}
    if hasattr(policy, "n") and hasattr(policy, "critic"):
        # without a noise input (a Gaussian or mixture base) the N base candidates are all its deterministic
        # action: the graph chooses between that action and its edit (EXPO), or has one candidate (PA-RL)
        base = int(policy.n) if noise_dim(policy) else 1
        info["candidates"] = base * (2 if getattr(policy, "edit", None) is not None else 1)
    return info or None


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("robo-rl")
    except Exception:  # running from a source tree that is not installed
        return "0+unknown"
