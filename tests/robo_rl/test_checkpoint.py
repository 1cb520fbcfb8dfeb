"""Checkpoints: safetensors + JSON round trip, atomic writes, integrity errors that name the file."""

import json
import os

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
