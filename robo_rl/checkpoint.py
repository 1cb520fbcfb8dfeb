"""Checkpoints that cannot run code: safetensors for tensors, JSON for everything else, npz for
replay buffers (ARCHITECTURE.md, contract 4).

Layout of one checkpoint::

    checkpoints/step_000120000/
        state.safetensors   every tensor of the training state (weights, optimizer moments, RNG states)
        state.json          the rest of the state, with {"__tensor__": key} where a tensor goes
        replay.npz          the replay buffer's filled rows (optional; loaded with allow_pickle=False)
        manifest.json       sizes and sha256 of the files above; written last

A checkpoint is written into a hidden temporary directory and renamed into place, so a run killed
mid-write leaves either the previous checkpoints or a complete new one. Loading checks every file
against the manifest first and names the file that is missing, truncated or altered.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

FORMAT = "robo-rl-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_PREFIX = "step_"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or of an unknown format."""


# -- nested state <-> (JSON skeleton, flat tensors) --------------------------------------------------

def flatten_state(obj: Any, tensors: dict[str, torch.Tensor] | None = None, key: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state into a JSON-able skeleton and a flat dict of tensors.

    Handles dicts (any str/int keys), lists, tuples, tensors, numpy arrays and JSON scalars.
    """
    tensors = {} if tensors is None else tensors
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}, tensors
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError(f"cannot checkpoint object array at {key!r}")
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__ndarray__": key}, tensors
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: flatten_state(v, tensors, f"{key}.{k}" if key else k)[0] for k, v in obj.items()}, tensors
        items = [[k, flatten_state(v, tensors, f"{key}.{k}")[0]] for k, v in obj.items()]
        return {"__items__": items}, tensors
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten_state(v, tensors, f"{key}.{i}")[0] for i, v in enumerate(obj)]}, tensors
    if isinstance(obj, list):
        return [flatten_state(v, tensors, f"{key}.{i}")[0] for i, v in enumerate(obj)], tensors
    if isinstance(obj, np.generic):
        return obj.item(), tensors
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj, tensors
    raise TypeError(f"cannot checkpoint {type(obj).__name__} at {key!r}")


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__ndarray__" in skeleton:
            return tensors[skeleton["__ndarray__"]].numpy()
        if "__items__" in skeleton:
            return {k: unflatten_state(v, tensors) for k, v in skeleton["__items__"]}
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
        return {k: unflatten_state(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


# -- files -------------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_name(step: int) -> str:
    return f"{_PREFIX}{step:010d}"


def save_checkpoint(
    directory: str | Path,
    step: int,
    state: dict[str, Any],
    replay: dict[str, np.ndarray] | None = None,
    keep: int | None = None,
) -> Path:
    """Write ``state`` (and a replay buffer) as checkpoint ``step`` under ``directory``, atomically.

    Refuses to write non-finite weights, so the last checkpoint on disk is always a good one.
    ``keep`` deletes all but the newest ``keep`` checkpoints afterwards.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    skeleton, tensors = flatten_state(state)
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"refusing to checkpoint step {step}: {name} holds NaN/Inf")

    final = directory / checkpoint_name(step)
    tmp = directory / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(tensors, str(tmp / "state.safetensors"), metadata={"format": FORMAT, "version": str(FORMAT_VERSION)})
    (tmp / "state.json").write_text(json.dumps(skeleton))
    if replay is not None:
        with open(tmp / "replay.npz", "wb") as f:
            np.savez(f, **replay)
    files = {}
    for p in sorted(tmp.iterdir()):
        _fsync(p)
        files[p.name] = {"bytes": p.stat().st_size, "sha256": _sha256(p)}
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, "step": step, "created": time.time(), "files": files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    _fsync(tmp / MANIFEST)

    if final.exists():  # re-saving a step (e.g. the final step after a resume): swap atomically
        old = directory / f".old-{checkpoint_name(step)}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    _fsync(directory)
    if keep is not None and keep > 0:
        for stale in list_checkpoints(directory)[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint directories under ``directory``, oldest first (temporary ones excluded)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and p.name[len(_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check a checkpoint against its manifest; returns the manifest or raises CheckpointError naming the file."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: {MANIFEST} is missing (the write was interrupted)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path}: {manifest_path} is not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"checkpoint {path}: {manifest_path} is not a robo-rl checkpoint manifest")
    if manifest.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {manifest['version']}; this robo-rl reads up to {FORMAT_VERSION}, upgrade robo-rl")
    for name, info in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {f} is missing")
        size = f.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(f"checkpoint file {f} is truncated or altered: {size} bytes, the manifest says {info['bytes']}")
        if _sha256(f) != info["sha256"]:
            raise CheckpointError(f"checkpoint file {f} does not match its sha256 in the manifest (corrupted or modified)")
    if "state.safetensors" not in manifest["files"] or "state.json" not in manifest["files"]:
        raise CheckpointError(f"checkpoint {path}: manifest lists no state.safetensors/state.json")
    return manifest


def load_checkpoint(path: str | Path, load_replay: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """Verify and load a checkpoint: (state, replay arrays or None). Never unpickles anything."""
    path = Path(path)
    manifest = verify_checkpoint(path)
    try:
        tensors = load_file(str(path / "state.safetensors"))
    except Exception as exc:  # safetensors raises its own error types for malformed headers
        raise CheckpointError(f"checkpoint file {path / 'state.safetensors'} cannot be read: {exc}") from None
    try:
        skeleton = json.loads((path / "state.json").read_text())
        state = unflatten_state(skeleton, tensors)
    except (json.JSONDecodeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint file {path / 'state.json'} is inconsistent with state.safetensors: {exc}") from None
    replay = None
    if load_replay and "replay.npz" in manifest["files"]:
        try:
            with np.load(path / "replay.npz", allow_pickle=False) as npz:
                replay = {k: npz[k] for k in npz.files}
        except Exception as exc:
            raise CheckpointError(f"checkpoint file {path / 'replay.npz'} cannot be read: {exc}") from None
    return state, replay


def latest_checkpoint(directory: str | Path, warn: Any = None) -> Path | None:
    """The newest checkpoint that verifies; broken newer ones are skipped and reported via ``warn``."""
    for path in reversed(list_checkpoints(directory)):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as exc:
            if warn is not None:
                warn(f"skipping {path.name}: {exc}")
    return None
