"""Inference latency per action of every policy head: exported ONNX (onnxruntime) vs the torch policy.

Each head is built with the defaults `robo-rl train algo=<a> policy=<p> env=hopper` would use
(Hopper-v5: 11 observations, 3 actions), exported with `sim2real.export.export_policy` (which checks
parity), then timed one call at a time. GoRL's policy is the one a trained run exports: re-centred, as its
first refit leaves it, so it also runs the anchor (a frozen copy of the latent's mean network); the
`gorl-latent-flow-unanchored` variant is the policy before that refit.

  * onnxruntime, one intra-op thread, batch 1 (the robot side): p50 / p99 / max per action;
  * the torch policy's deterministic `act` (one thread, no grad), batch 1: p50 / p99, the peer path
    a user without an export would run;
  * both at batch 256 (per call), for vectorized simulation;
  * the torch policy's `compiled_act` (torch.compile, inductor with its C++ wrapper) at batch 1, its
    calls alternated with the eager `act`'s in rounds (--no-compiled skips it: compiling takes 5-60 s
    per head the first time).

Targets (issue 5): Gaussian MLP p99 <= 0.2 ms, flow (4 steps) p99 <= 1 ms, diffusion (DDIM, 10 steps)
p99 <= 2 ms with onnxruntime at batch 1. Issue 4: flow (4 steps) within 3x of the Gaussian head.

    python benchmarks/export_latency.py              # every head, 3000 timed calls each
    python benchmarks/export_latency.py --calls 500 --heads sac-gaussian flow-4
    python benchmarks/export_latency.py --floor-only   # bare ops of flow-4 vs the Gaussian; Mish on [512, 256]
    python benchmarks/export_latency.py --heads sac-gaussian flow-4 flow-2 flow-4-256x2 --name export_latency_flow_variants
    python benchmarks/export_latency.py --heads sac-gaussian gorl-latent-flow gorl-latent-flow-unanchored --name export_latency_gorl_anchored
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import markdown_table, save, whole_number  # noqa: E402

HEADS = {  # name -> `robo-rl train` overrides
    "sac-gaussian": ["algo=sac"],
    "ppo-gaussian": ["algo=ppo"],
    "td3-deterministic": ["algo=td3"],
    "mixture": ["algo=ppo", "policy=mixture"],
    "flow-4": ["algo=parl", "policy=flow", "policy.steps=4"],
    "diffusion-ddim-10": ["algo=parl", "policy=diffusion", "policy.scheduler=ddim", "policy.inference_steps=10"],
    "gorl-latent-flow": ["algo=gorl"],
    "expo-flow (best of 2N)": ["algo=expo", "policy=flow"],
    "parl-flow (best of N)": ["algo=parl", "algo.num_candidates=8", "policy=flow", "policy.steps=4"],
}
# Smaller flow heads than the default, for the batch-1 latency question (not in the default table; see --name)
VARIANTS = {
    "flow-2": ["algo=parl", "policy=flow", "policy.steps=2"],
    "flow-4-256x2": ["algo=parl", "policy=flow", "policy.steps=4", "policy.hidden_sizes=[256,256]"],
    # GoRL's policy before its first refit (or with the zero reset), without the re-centring anchor
    "gorl-latent-flow-unanchored": ["algo=gorl", "algo.recenter_latent=false"],
}
BARE = {"flow-4", "diffusion-ddim-10", *VARIANTS}  # the head itself, not a learner's acting policy around it
TARGETS_MS = {"sac-gaussian": 0.2, "ppo-gaussian": 0.2, "flow-4": 1.0, "diffusion-ddim-10": 2.0}


def build(overrides: list[str], bare: bool = False):
    from robo_rl.build import build_env, build_learner, build_policy
    from robo_rl.defaults import resolve_defaults
    from robo_rl.train import compose_config

    cfg = resolve_defaults(compose_config(["env=hopper", "env.num_envs=1", *overrides]))
    env = build_env(cfg, num_envs=1, randomize=False)
    try:
        learner = build_learner(cfg, build_policy(cfg, env))
        obs = [env.reset(seed=0).numpy()]
        for _ in range(255):
            o, *_ = env.step(torch.as_tensor(np.random.default_rng(len(obs)).uniform(-1, 1, (1, env.act_dim)), dtype=torch.float32))
            obs.append(o.numpy())
    finally:
        env.close()
    # flow-4 / diffusion rows time the bare head (PA-RL keeps it in learner.head and acts with the best of N)
    policy = (learner.head if bare and hasattr(learner, "head") else learner.policy).eval()
    policy.obs_norm.update(torch.as_tensor(np.concatenate(obs)))  # realistic statistics in the graph
    if getattr(policy, "anchor", None) is not None and learner.reset_latent and learner.recenter_latent:
        # GoRL as a trained run exports it: after its first refit, re-centred on a frozen copy of the latent's
        # mean network (one more 64x64 MLP per action); the scale is the latent's std, as a refit passes
        with torch.no_grad():
            policy.recenter(policy.latent.log_std.exp())
    return policy, np.concatenate(obs).astype(np.float32)


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    a = np.asarray(samples_ns, dtype=np.float64) / 1e6
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max()),
            "mean": float(a.mean())}


def time_calls(fn, inputs: list, calls: int, warmup: int = 200) -> list[int]:
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    out = []
    for i in range(calls):
        x = inputs[i % len(inputs)]
        t = time.perf_counter_ns()
        fn(x)
        out.append(time.perf_counter_ns() - t)
    return out


def measure(name: str, overrides: list[str], calls: int, workdir: Path, compiled: bool = True) -> dict:
    from sim2real.export import export_policy
    from sim2real.runtime import onnx_session

    policy, obs = build(overrides, bare=name in BARE)
    out = workdir / name.split()[0]
    sidecar = export_policy(policy, out, "onnx", check_obs=obs[:64])
    session = onnx_session(out / "policy.onnx", threads=1)
    k = sidecar["noise"]["dim"] if sidecar["noise"] else 0
    default = (np.asarray(sidecar["noise"]["default"], np.float32) if sidecar["noise"] and sidecar["noise"]["default"] != "zeros"
               else np.zeros(k, np.float32))
    row = {"head": name, "params": sum(p.numel() for p in policy.parameters()), "noise_dim": k,
           "parity_max_abs_error": sidecar["checked"]["max_abs_error"], "exporter": sidecar["exporter"],
           "gorl_anchored": bool(getattr(policy, "anchored", False))}
    for batch in (1, 256):
        batches = [obs[(i * batch) % 256:(i * batch) % 256 + batch] if batch == 1 else obs for i in range(64)]
        noise = np.broadcast_to(default, (batch, k)).copy() if k else None

        def run_ort(x, noise=noise):
            return session.run(None, {"obs": x} if noise is None else {"obs": x, "noise": noise})[0]

        tensors = [torch.from_numpy(b) for b in batches]

        def run_torch(x):
            with torch.no_grad():
                return policy.act(x, deterministic=True)

        n = calls if batch == 1 else max(calls // 20, 50)
        row[f"onnx_b{batch}"] = percentiles(time_calls(run_ort, batches, n))
        row[f"torch_b{batch}"] = percentiles(time_calls(run_torch, tensors, n))
    if compiled:  # batch 1: eager and compiled alternate in rounds, so both see the same machine
        tensors = [torch.from_numpy(obs[i:i + 1]) for i in range(64)]
        run_compiled = policy.compiled_act(tensors[0])
        eager, fast = [], []
        for _ in range(5):
            eager += time_calls(run_torch, tensors, max(calls // 5, 50))
            fast += time_calls(run_compiled, tensors, max(calls // 5, 50))
        row["torch_eager_b1_alternated"], row["torch_compiled_b1"] = percentiles(eager), percentiles(fast)
    return row


def arithmetic_floor(calls: int = 3000, rounds: int = 10) -> dict[str, float]:
    """p50 µs of the bare operations at batch 1, no policy code around them: the flow head's 4 Euler steps
    through its default 256x3 Mish network (17 matmuls, 12 activations) vs the SAC Gaussian's 256x2 ReLU
    network (3 matmuls, 2 activations). Timed interleaved, so the ratio holds on a loaded machine."""
    f = torch.nn.functional
    obs_dim, act_dim, width = 11, 3, 256
    g = torch.Generator().manual_seed(0)

    def w(*shape):
        return torch.randn(*shape, generator=g) * 0.05

    w_x, w_c, w_h, w_o, b, b_o = w(act_dim, width), w(obs_dim, width), w(width, width), w(width, act_dim), w(width), w(act_dim)
    w_1, w_mu = w(obs_dim, width), w(width, 2 * act_dim)
    obs = torch.randn(1, obs_dim, generator=g)

    def flow():
        bias = torch.addmm(b, obs, w_c)
        y = torch.zeros(1, act_dim)
        for _ in range(4):
            h = f.mish(torch.addmm(bias, y, w_x))
            h = f.mish(torch.addmm(b, h, w_h))
            h = f.mish(torch.addmm(b, h, w_h))
            y = torch.addmm(y, h, w_o, alpha=0.25)
        return y + b_o

    def gaussian():
        h = torch.relu(torch.addmm(b, obs, w_1))
        h = torch.relu(torch.addmm(b, h, w_h))
        return torch.addmm(b_o.repeat(2), h, w_mu)

    samples: dict[str, list[int]] = {"flow-4": [], "sac-gaussian": []}
    with torch.no_grad():
        for _ in range(rounds):
            for name, fn in (("flow-4", flow), ("sac-gaussian", gaussian)):
                samples[name] += time_calls(lambda _x, fn=fn: fn(), [None], calls // rounds, warmup=50)
    return {name: percentiles(v)["p50"] * 1e3 for name, v in samples.items()}


def mish_batch_timing(rows: int = 512, width: int = 256, calls: int = 500, rounds: int = 5) -> dict[str, float]:
    """p50 µs of one Mish over a [rows, width] batch (a flow chain's activation at EXPO's TD-target batch):
    torch's kernel vs policies.networks.Mish (the one-sigmoid path it takes from 8,192 elements), interleaved."""
    from policies.networks import Mish

    x = torch.randn(rows, width, generator=torch.Generator().manual_seed(0)) * 3
    fast = Mish()
    samples: dict[str, list[int]] = {"torch_mish": [], "robo_rl_mish": []}
    with torch.no_grad():
        for _ in range(rounds):
            for name, fn in (("torch_mish", torch.nn.functional.mish), ("robo_rl_mish", fast)):
                samples[name] += time_calls(fn, [x], calls // rounds, warmup=20)
    return {name: percentiles(v)["p50"] * 1e3 for name, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=whole_number(), default=3000)
    parser.add_argument("--heads", nargs="*", default=list(HEADS), choices=[*HEADS, *VARIANTS])
    parser.add_argument("--name", default="export_latency", help="results file name (benchmarks/results/<name>.*)")
    parser.add_argument("--no-compiled", action="store_true", help="skip the compiled torch act (compile time)")
    parser.add_argument("--floor-only", action="store_true",
                        help="time only the bare operations of flow-4 vs the Gaussian, and one Mish on a [512, 256] batch "
                             "(-> export_latency_floor.*)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    floor = {**arithmetic_floor(), **{f"{k}_512x256": v for k, v in mish_batch_timing().items()}}
    floor_line = (f"bare operations at batch 1 (p50): flow-4 {floor['flow-4']:.0f} µs, SAC Gaussian "
                  f"{floor['sac-gaussian']:.0f} µs, {floor['flow-4'] / floor['sac-gaussian']:.1f}x; one Mish on "
                  f"[512, 256]: torch {floor['torch_mish_512x256']:.0f} µs, robo-rl {floor['robo_rl_mish_512x256']:.0f} µs")
    print(floor_line, flush=True)
    if args.floor_only:
        save("export_latency_floor", {"floor_us_p50": floor}, floor_line)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.heads:
            row = measure(name, {**HEADS, **VARIANTS}[name], args.calls, Path(tmp), compiled=not args.no_compiled)
            rows.append(row)
            print(f"{name}: onnx b1 p50 {row['onnx_b1']['p50']:.3f} ms p99 {row['onnx_b1']['p99']:.3f} ms; "
                  f"torch b1 p50 {row['torch_b1']['p50']:.3f} ms"
                  + (f", compiled {row['torch_compiled_b1']['p50']:.3f} ms" if "torch_compiled_b1" in row else ""),
                  flush=True)
    gauss = next((r for r in rows if r["head"] == "sac-gaussian"), None)
    table_rows = []
    for r in rows:
        target = TARGETS_MS.get(r["head"])
        met = "" if target is None else (" (target ≤ %.1f: %s)" % (target, "met" if r["onnx_b1"]["p99"] <= target else "MISSED"))
        vs = f"{r['torch_b1']['p50'] / gauss['torch_b1']['p50']:.1f}x" if gauss else "-"
        compiled = r.get("torch_compiled_b1")
        compiled_vs = (f"{compiled['p50'] / gauss['torch_compiled_b1']['p50']:.1f}x"
                       if compiled and gauss and "torch_compiled_b1" in gauss else "-")
        table_rows.append([
            r["head"], f"{r['params']:,}", f"{r['onnx_b1']['p50']:.3f}", f"{r['onnx_b1']['p99']:.3f}{met}",
            f"{r['torch_b1']['p50']:.3f}", f"{r['torch_b1']['p99']:.3f}", vs,
            f"{compiled['p50']:.3f}" if compiled else "-", compiled_vs,
            f"{r['onnx_b256']['p50']:.2f}", f"{r['torch_b256']['p50']:.2f}", f"{r['parity_max_abs_error']:.1e}",
        ])
    table = markdown_table(
        ["head (Hopper, defaults)", "params", "ORT b1 p50 ms", "ORT b1 p99 ms", "torch b1 p50 ms", "torch b1 p99 ms",
         "torch b1 vs SAC Gaussian", "torch compiled b1 p50 ms", "compiled vs SAC Gaussian compiled", "ORT b256 p50 ms", "torch b256 p50 ms", "max abs ORT-torch"],
        table_rows)
    save(args.name, {"calls": args.calls, "rows": rows, "targets_ms": TARGETS_MS, "floor_us_p50": floor},
         table + "\n\n" + floor_line)


if __name__ == "__main__":
    main()
