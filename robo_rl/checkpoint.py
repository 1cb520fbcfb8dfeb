"""Checkpoints that cannot run code: safetensors for tensors, JSON for everything else, npz for
replay buffers (README, "Checkpoints and failure handling").

Layout of one checkpoint::

    checkpoints/step_0000120000/
        state.safetensors   every tensor of the training state (weights, optimizer moments, RNG states)
        state.json          the rest of the state, with {"__tensor__": key} where a tensor goes
        replay.npz          the replay buffer's filled rows (optional; an uncompressed np.savez file, never
                            unpickled: object arrays are refused on both sides)
        manifest.json       sizes and sha256 of the files above; written last

A replay buffer of a million Humanoid rows is ~2.9 GB, ~99% of a checkpoint (benchmarks/checkpoint_cost.py):
it is hashed while it is written (not read back), and loaded by mapping its arrays from the verified file,
so a resume copies the rows once, into the buffer, without a second in-memory copy. A load that does not
read the replay (evaluation, export) checks only its size. Each of the ``keep`` checkpoints holds its own
replay.npz. The mapped bytes are read after the hash is checked: a file rewritten while a run resumes from
it goes unnoticed, and one truncated then ends the process with SIGBUS (nothing else writes a checkpoint).

A checkpoint is written into a hidden temporary directory (``.tmp-step_X-PID``), fsynced and renamed
into place, so a run killed mid-write leaves either the previous checkpoints or a complete new one.
Re-saving an existing step moves the old one aside (``.old-step_X-PID``) first; a run killed between
the two renames leaves no ``step_X``, and the next save or resume puts the complete one of the two
back (``recover``), and removes hidden directories left by dead processes. Loading checks every file
against the manifest first and names the file that is missing, truncated or altered.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "robo-rl-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_PREFIX = "step_"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or of an unknown format."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (a full disk, permissions); the ones before it are untouched."""


class NonFiniteStateError(CheckpointError):
    """The state to checkpoint holds NaN/Inf (``name`` says where); nothing was written."""

    def __init__(self, message: str, name: str) -> None:
        super().__init__(message)
        self.name = name


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


class _HashingWriter:
    """A write-only stream over an open file that hashes what passes through it. It cannot seek, so
    zipfile streams each member once (sizes and CRC in a data descriptor after the data, as for a
    pipe) instead of going back to patch the header: one pass writes and hashes, no re-read."""

    def __init__(self, f: Any) -> None:
        self.f, self.sha256, self.bytes = f, hashlib.sha256(), 0

    def write(self, data: Any) -> int:
        self.sha256.update(data)
        self.f.write(data)
        n = memoryview(data).nbytes
        self.bytes += n
        return n

    def tell(self) -> int:
        return self.bytes

    def read(self, *_: Any) -> bytes:  # (np.savez takes an object with read() for an open file, never calls it)
        raise OSError("write-only stream")

    def flush(self) -> None:
        self.f.flush()


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> tuple[int, str]:
    """Write ``arrays`` with ``np.savez`` (an uncompressed .npz, read by ``np.load``) and return the file's
    (bytes, sha256), hashed while it is written instead of read back after the fsync. numpy streams each
    array in 16 MiB pieces (no whole copy is made); the file differs from one np.savez writes to a seekable file
    only in that each member's sizes and CRC follow its data (a zip data descriptor), which ``np.load`` (and
    robo-rl before this change) reads the same. (Object arrays are refused before: ``save_checkpoint``.)"""
    with open(path, "wb") as f:
        out = _HashingWriter(f)
        np.savez(out, **arrays)  # (object arrays were refused before: nothing here is pickled)
        out.flush()
    return out.bytes, out.sha256.hexdigest()


