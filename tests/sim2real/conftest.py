"""Exports built without torch: a tiny ONNX graph written with onnx.helper, plus its sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


def make_export(out_dir: Path, obs_dim: int = 4, act_dim: int = 2, noise_dim: int = 0, kind: str = "tanh",
                task: str = "InvertedPendulum-v5", dt: float = 0.04, low: float = -1.0, high: float = 1.0,
                weight_scale: float = 0.5, safety: dict | None = None, seed: int = 0, default_noise=None,
                weights: tuple[np.ndarray, np.ndarray] | None = None, chunk: tuple[int, int] | None = None) -> Path:
    """action = mid + half * tanh(obs @ W + b [+ noise @ Wn])   (kind="tanh", always within bounds)
    or     action = obs @ W + b [+ noise @ Wn]                   (kind="linear", unbounded: for bad-output tests),
    W and b random (``seed``, ``weight_scale``) unless ``weights`` gives them. ``chunk=(H, execute)``: a chunk
    head's export, the same formula with H * act_dim outputs returned as [batch, H, act_dim]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from sim2real.export import sha256_of

    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lo, hi = np.full(act_dim, low, np.float32), np.full(act_dim, high, np.float32)
    horizon = chunk[0] if chunk else 1
    out = horizon * act_dim  # the graph's outputs before a chunk's reshape
    w, b = weights if weights is not None else (rng.normal(size=(obs_dim, out)) * weight_scale,
                                                 rng.normal(size=out) * 0.1)
    init = [numpy_helper.from_array(np.asarray(w, np.float32), "W"), numpy_helper.from_array(np.asarray(b, np.float32), "b"),
            numpy_helper.from_array(np.tile((hi + lo) / 2, horizon), "mid"),
            numpy_helper.from_array(np.tile((hi - lo) / 2, horizon), "half")]
    inputs = [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", obs_dim])]
    nodes = [helper.make_node("MatMul", ["obs", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["h0"])]
    pre = "h0"
    if noise_dim:
        inputs.append(helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["batch", noise_dim]))
        init.append(numpy_helper.from_array(rng.normal(size=(noise_dim, out)).astype(np.float32), "Wn"))
        nodes += [helper.make_node("MatMul", ["noise", "Wn"], ["nw"]), helper.make_node("Add", ["h0", "nw"], ["h1"])]
        pre = "h1"
    flat = "flat" if chunk else "action"
    if kind == "tanh":
        nodes += [helper.make_node("Tanh", [pre], ["t"]), helper.make_node("Mul", ["t", "half"], ["s"]),
                  helper.make_node("Add", ["s", "mid"], [flat])]
    else:
        nodes.append(helper.make_node("Identity", [pre], [flat]))
    shape = ["batch", *([horizon] if chunk else []), act_dim]
    if chunk:
        init.append(numpy_helper.from_array(np.array([-1, horizon, act_dim], np.int64), "chunk_shape"))
        nodes.append(helper.make_node("Reshape", [flat, "chunk_shape"], ["action"]))
    graph = helper.make_graph(nodes, "tiny_policy", inputs,
                              [helper.make_tensor_value_info("action", TensorProto.FLOAT, shape)], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model)
    onnx.save(model, str(out_dir / "policy.onnx"))
    sidecar = {
        "format": "robo-rl-export", "version": 1, "model_file": "policy.onnx", "model_format": "onnx",
        "sha256": sha256_of(out_dir / "policy.onnx"), "task": task,
        "observation": {"dim": obs_dim, "dtype": "float32", "low": [None] * obs_dim, "high": [None] * obs_dim},
        "action": {"dim": act_dim, "low": lo.tolist(), "high": hi.tolist()},
        "noise": ({"dim": noise_dim, "default": default_noise if default_noise is not None else "zeros"}
                  if noise_dim else None),
        "inputs": [{"name": "obs", "shape": ["batch", obs_dim], "dtype": "float32"}]
        + ([{"name": "noise", "shape": ["batch", noise_dim], "dtype": "float32"}] if noise_dim else []),
        "outputs": [{"name": "action", "shape": shape, "dtype": "float32"}],
        **({"chunk": {"length": chunk[0], "execute": chunk[1]}} if chunk else {}),
        "control": {"dt": dt, "rate_hz": 1.0 / dt},
        "safety": safety or {"filters": []},  # as the exporter writes it
    }
    (out_dir / "policy.json").write_text(json.dumps(sidecar, indent=2))
    return out_dir


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    return make_export(tmp_path / "export")
