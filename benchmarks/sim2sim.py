"""sim2sim: a trained Hopper policy, exported to ONNX and run by the deployment runtime on differently
configured simulations, against its torch evaluation.

1. Train PPO on Hopper-v5 with `robo-rl train` defaults (or reuse --run-dir).
2. `robo-rl eval`: 10 deterministic episodes in torch on the training simulator (the reference).
3. `robo-rl export` (ONNX, parity checked), then `robo-rl deploy`'s code path (onnxruntime, one
   thread, no torch in the loop, watchdog + action-box filter) on the MuJoCo sim2sim robot for 10
   episodes per setting: nominal (as trained), half the physics timestep, one control step of
   action latency, observation noise, randomized physics, and all of them together.

Reported: mean/std return per setting, the change relative to the torch evaluation, inference
latency percentiles and watchdog events.

    python benchmarks/sim2sim.py                       # trains first (~2-5 min on 2 cores)
    python benchmarks/sim2sim.py --run-dir runs/hopper # reuse a trained run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import markdown_table, save, whole_number  # noqa: E402

EPISODES = 10
SETTINGS = {
    "nominal (as trained)": {},
    "timestep / 2": {"timestep": 0.001},
    "action latency 1 step": {"action_latency": 1},
    "observation noise 0.01": {"observation_noise": 0.01},
    "physics: mass ±20%, friction ±30%, damping ±20%": {
        "physics": {"mass_scale": [0.8, 1.2], "friction_scale": [0.7, 1.3], "damping_scale": [0.8, 1.2]}},
    "all of the above": {"timestep": 0.001, "action_latency": 1, "observation_noise": 0.01,
                         "physics": {"mass_scale": [0.8, 1.2], "friction_scale": [0.7, 1.3], "damping_scale": [0.8, 1.2]}},
}


def cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "robo_rl.cli", *args], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"robo-rl {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/sim2sim-hopper-ppo")
    parser.add_argument("--steps", type=whole_number(), default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="sim2sim", help="results file name under benchmarks/results/")
    args = parser.parse_args()
    run_dir = Path(args.run_dir).resolve()  # relative to where the command runs, as robo-rl's run_dir=
    if not (run_dir / "config.yaml").is_file():
        print(f"training PPO on Hopper-v5 for {args.steps:,} steps into {run_dir} ...", flush=True)
        cli("train", "algo=ppo", "env=hopper", f"steps={args.steps}", f"seed={args.seed}", f"run_dir={run_dir}",
            "log.tensorboard=false")
    cli("eval", f"run_dir={run_dir}", f"episodes={EPISODES}")
    reference = json.loads((run_dir / "eval.json").read_text())
    cli("export", f"run_dir={run_dir}")
    export = run_dir / "export"
    sidecar = json.loads((export / "policy.json").read_text())

    from sim2real.deploy import deploy

    action_box = [{"type": "box", "low": sidecar["action"]["low"], "high": sidecar["action"]["high"]}]
    rows, results = [], {}
    for name, options in SETTINGS.items():
        report = deploy(str(export), episodes=EPISODES, sim2sim={**options, "seed": 1}, safety=action_box,
                        log=lambda _: None)
        results[name] = report
        change = (report["return_mean"] - reference["return_mean"]) / abs(reference["return_mean"])
        lat = report["loop"]["latency"]["inference_ms"]
        events = {k: v for k, v in report["loop"]["events"].items() if v}
        rows.append([name, f"{report['return_mean']:.0f} ± {report['return_std']:.0f}", f"{change:+.1%}",
                     f"{lat['p50']:.3f} / {lat['p99']:.3f}", json.dumps(events) if events else "none"])
        print(rows[-1], flush=True)
    header = [f"setting (onnxruntime, {EPISODES} episodes each)", "return", "vs torch eval",
              "inference p50 / p99 ms", "watchdog / filter events"]
    table = (f"Torch evaluation of the same checkpoint (training simulator, {EPISODES} episodes): "
             f"{reference['return_mean']:.0f} ± {reference['return_std']:.0f}; export parity max |onnx - torch| = "
             f"{sidecar['checked']['max_abs_error']:.1e}.\n\n" + markdown_table(header, rows))
    save(args.name, {"run_dir": str(run_dir), "torch_eval": reference, "sidecar": sidecar, "settings": SETTINGS,
                     "results": results}, table)


if __name__ == "__main__":
    main()