_MMAP_MIN = 1 << 20  # members at least this large are mapped from the file, not read into new memory


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz; never unpickles (object arrays are an error, as with ``allow_pickle=False``).

    Members stored uncompressed as .npy (everything ``_write_npz`` and ``np.savez`` write) are mapped
    copy-on-write from the file, so loading a replay buffer does not hold a second copy of it in memory:
    its rows are read once, straight into the buffer's tensors. Anything else goes through ``np.load``.
    """
    fmt = np.lib.format
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        simple = all(i.filename.endswith(".npy") and i.compress_type == zipfile.ZIP_STORED
                     and i.file_size == i.compress_size for i in infos)
    if not simple:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    arrays: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        end = os.fstat(f.fileno()).st_size
        for info in infos:
            key = info.filename[:-4]
            f.seek(info.header_offset)
            local = f.read(30)
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                raise ValueError(f"member {info.filename} has no local header")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            f.seek(start)
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f"member {info.filename} has .npy format version {version}")
            if dtype.hasobject:
                raise ValueError(f"member {info.filename}: Object arrays cannot be loaded when allow_pickle=False")
            offset = f.tell()
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if offset + nbytes != start + info.compress_size or offset + nbytes > end:
                raise ValueError(f"member {info.filename} holds {start + info.compress_size - offset} bytes of data, "
                                 f"its header says {nbytes}")
            order = "F" if fortran else "C"
            if nbytes >= _MMAP_MIN:
                arrays[key] = np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=shape, order=order)
            else:
                data = bytearray(nbytes)
                if f.readinto(data) != nbytes:
                    raise ValueError(f"member {info.filename} is cut short")
                arrays[key] = np.frombuffer(data, dtype=dtype).reshape(shape, order=order)
    return arrays


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
    ``keep`` then deletes all but the newest ``keep`` checkpoints at or below ``step`` (this one among
    them). Newer ones are left alone: they belong to a timeline a resume abandoned (resume takes the
    newest complete checkpoint, so they are incomplete or corrupt) and are overwritten when this run
    reaches their step.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    recover(directory)
    skeleton, tensors = flatten_state(state)
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise NonFiniteStateError(f"refusing to checkpoint step {step}: {name} holds NaN/Inf", name)

    for name, array in (replay or {}).items():
        if np.asarray(array).dtype.hasobject:
            raise TypeError(f"cannot checkpoint object array {name!r} in the replay buffer")
    final = directory / checkpoint_name(step)
    tmp = directory / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        save_file(tensors, str(tmp / "state.safetensors"), metadata={"format": FORMAT, "version": str(FORMAT_VERSION)})
        (tmp / "state.json").write_text(json.dumps(skeleton))
        hashed = {}
        if replay is not None:  # hashed as it is written: the largest file of a checkpoint is not read back
            hashed["replay.npz"] = _write_npz(tmp / "replay.npz", replay)
        files = {}
        for p in sorted(tmp.iterdir()):
            _fsync(p)
            size, digest = hashed.get(p.name) or (p.stat().st_size, _sha256(p))
            if p.stat().st_size != size:
                raise OSError(f"{p} holds {p.stat().st_size} bytes after writing {size}")
            files[p.name] = {"bytes": size, "sha256": digest}
        manifest = {"format": FORMAT, "version": FORMAT_VERSION, "step": step, "created": time.time(), "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _fsync(tmp / MANIFEST)
        _fsync(tmp)  # the directory entries of the files, not only their contents
    except (OSError, SafetensorError) as exc:  # e.g. a full disk: give back what the partial one took
        shutil.rmtree(tmp, ignore_errors=True)
        reason = getattr(exc, "strerror", None) or str(exc)
        raise CheckpointWriteError(f"could not write checkpoint step {step} in {directory} ({reason})") from exc

    if final.exists() or final.is_symlink():  # re-saving a step (e.g. the final step after a resume): swap atomically
        old = directory / f".old-{checkpoint_name(step)}-{os.getpid()}"
        os.replace(final, old)  # (a symlink or file in its place, e.g. a looping link: moved aside the same way)
        os.replace(tmp, final)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    else:
        os.replace(tmp, final)
    _fsync(directory)
    prune_checkpoints(directory, step, keep)
    return final


def prune_checkpoints(directory: str | Path, step: int, keep: int | None) -> None:
    """Delete all but the newest ``keep`` checkpoints up to ``step`` (newer ones, e.g. broken ones a resume
    skipped, wait for a save to pass them). Every save does it; so does a resume of a finished run, which
    saves nothing but may find what a save killed while it pruned left behind."""
    if keep is not None and keep > 0:
        timeline = [p for p in list_checkpoints(directory) if checkpoint_step(p) <= step]  # ends with step's own
        for stale in timeline[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(_PREFIX):])


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint directories under ``directory``, oldest first (temporary ones excluded)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and p.name[len(_PREFIX):].isdigit()]
    return sorted(found, key=checkpoint_step)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours: this process is not inside a save while it tidies up
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or cannot tell: leave its files alone
    return True


def _hidden(directory: Path) -> list[tuple[str, str, int, Path]]:
    """(kind "tmp"/"old", checkpoint name, pid, path) of the hidden directories a save creates."""
    found = []
    for p in directory.iterdir():
        for kind in ("tmp", "old"):
            head = f".{kind}-{_PREFIX}"
            name, _, pid = p.name[len(f".{kind}-"):].rpartition("-")
            if p.name.startswith(head) and p.is_dir() and pid.isdigit() and name[len(_PREFIX):].isdigit():
                found.append((kind, name, int(pid), p))
    return found


def _complete(path: Path) -> bool:
    try:
        verify_checkpoint(path)
        return True
    except CheckpointError:
        return False


def recover(directory: str | Path, warn: Any = None) -> None:
    """Finish what a killed save left behind; only directories of processes no longer running are touched.

    * ``step_X`` missing (killed between the two renames of a re-save): the complete one of its
      ``.tmp-step_X-PID`` (the new checkpoint; preferred) and ``.old-step_X-PID`` (the one it
      replaced) is renamed to ``step_X``; if neither is complete, the old one goes back as it was;
    * ``.tmp-*`` of a dead process otherwise: an interrupted write, deleted;
    * ``.old-*`` of a dead process whose ``step_X`` exists and verifies: the replaced one, deleted.
      (An ``.old-*`` next to a broken ``step_X`` is kept for inspection.)
    """
    directory = Path(directory)
    if not directory.is_dir():
        return
    stale = [h for h in _hidden(directory) if not _pid_alive(h[2])]
    changed = False
    for name in sorted({h[1] for h in stale}):
        final = directory / name
        mine = sorted((h for h in stale if h[1] == name), key=lambda h: h[0] != "tmp")  # tmp (newer) first
        if not final.exists():
            # the complete one, preferring the new; else the old one as it was (resume then reports it)
            pick = next((h for h in mine if _complete(h[3])), None) or next((h for h in mine if h[0] == "old"), None)
            if pick is not None:
                os.replace(pick[3], final)
                changed = True
                if warn is not None:
                    warn(f"recovered {final.name} from {pick[3].name} (a save of it was interrupted)")
        final_ok = final.exists() and _complete(final)
        for kind, _, _, path in mine:
            if path.exists() and (kind == "tmp" or final_ok):
                shutil.rmtree(path, ignore_errors=True)
                changed = True
    if changed:
        _fsync(directory)


def _read_manifest(path: Path, manifest_path: Path) -> dict[str, Any]:
    """The manifest, checked for shape and types; anything else is a CheckpointError naming the file."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path}: {manifest_path} is malformed ({what})")

    try:
        manifest = json.loads(manifest_path.read_text())
    except (ValueError, RecursionError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"checkpoint {path}: {manifest_path} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: {manifest_path} is not a robo-rl checkpoint manifest")
    version = manifest.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise bad(f"version is {version!r}, expected an integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}; this robo-rl reads up to {FORMAT_VERSION}, upgrade robo-rl")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise bad(f"files is {type(files).__name__}, expected a mapping")
    for name, info in files.items():
        if not name or name != Path(name).name or name.startswith(".") or name == MANIFEST:
            raise bad(f"files: {name!r} is not a file name inside the checkpoint")
        size = info.get("bytes") if isinstance(info, dict) else None
        digest = info.get("sha256") if isinstance(info, dict) else None
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 or not isinstance(digest, str):
            raise bad(f"files[{name!r}] is {info!r}, expected {{'bytes': int, 'sha256': str}}")
    if "state.safetensors" not in files or "state.json" not in files:
        raise CheckpointError(f"checkpoint {path}: manifest lists no state.safetensors/state.json")
    return manifest


