"""Returns of generative learners against their Gaussian baselines at equal env steps, 3 seeds.

  GoRL vs PPO on Hopper-v5: both at robo-rl's defaults (`robo-rl train algo=gorl` / `algo=ppo`, the
      batched MuJoCo backend, 64 envs x 32 steps per update); GoRL's latent PPO uses the same
      hyperparameters as PPO, its flow decoder is refit between 3 equal stages (2 refits). Default budget:
      1M steps.
  EXPO / PA-RL vs SAC (``--pairs offpolicy``), GoRL-SAC vs SAC (``--pairs gorl_sac``): each at its
      defaults on Hopper-v5, SAC's budget (30k steps).

Every run is scored by the same final evaluation: 10 episodes with the method's own acting rule
(PPO, SAC: the mean; GoRL, GoRL-SAC: the latent mean, decoded; EXPO, PA-RL: the best candidate by Q).

    python benchmarks/generative_returns.py                       # GoRL vs PPO, 3 seeds (~45 min on one core)
    python benchmarks/generative_returns.py --pairs offpolicy --steps 30000 --seeds 0
    python benchmarks/generative_returns.py --pairs gorl_sac      # -> results/generative_returns_gorl_sac.*
    python benchmarks/generative_returns.py --pairs offpolicy --methods expo \
        --reuse benchmarks/results/returns.json        # SAC's seeded runs reused, EXPO trained
    python benchmarks/generative_returns.py --pairs offpolicy --methods expo \
        --overrides algo.target_samples=1              # EXPO at other settings (the baseline at its defaults)
        --overrides policy.steps=4                     # or its head (EXPO's flow: 3 steps by default)
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import EVAL_SEEDING, markdown_table, save, whole_number  # noqa: E402
from robo_rl.perf import tune_malloc  # noqa: E402

ENV = "Hopper-v5"
EVAL_EPISODES = 10
PAIRS = {
    "onpolicy": {"budget": 1_000_000, "baseline": "ppo", "methods": ["gorl"]},
    "offpolicy": {"budget": 30_000, "baseline": "sac", "methods": ["expo", "parl"]},
    "gorl_sac": {"budget": 30_000, "baseline": "sac", "methods": ["gorl_sac"]},
}


def overrides(algo: str, seed: int, steps: int, extra: Sequence[str] = ()) -> list[str]:
    return [f"algo={algo}", f"env.id={ENV}", f"steps={steps}", f"seed={seed}", f"eval.episodes={EVAL_EPISODES}",
            f"eval.every={steps}", "log.progress_seconds=120", "log.tensorboard=false", *extra]


def settings(cfg: Any) -> dict:
    """A run's learner and head settings: its config's ``algo`` and ``policy`` sections with the learner's and the
    task's defaults filled in (``resolve_defaults``: EXPO's flow head has 3 steps where the config leaves them null,
    other learners' 4). What ``--reuse`` compares, so that a run at other settings (``--overrides``, of either), or
    recorded before a default changed, is not taken for one at these."""
    from omegaconf import OmegaConf

    from robo_rl.defaults import resolve_defaults

    resolved = resolve_defaults(cfg)
    return {key: OmegaConf.to_container(resolved[key], resolve=True) for key in ("algo", "policy")}


def recorded_settings(r: dict, algo: str, seed: int, steps: int) -> dict:
    """``settings`` of a recorded run: its recorded sections (the keys added to the schemas since it was written filled
    in as it trained, ``robo_rl.config.with_schema_defaults``) in its learner's config. A run recorded without its
    ``policy`` (before 2026-12-07) trained its learner's default head with the flow head's 4 steps, every learner's
    until EXPO's default became 3 that day, when runs began to record their head; without its ``algo`` (before
    2026-12-07 too), at its learner's defaults."""
    from omegaconf import OmegaConf

    from robo_rl.config import with_schema_defaults
    from robo_rl.train import compose_config

    base = compose_config(overrides(algo, seed, steps))
    policy = r.get("policy")
    if policy is None:
        policy = OmegaConf.to_container(base.policy, resolve=True)
        if "steps" in policy:
            policy["steps"] = 4
    filled = with_schema_defaults({"algo": dict(r.get("algo", {"name": algo})), "policy": dict(policy)})
    full = OmegaConf.to_container(base, resolve=True)
    full.update(algo=filled["algo"], policy=filled["policy"])
    return settings(OmegaConf.create(full))


