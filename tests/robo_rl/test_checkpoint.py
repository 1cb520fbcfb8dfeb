"""Checkpoints: safetensors + JSON round trip, atomic writes, integrity errors that name the file."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from robo_rl.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from tests.helpers import rewrite_consistently


def sample_state():
    return {
        "weights": {"a.b": torch.randn(3, 4), "count": torch.tensor(7)},
        "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999)}]},
        "rng": ("MT19937", np.arange(5, dtype=np.uint32), 2, 0, 0.0),
        "big_int": 2**100,
        "none": None,
        "text": "hopper",
    }


def test_round_trip_preserves_types_and_values(tmp_path):
    state = sample_state()
    replay = {"obs": np.random.randn(10, 3).astype(np.float32), "pos": np.array(4)}
    path = save_checkpoint(tmp_path, 100, state, replay)
    loaded, rep = load_checkpoint(path)
    assert torch.equal(loaded["weights"]["a.b"], state["weights"]["a.b"])
    assert list(loaded["optimizer"]["state"].keys()) == [0]  # int keys survive JSON
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)  # so do tuples
    assert loaded["rng"][0] == "MT19937" and isinstance(loaded["rng"][1], np.ndarray)
    assert loaded["big_int"] == 2**100 and loaded["none"] is None
    np.testing.assert_array_equal(rep["obs"], replay["obs"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]  # nothing half-written left


def test_keep_last_k(tmp_path):
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, {"x": torch.zeros(1)}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000000030", "step_0000000040"]


def test_truncated_file_is_named(tmp_path):
    path = save_checkpoint(tmp_path, 1, sample_state())
    f = path / "state.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"state\.safetensors is truncated"):
        load_checkpoint(path)


def test_tampered_file_is_named(tmp_path):
    path = save_checkpoint(tmp_path, 1, sample_state())
    f = path / "state.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte changed
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"state\.safetensors does not match its sha256"):
        load_checkpoint(path)


def test_missing_manifest_means_incomplete(tmp_path):
    path = save_checkpoint(tmp_path, 1, sample_state())
    os.remove(path / "manifest.json")
    with pytest.raises(CheckpointError, match="incomplete: manifest.json is missing"):
        verify_checkpoint(path)


def test_latest_skips_broken_newer_checkpoints(tmp_path):
    good = save_checkpoint(tmp_path, 10, sample_state())
    bad = save_checkpoint(tmp_path, 20, sample_state())
    (bad / "state.json").write_text("{}")
    warnings = []
    assert latest_checkpoint(tmp_path, warn=warnings.append) == good
    assert "step_0000000020" in warnings[0] and "state.json" in warnings[0]


def test_refuses_to_write_nan_weights(tmp_path):
    with pytest.raises(CheckpointError, match="NaN/Inf"):
        save_checkpoint(tmp_path, 5, {"w": torch.tensor([1.0, float("nan")])})
    assert list_checkpoints(tmp_path) == []


def test_nothing_is_unpickled(tmp_path):
    # an object array (which would need pickle) cannot be checkpointed...
    with pytest.raises(TypeError, match="object array"):
        save_checkpoint(tmp_path, 1, {"bad": np.array([{"a": 1}], dtype=object)})
    # ...and a replay.npz holding pickled objects is refused on load, not executed
    path = save_checkpoint(tmp_path, 2, {"w": torch.ones(1)}, {"obs": np.zeros(3)})
    np.savez(path / "replay.npz", obs=np.array([{"evil": 1}], dtype=object))
    manifest = json.loads((path / "manifest.json").read_text())
    import hashlib

    data = (path / "replay.npz").read_bytes()
    manifest["files"]["replay.npz"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="replay.npz cannot be read"):
        load_checkpoint(path)


def test_a_path_that_is_no_checkpoint_says_what_it_is(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        verify_checkpoint(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a checkpoint directory"):
        verify_checkpoint(tmp_path / "file")
    with pytest.raises(CheckpointError, match=r"is not a checkpoint directory \(no manifest.json, no state files\)$"):
        verify_checkpoint(tmp_path)
    saved = save_checkpoint(tmp_path / "run" / "checkpoints", 100, {"w": torch.ones(2)})
    for where in (tmp_path / "run", tmp_path / "run" / "checkpoints"):  # a run directory, or its checkpoints/
        with pytest.raises(CheckpointError, match=f"the newest checkpoint under it is {saved}"):
            verify_checkpoint(where)


def test_keep_never_deletes_the_checkpoint_just_written_nor_counts_newer_broken_ones(tmp_path):
    for step in (100, 200, 300):
        save_checkpoint(tmp_path, step, {"w": torch.full((2,), float(step))})
    (tmp_path / "step_0000000300" / "state.safetensors").write_bytes(b"garbage")  # resume skips it
    assert latest_checkpoint(tmp_path).name == "step_0000000200"
    saved = save_checkpoint(tmp_path, 210, {"w": torch.ones(2)}, keep=1)  # the resumed run's next save
    assert saved.is_dir() and latest_checkpoint(tmp_path) == saved
    # the run's own older ones are pruned; the newer abandoned one is left to be overwritten at step 300
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000000210", "step_0000000300"]
    save_checkpoint(tmp_path, 300, {"w": torch.full((2,), 3.0)}, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000000300"]
    assert latest_checkpoint(tmp_path).name == "step_0000000300"


@pytest.mark.parametrize("manifest", [
    "[]",
    "null",
    '{"format": "robo-rl-checkpoint", "version": "1", "files": {}}',
    '{"format": "robo-rl-checkpoint", "version": null, "files": {}}',
    '{"format": "robo-rl-checkpoint", "version": 1, "files": {"state.json": null}}',
    '{"format": "robo-rl-checkpoint", "version": 1, "files": {"state.json": {"sha256": "0"}}}',
    '{"format": "robo-rl-checkpoint", "version": 1, "files": {"state.json": {"bytes": "12", "sha256": "0"}}}',
    '{"format": "robo-rl-checkpoint", "version": 1, "files": {"../state.json": {"bytes": 1, "sha256": "0"}}}',
    '{"format": "robo-rl-checkpoint", "version": 1, "files": []}',
])
def test_malformed_manifest_is_skipped_on_resume_not_a_crash(tmp_path, manifest):
    good = save_checkpoint(tmp_path, 100, sample_state())
    bad = save_checkpoint(tmp_path, 200, sample_state())
    (bad / "manifest.json").write_text(manifest)
    with pytest.raises(CheckpointError, match=r"step_0000000200.*manifest\.json"):
        verify_checkpoint(bad)
    warnings = []
    assert latest_checkpoint(tmp_path, warn=warnings.append) == good
    assert "step_0000000200" in warnings[0]


@pytest.mark.parametrize("skeleton", ['{"__tuple__": 5}', '{"a": {"__items__": [[1]]}}', '{"a": {"__tensor__": [1]}}',
                                      '{"a": {"__items__": [[[1], 2]]}}', '[' * 100_000,
                                      '{"a": ' + '[' * 700 + ']' * 700 + '}'])  # parses, but is deeper than the stack
def test_malformed_state_json_is_a_checkpoint_error_naming_the_file(tmp_path, skeleton):
    good = save_checkpoint(tmp_path, 100, sample_state())
    bad = save_checkpoint(tmp_path, 200, sample_state())
    rewrite_consistently(bad, "state.json", skeleton)
    with pytest.raises(CheckpointError, match=r"step_0000000200/state\.json"):
        load_checkpoint(bad)
    assert latest_checkpoint(tmp_path) == good


def test_state_json_naming_a_missing_tensor_is_a_checkpoint_error(tmp_path):
    path = save_checkpoint(tmp_path, 100, {"w": torch.ones(2)})
    rewrite_consistently(path, "state.json", '{"w": {"__tensor__": "nope"}}')
    with pytest.raises(CheckpointError, match=r"state\.json is inconsistent with state\.safetensors"):
        load_checkpoint(path)


def _kill_resave_between_renames(tmp_path, monkeypatch):
    """Re-save step 200 and die between moving the old one aside and moving the new one in."""
    import robo_rl.checkpoint as ckpt

    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between the two renames")
        return real(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 200, {"w": torch.full((2,), 3.0)})
    monkeypatch.setattr(ckpt.os, "replace", real)
    assert not (tmp_path / "step_0000000200").exists()  # the window the recovery is for


def test_a_resave_killed_between_its_renames_is_recovered_on_resume(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 100, {"w": torch.ones(2)})
    save_checkpoint(tmp_path, 200, {"w": torch.full((2,), 2.0)})
    _kill_resave_between_renames(tmp_path, monkeypatch)
    warnings = []
    path = latest_checkpoint(tmp_path, warn=warnings.append)
    assert path.name == "step_0000000200" and "recovered" in warnings[0]
    assert torch.equal(load_checkpoint(path)[0]["w"], torch.full((2,), 3.0))  # the complete new one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000000100", "step_0000000200"]  # nothing hidden left


def test_an_interrupted_resave_falls_back_to_the_old_checkpoint_if_the_new_one_is_incomplete(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 200, {"w": torch.full((2,), 2.0)})
    _kill_resave_between_renames(tmp_path, monkeypatch)
    tmp = next(tmp_path.glob(".tmp-*"))
    os.remove(tmp / "manifest.json")
    save_checkpoint(tmp_path, 300, {"w": torch.ones(2)})  # the next save tidies up too
    assert torch.equal(load_checkpoint(tmp_path / "step_0000000200")[0]["w"], torch.full((2,), 2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000000200", "step_0000000300"]


def test_stale_temporary_directories_are_removed_but_not_those_of_a_live_save(tmp_path):
    import subprocess
    import sys

    save_checkpoint(tmp_path, 100, {"w": torch.ones(2)})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for name in (f".tmp-step_0000000200-{dead_pid}", f".old-step_0000000100-{dead_pid}",
                     f".tmp-step_0000000300-{live.pid}"):
            (tmp_path / name).mkdir()
            (tmp_path / name / "replay.npz").write_bytes(b"x" * 1000)
        save_checkpoint(tmp_path, 110, {"w": torch.ones(2)})
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            f".tmp-step_0000000300-{live.pid}", "step_0000000100", "step_0000000110"]
    finally:
        live.kill()
        live.wait()


def test_the_temporary_directory_is_fsynced_before_it_is_renamed(tmp_path, monkeypatch):
    import robo_rl.checkpoint as ckpt

    events, real_fsync, real_replace = [], ckpt._fsync, os.replace
    monkeypatch.setattr(ckpt, "_fsync", lambda p: (events.append(("fsync", Path(p).name)), real_fsync(p))[1])
    monkeypatch.setattr(ckpt.os, "replace", lambda a, b: (events.append(("rename", Path(a).name)), real_replace(a, b))[1])
    save_checkpoint(tmp_path, 5, {"w": torch.ones(2)})
    tmp_name = f".tmp-step_0000000005-{os.getpid()}"
    assert events.index(("fsync", tmp_name)) < events.index(("rename", tmp_name))


def test_a_step_entry_that_is_no_directory_is_named_and_a_save_replaces_it(tmp_path):
    save_checkpoint(tmp_path, 100, {"w": torch.ones(2)})
    loop = tmp_path / "step_0000000200"
    os.symlink(loop, loop)  # a symlink loop where a checkpoint should be
    warnings = []
    assert latest_checkpoint(tmp_path, warn=warnings.append).name == "step_0000000100"
    assert any("step_0000000200" in w and "not a checkpoint directory" in w for w in warnings)  # named, not silent
    # the run that resumed from step 100 reaches step 200 again: its save replaces the link (it crashed on it)
    save_checkpoint(tmp_path, 200, {"w": torch.full((2,), 2.0)})
    assert not loop.is_symlink() and torch.equal(load_checkpoint(loop)[0]["w"], torch.full((2,), 2.0))


@pytest.mark.parametrize("damage", ["no_generator", "obs_dim", "rows", "pos", "object"])
def test_a_saved_replay_buffer_that_does_not_fit_is_refused_before_anything_loads(damage):
    from robo_rl.storage.replay import ReplayBuffer

    buf = ReplayBuffer(10, 3, 1)
    buf.add(torch.ones(4, 3), torch.ones(4, 1), torch.ones(4), torch.ones(4, 3), torch.zeros(4))
    state = buf.state_dict()
    if damage == "no_generator":
        del state["generator"]
    elif damage == "obs_dim":
        state["obs"] = state["obs"][:, :2]
    elif damage == "rows":
        state["rewards"] = state["rewards"][:2]
    elif damage == "pos":
        state["pos"] = np.array(7)
    else:
        state["actions"] = np.array([["a"]] * 4)
    fresh = ReplayBuffer(10, 3, 1)
    with pytest.raises(ValueError, match="saved replay buffer"):  # it used to be a KeyError or torch's RuntimeError
        fresh.load_state_dict(state)
    assert len(fresh) == 0 and fresh.obs.abs().sum() == 0  # nothing half-loaded


# -- the replay buffer at scale: written once (hashed on the way), mapped on load, old files still read ----------

def _filled_buffer(rows=1200, obs_dim=300):
    from robo_rl.storage.replay import ReplayBuffer

    buf = ReplayBuffer(rows, obs_dim, 2, seed=3)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # wraps around: pos != size
        buf.add(torch.randn(500, obs_dim, generator=g), torch.randn(500, 2, generator=g), torch.randn(500, generator=g),
                torch.randn(500, obs_dim, generator=g), torch.rand(500, generator=g) < 0.1)
    return buf


def test_replay_is_hashed_while_written_and_reads_back_as_a_plain_npz(tmp_path):
    import hashlib

    buf = _filled_buffer()
    path = save_checkpoint(tmp_path, 1, {"w": torch.ones(2)}, buf.state_dict())
    data = (path / "replay.npz").read_bytes()
    entry = json.loads((path / "manifest.json").read_text())["files"]["replay.npz"]
    assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    with np.load(path / "replay.npz", allow_pickle=False) as npz:  # what older robo-rl (and anyone) reads
        for key, value in buf.state_dict().items():
            np.testing.assert_array_equal(npz[key], value)
            assert npz[key].dtype == value.dtype


@pytest.mark.parametrize("capacity, block", [(1200, 64 << 20), (1200, 3000), (5000, 64 << 20), (5000, 3000)])
def test_a_replay_loaded_from_its_mapped_file_resumes_exactly(tmp_path, monkeypatch, capacity, block):
    # a full buffer that wrapped around, and one partly filled; copied in one block or in many
    import warnings

    import robo_rl.storage.replay as replay_module
    from robo_rl.storage.replay import ReplayBuffer

    monkeypatch.setattr(replay_module, "_LOAD_BLOCK_BYTES", block)  # 3000 bytes: 2 rows of obs per block
    buf = _filled_buffer(capacity)
    _, replay = load_checkpoint(save_checkpoint(tmp_path, 1, {"w": torch.ones(2)}, buf.state_dict()))
    assert isinstance(replay["obs"], np.memmap)  # not a second in-memory copy of the buffer
    fresh = ReplayBuffer(buf.capacity, 300, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (torch warns about read-only arrays)
        fresh.load_state_dict(replay)
    assert (fresh.size, fresh.pos) == (buf.size, buf.pos)
    for name in buf.fields:
        assert torch.equal(getattr(fresh, name), getattr(buf, name))
    assert torch.equal(fresh.sample(64).obs, buf.sample(64).obs)  # the sampler's generator too


@pytest.mark.parametrize("writer", ["savez", "savez_compressed"])
def test_replay_files_of_earlier_versions_still_load(tmp_path, writer):
    # checkpoints written before replay.npz was streamed: np.savez's layout (and a compressed one, for good measure)
    from robo_rl.storage.replay import ReplayBuffer

    buf = _filled_buffer()
    path = save_checkpoint(tmp_path, 1, {"w": torch.ones(2)}, buf.state_dict())
    import io

    old = io.BytesIO()
    getattr(np, writer)(old, **buf.state_dict())
    rewrite_consistently(path, "replay.npz", old.getvalue())
    _, replay = load_checkpoint(path)
    fresh = ReplayBuffer(buf.capacity, 300, 2)
    fresh.load_state_dict(replay)
    for name in buf.fields:
        assert torch.equal(getattr(fresh, name), getattr(buf, name))


def test_a_replay_header_promising_more_rows_than_the_file_holds_is_refused(tmp_path):
    buf = _filled_buffer()
    path = save_checkpoint(tmp_path, 1, {"w": torch.ones(2)}, buf.state_dict())
    data = (path / "replay.npz").read_bytes()
    assert data.count(b"(1200, 300)") == 2  # obs and next_obs
    rewrite_consistently(path, "replay.npz", data.replace(b"(1200, 300)", b"(9200, 300)"))  # same length, hash agrees
    with pytest.raises(CheckpointError, match=r"replay\.npz cannot be read"):
        load_checkpoint(path)


def test_loading_without_the_replay_does_not_hash_it_but_a_resume_does(tmp_path, monkeypatch):
    import robo_rl.checkpoint as ckpt

    path = save_checkpoint(tmp_path, 1, {"w": torch.ones(2)}, _filled_buffer().state_dict())
    data = bytearray((path / "replay.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    (path / "replay.npz").write_bytes(bytes(data))
    hashed = []
    real = ckpt._sha256
    monkeypatch.setattr(ckpt, "_sha256", lambda p: (hashed.append(Path(p).name), real(p))[1])
    state, replay = load_checkpoint(path, load_replay=False)  # the weights, e.g. to evaluate: not the 3 GB replay
    assert replay is None and torch.equal(state["w"], torch.ones(2)) and "replay.npz" not in hashed
    with pytest.raises(CheckpointError, match=r"replay\.npz does not match its sha256"):
        load_checkpoint(path, load_replay=True)
    (path / "replay.npz").write_bytes(bytes(data[:-1]))
    with pytest.raises(CheckpointError, match=r"replay\.npz is truncated"):  # its size is still checked
        load_checkpoint(path, load_replay=False)


def test_an_object_array_in_the_replay_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(TypeError, match="object array 'obs'"):
        save_checkpoint(tmp_path, 1, {"w": torch.ones(2)}, {"obs": np.array([{"a": 1}], dtype=object)})
    assert list(tmp_path.iterdir()) == []


def test_a_loaded_tensor_gives_the_products_the_saved_one_gave(tmp_path):
    # load_file's tensors sat at their offsets in state.safetensors (here 4 bytes past a 16-byte boundary), and
    # MKL's matrix product for a few rows rounds such an input differently: a resumed run's first action, from
    # its restored observation, differed in the last bit from the unbroken run's
    g = torch.Generator().manual_seed(0)
    obs, weight = torch.randn(2, 11, generator=g), torch.randn(32, 11, generator=g)
    path = save_checkpoint(tmp_path, 1, {"a": torch.zeros(1), "obs": obs})  # "a", 4 bytes, comes first in the file
    loaded, _ = load_checkpoint(path)
    assert torch.equal(loaded["obs"], obs)
    assert torch.equal(torch.nn.functional.linear(loaded["obs"], weight), torch.nn.functional.linear(obs, weight))


def test_a_checkpoint_pruned_while_it_is_verified_is_a_checkpoint_error(tmp_path, monkeypatch):
    # robo-rl eval/export on a run still training: a file removed between its is_file() and its hash raised a bare
    # FileNotFoundError ("[Errno 2] ..."), past the code that moves on to the newer checkpoint
    import shutil

    import robo_rl.checkpoint as C

    old = save_checkpoint(tmp_path, 10, sample_state())
    hash_file = C._sha256

    def pruned_meanwhile(path):
        shutil.rmtree(old)  # the run's save of a newer checkpoint prunes this one
        return hash_file(path)

    monkeypatch.setattr(C, "_sha256", pruned_meanwhile)
    with pytest.raises(CheckpointError, match=r"step_0000000010 is incomplete: .* was removed while it was read \(pruned "
                                              r"by the run still training\?\)"):
        verify_checkpoint(old)