_MAX_DEPTH = 100  # of a state.json skeleton (a training state's is ~10): unflatten_state recurses 2 frames a level


def _check_skeleton(node: Any) -> None:
    """Raise ValueError if a state.json skeleton is not what ``flatten_state`` writes."""
    stack = [(node, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > _MAX_DEPTH and isinstance(node, (list, dict)):
            raise ValueError(f"nested deeper than {_MAX_DEPTH} levels")
        if isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, dict):
            for marker in ("__tensor__", "__ndarray__"):
                if marker in node and not isinstance(node[marker], str):
                    raise ValueError(f"{marker} holds {node[marker]!r}, expected a tensor name")
            if "__items__" in node:
                items = node["__items__"]
                if not isinstance(items, list) or not all(
                        isinstance(i, list) and len(i) == 2 and not isinstance(i[0], (list, dict)) for i in items):
                    raise ValueError(f"__items__ holds {items!r:.80}, expected [[key, value], ...]")
                stack.extend((i[1], depth + 1) for i in items)
            elif "__tuple__" in node:
                if not isinstance(node["__tuple__"], list):
                    raise ValueError(f"__tuple__ holds {node['__tuple__']!r:.80}, expected a list")
                stack.extend((v, depth + 1) for v in node["__tuple__"])
            elif "__tensor__" not in node and "__ndarray__" not in node:
                stack.extend((v, depth + 1) for v in node.values())


def _read_skeleton(path: Path) -> Any:
    """state.json, parsed and checked; a CheckpointError naming the file otherwise."""
    try:
        skeleton = json.loads((path / "state.json").read_text())
        _check_skeleton(skeleton)
    except (ValueError, RecursionError, OSError) as exc:
        raise CheckpointError(f"checkpoint file {path / 'state.json'} is malformed ({exc})") from None
    return skeleton


def verify_checkpoint(path: str | Path, replay: bool = True) -> dict[str, Any]:
    """Check a checkpoint against its manifest; returns the manifest or raises CheckpointError naming the file.

    ``replay=False`` (for a load that does not read the replay buffer, e.g. of the weights to evaluate)
    checks replay.npz's presence and size but does not hash it: at a million rows it is ~99% of the bytes.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} {'is a file, not a checkpoint directory' if path.exists() else 'does not exist'}")
    if not manifest_path.is_file():
        if (path / "state.safetensors").exists() or (path / "state.json").exists():
            raise CheckpointError(f"checkpoint {path} is incomplete: {MANIFEST} is missing (its write was interrupted, "
                                  "or it is being pruned)")
        inside = list_checkpoints(path / "checkpoints") or list_checkpoints(path)
        hint = f"; the newest checkpoint under it is {inside[-1]}" if inside else ""  # a run directory, or its checkpoints/
        raise CheckpointError(f"{path} is not a checkpoint directory (no {MANIFEST}, no state files){hint}")
    manifest = _read_manifest(path, manifest_path)
    for name, info in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {f} is missing")
        try:
            size = f.stat().st_size
            if size != info["bytes"]:
                raise CheckpointError(f"checkpoint file {f} is truncated or altered: {size} bytes, the manifest says "
                                      f"{info['bytes']}")
            if (replay or name != "replay.npz") and _sha256(f) != info["sha256"]:
                raise CheckpointError(f"checkpoint file {f} does not match its sha256 in the manifest (corrupted or "
                                      "modified)")
        except FileNotFoundError:  # gone since is_file(): the run still training pruned this checkpoint meanwhile
            raise CheckpointError(f"checkpoint {path} is incomplete: {f} was removed while it was read (pruned by "
                                  "the run still training?)") from None
        except OSError as exc:
            raise CheckpointError(f"checkpoint file {f} cannot be read ({exc.strerror or exc})") from None
    _read_skeleton(path)
    return manifest


def load_checkpoint(path: str | Path, load_replay: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """Verify and load a checkpoint: (state, replay arrays or None). Never unpickles anything.

    Every file that is read is first checked against the manifest's sha256 (replay.npz only with
    ``load_replay``). The replay arrays are mapped from replay.npz, not read into memory: a buffer's
    ``load_state_dict`` copies them straight into its tensors (``np.array(a)`` makes an in-memory copy).
    """
    path = Path(path)
    manifest = verify_checkpoint(path, replay=load_replay)
    try:
        tensors = load_file(str(path / "state.safetensors"))
    except Exception as exc:  # safetensors raises its own error types for malformed headers
        raise CheckpointError(f"checkpoint file {path / 'state.safetensors'} cannot be read: {exc}") from None
    # each tensor in memory of its own: load_file's sit at their offsets in the file, some only 8-byte aligned, and
    # MKL's matrix product rounds such an input differently (a resumed run's first action, from the restored
    # observation, differed in the last bit from the unbroken run's)
    tensors = {key: t.clone() for key, t in tensors.items()}
    skeleton = _read_skeleton(path)
    try:
        state = unflatten_state(skeleton, tensors)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint file {path / 'state.json'} is inconsistent with state.safetensors: "
                              f"{type(exc).__name__}: {exc}") from None
    replay = None
    if load_replay and "replay.npz" in manifest["files"]:
        try:
            replay = _read_npz(path / "replay.npz")
        except Exception as exc:
            raise CheckpointError(f"checkpoint file {path / 'replay.npz'} cannot be read: {exc}") from None
    return state, replay


def latest_checkpoint(directory: str | Path, warn: Any = None, tidy: bool = True) -> Path | None:
    """The newest checkpoint that verifies (its replay.npz by size: see below); broken newer ones are skipped
    and reported via ``warn``.

    ``tidy``: first put back a checkpoint a killed re-save left aside and remove dead processes' temporary
    directories (``recover``). Only for the process that trains in the run directory (it holds its lock): a reader
    (eval, export) on another host, or in another PID namespace, sees a live training process's save as a dead one's,
    and would delete it as it is being written.
    """
    if tidy:
        recover(directory, warn)
    if warn is not None and Path(directory).is_dir():  # a step_X that is no directory (a file, a looping symlink)
        for p in sorted(Path(directory).iterdir()):
            if p.name.startswith(_PREFIX) and p.name[len(_PREFIX):].isdigit() and not p.is_dir():
                warn(f"skipping {p.name}: {p} is not a checkpoint directory "
                     f"({'a broken or looping symlink' if p.is_symlink() else 'a file'})")
    for path in reversed(list_checkpoints(directory)):
        try:
            # replay.npz by size only: a resume hashes it when it loads it (and falls back past a corrupt one),
            # evaluation and export never read it
            verify_checkpoint(path, replay=False)
            return path
        except CheckpointError as exc:
            if warn is not None:
                warn(f"skipping {path.name}: {exc}")
    return None