def run(algo: str, seed: int, steps: int, run_root: Path | None = None, extra: Sequence[str] = ()) -> dict:
    from robo_rl.train import compose_config, train

    cfg = compose_config(overrides(algo, seed, steps, extra))
    t = time.perf_counter()
    run_dir = (Path(tempfile.mkdtemp()) if run_root is None else run_root) / f"{algo}-{seed}"
    summary = train(cfg, run_dir)
    return {"seed": seed, "return": summary["final_eval_return_mean"], "wall_s": time.perf_counter() - t,
            "run_dir": str(run_dir), "eval_seeding": EVAL_SEEDING, "overrides": list(extra), **settings(cfg)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=["onpolicy"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=whole_number(), default=None, help="env steps per run (default: the pair's budget)")
    parser.add_argument("--methods", nargs="+", help="run only these of the pairs' methods (e.g. --methods expo)")
    parser.add_argument("--reuse", nargs="+", type=Path, default=[], metavar="JSON",
                        help="take runs already recorded in these results files (this script's, or "
                             "benchmarks/results/returns.json for SAC) instead of training them again: same "
                             "env, steps and seed (robo-rl runs are deterministic given the seed on one thread)")
    parser.add_argument("--overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="Hydra overrides for the methods' runs, not the baseline's (e.g. "
                             "algo.target_samples=1, policy.steps=4); each run records its learner and head "
                             "settings, and --reuse takes only runs trained with the same ones")
    parser.add_argument("--name", default=None,
                        help="results file name under benchmarks/results/ (default: from --pairs and --methods)")
    parser.add_argument("--run-root", type=Path, default=None,
                        help="keep the run directories here, e.g. to re-evaluate them (default: a temp dir)")
    args = parser.parse_args()

    def cached(algo: str, steps: int, seed: int, extra: list[str]) -> dict | None:
        """A run trained earlier in this invocation (pairs share SAC as their baseline; training it again
        would also collide in --run-root), else a recorded run from --reuse, read when needed (a file may
        still be growing); either with the learner settings this run would train with (a recorded run
        without them: ``recorded_settings``)."""
        from robo_rl.train import compose_config

        want = settings(compose_config(overrides(algo, seed, steps, extra)))

        def same(r: dict) -> bool:
            return r["seed"] == seed and recorded_settings(r, algo, seed, steps) == want

        for pair in results.values():
            for r in pair["runs"].get(algo, []) if pair["steps"] == steps else []:
                if same(r):
                    return r
        for path in args.reuse:
            data = json.loads(path.read_text())["results"]
            if "budget" in data.get(algo, {}):  # returns.py: {algo: {budget, robo_rl: [runs]}}
                # only its SAC runs are this script's: its PPO runs use SB3's 16 envs x 128 steps, not the defaults
                found = data[algo]["robo_rl"] if algo == "sac" and data[algo]["budget"] == steps else []
            else:  # this script: {pair: {steps, runs: {algo: [runs]}}}
                found = [r for pair in data.values() if pair.get("steps") == steps for r in pair["runs"].get(algo, [])]
            for r in found:
                if not same(r):
                    if r["seed"] == seed:
                        print(f"{algo} seed {seed} in {path} trained with other settings: not reused", flush=True)
                    continue
                if r.get("eval_seeding") != EVAL_SEEDING:
                    print(f"{algo} seed {seed} in {path} was evaluated on other episodes (before evaluations were seeded "
                          "by their step, 2026-12-05): training it again", flush=True)
                else:
                    return {**r, "reused_from": str(path)}
        return None

    tune_malloc()
    import torch

    torch.set_num_threads(1)  # the recorded runs are one-thread runs (deterministic given the seed)
    logging.getLogger("robo_rl").setLevel(logging.WARNING)

    name = "generative_returns" if args.pairs == ["onpolicy"] else "generative_returns_" + "_".join(args.pairs)
    if args.methods:
        name += "_" + "_".join(args.methods)
    name = args.name or name
    results: dict[str, dict] = {}
    for pair in args.pairs:
        spec = PAIRS[pair]
        steps = args.steps or spec["budget"]
        per_algo: dict[str, list[dict]] = {}
        results[pair] = {"steps": steps, "baseline": spec["baseline"], "runs": per_algo, "overrides": args.overrides}
        methods = [m for m in spec["methods"] if not args.methods or m in args.methods]
        for seed in args.seeds:  # seed-major, so a stopped run still has comparable pairs
            for algo in [spec["baseline"], *methods]:
                extra = [] if algo == spec["baseline"] else args.overrides
                r = cached(algo, steps, seed, extra)
                if r is None:
                    r = run(algo, seed, steps, args.run_root, extra)
                per_algo.setdefault(algo, []).append(r)
                print(f"{algo} seed {seed}: {r['return']:.1f} ({r['wall_s']:.0f} s)", flush=True)
                write(name, results)  # after every run, so a stopped benchmark keeps what it measured


def write(name: str, results: dict[str, dict]) -> None:
    rows = []
    for pair in results.values():
        base = pair["runs"][pair["baseline"]]
        for algo, runs in pair["runs"].items():
            values = [r["return"] for r in runs]
            mean, sd = statistics.mean(values), statistics.pstdev(values)
            ratio = mean / statistics.mean(r["return"] for r in base[:len(runs)])
            rows.append([algo.upper(), ENV, f"{pair['steps']:,}", len(runs), ", ".join(f"{v:.0f}" for v in values),
                         f"{mean:.0f} ± {sd:.0f}", f"{ratio:.2f}x", f"{statistics.mean(r['wall_s'] for r in runs) / 60:.1f} min"])
    table = markdown_table(["algo", "env", "env steps", "seeds", "returns per seed", "mean ± std",
                            "mean vs baseline", "wall time / run"], rows)
    save(name, {"env": ENV, "results": results}, table)


if __name__ == "__main__":
    main()
