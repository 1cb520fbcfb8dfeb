"""Multimodal task (robo_rl/TwoGoals-v0): success of unimodal vs generative policies, 3 seeds.

Each method trains on TwoGoals for the same number of env steps, then acts from the start state for
100 episodes (its own acting rule: the mean for Gaussian SAC/PPO, the latent mean then the decoder
for GoRL, the best candidate by Q for EXPO and PA-RL). Reported: success rate (both deterministic
and sampling evaluation), which goal was reached, and a scatter of 300 sampled first actions per
method at the decision state (results/multimodal_actions.png).

    python benchmarks/multimodal.py                         # all methods, 3 seeds
    python benchmarks/multimodal.py --methods sac parl-flow --seeds 0
    python benchmarks/multimodal.py --off-policy-steps 10000 --on-policy-steps 100000 \
        --override parl-flow:algo.num_candidates=4      # budgets / extra overrides from the command line

With ``--demos EPISODES`` every method first warm-starts from the scripted expert's demonstrations
(``envs.tasks.two_goals.expert_demos``: half of the episodes to each goal, so the data set is bimodal
at the start state; ``demos.path=``, off-policy learners act from the first step), the policy is
evaluated right after the warm start (the head alone: EXPO's and PA-RL's critics are untrained then),
and again after the RL budget; results go to multimodal_demos.*:

    python benchmarks/multimodal.py --demos 200 --pretrain-steps 3000 --off-policy-steps 5000 \
        --on-policy-steps 50000 --methods sac sac-alpha0.1 ppo ppo-mixture gorl-flow expo-flow parl-flow

Results are saved (JSON + markdown + PNG) after every run, so an interrupted study keeps what it has.
Evaluation runs 100 env copies from the start state and counts the first episode of each (counting
the first 100 episodes to finish over fewer copies would over-sample short, i.e. crashing, episodes).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, save, whole_number  # noqa: E402

OFF = ["algo.learning_starts=2000", "algo.critic_hidden=[128,128]"]
# PA-RL's defaults before they became 4 candidates / a policy update every 3 critic updates / one TD-target
# sample: the recorded multimodal results were trained with these
PARL_RECORDED = ["algo.num_candidates=8", "algo.policy_update_every=2", "algo.target_candidates=null"]
METHODS = {
    "sac": ["algo=sac", "policy.hidden_sizes=[128,128]", *OFF],
    # SAC's default init_alpha=1.0 makes the entropy bonus dwarf this task's rewards (~0.01/step, +1 at a goal):
    # every terminal state, the goals included, looks like lost bonus, and it learns to wander for 40 steps.
    # 0.1 is EXPO's default for its edit policy.
    "sac-alpha0.1": ["algo=sac", "policy.hidden_sizes=[128,128]", "algo.init_alpha=0.1", *OFF],
    "ppo": ["algo=ppo", "env.num_envs=16", "algo.rollout_steps=128"],
    "ppo-mixture": ["algo=ppo", "policy=mixture", "env.num_envs=16", "algo.rollout_steps=128"],
    "gorl-flow": ["algo=gorl", "env.num_envs=16", "algo.rollout_steps=128", "algo.refit_every=10",
                  "policy.decoder_hidden=[128,128]"],
    "expo-flow": ["algo=expo", "policy=flow", "policy.hidden_sizes=[128,128]", "policy.steps=4", *OFF],
    "expo-diffusion": ["algo=expo", "policy=diffusion", "policy.hidden_sizes=[128,128]", "policy.inference_steps=5",
                       "policy.train_steps=50", *OFF],
    "parl-flow": ["algo=parl", *PARL_RECORDED, "policy=flow", "policy.hidden_sizes=[128,128]", "policy.steps=4", *OFF],
    "parl-diffusion": ["algo=parl", *PARL_RECORDED, "policy=diffusion", "policy.hidden_sizes=[128,128]", "policy.inference_steps=5",
                       "policy.train_steps=50", *OFF],
    "parl-gaussian": ["algo=parl", *PARL_RECORDED, "policy=gaussian", "policy.hidden_sizes=[128,128]", *OFF],
}
BUDGET = {"sac": 20_000, "expo": 20_000, "parl": 20_000, "ppo": 200_000, "gorl": 200_000}
OFF_POLICY = ("sac", "expo", "parl")
COMMON = ["env=two_goals", "eval.episodes=20", "log.progress_seconds=120", "threads=1"]
EVAL_EPISODES = 100


def algo_of(method: str) -> str:
    return METHODS[method][0].split("=")[1]


def run(method: str, seed: int, steps: int, extra: list[str], run_root: Path | None = None) -> dict:
    from envs import make_env
    from robo_rl.runs import load_learner, load_run_config, resolve_checkpoint
    from robo_rl.train import compose_config, train

    overrides = [*COMMON, f"steps={steps}", f"seed={seed}", *METHODS[method], *extra]
    root = Path(tempfile.mkdtemp()) if run_root is None else run_root
    run_dir = root / f"{method}-{seed}"
    t = time.perf_counter()
    train(compose_config(overrides), run_dir)
    wall = time.perf_counter() - t
    cfg = load_run_config(run_dir)
    policy = load_learner(cfg, make_env("robo_rl/TwoGoals-v0", num_envs=1), resolve_checkpoint(run_dir)).policy
    out = {"method": method, "seed": seed, "steps": steps, "overrides": overrides, "wall_s": wall,
           "run_dir": str(run_dir)}
    out.update(evaluate(policy, seed))
    return out


def pretrained(method: str, seed: int, extra: list[str]) -> dict:
    """The policy right after the demonstrations warm start, before any RL step (what fine-tuning starts
    from). EXPO and PA-RL act by an untrained critic at this point, so their head is evaluated alone."""
    from robo_rl.build import build_env, build_learner, build_policy
    from robo_rl.defaults import resolve_defaults
    from robo_rl.validation import validate
    from robo_rl.demos import load_demos, warm_start
    from robo_rl.train import compose_config, seed_everything

    cfg = resolve_defaults(compose_config([*COMMON, "steps=1000", f"seed={seed}", *METHODS[method], *extra]))
    validate(cfg)
    torch.set_num_threads(int(cfg.threads))  # as train() does for the run itself
    seed_everything(seed)
    env = build_env(cfg)
    learner = build_learner(cfg, build_policy(cfg, env))
    demos = load_demos(cfg.demos.path, env.obs_dim, env.act_dim, env.action_space.low, env.action_space.high)
    t = time.perf_counter()
    stats = warm_start(cfg, learner, None, demos)
    env.close()
    out = {"pretrain_s": time.perf_counter() - t, "pretrain_loss": [stats["loss_first"], stats["loss_last"]]}
    head = learner.demo_head()
    out.update(evaluate(head, seed, prefix="pretrained_"))
    return out


def evaluate(policy, seed: int, prefix: str = "") -> dict:  # type: ignore[no-untyped-def]
    """Success rate and goal share from the start state (acting rule and sampling), 300 first actions."""
    from envs import make_env

    env = make_env("robo_rl/TwoGoals-v0", num_envs=EVAL_EPISODES)
    out = {}
    for mode in ("deterministic", "sampled"):
        # one episode per env copy, all from the start state; an episode ends by success, crash or time-out
        success = torch.zeros(EVAL_EPISODES, dtype=torch.bool)
        upper = torch.zeros(EVAL_EPISODES, dtype=torch.bool)
        done = torch.zeros(EVAL_EPISODES, dtype=torch.bool)
        obs = env.reset(seed=10_000 + seed)
        start = obs.clone()
        with torch.no_grad():
            while not bool(done.all()):
                actions = policy.act(obs, deterministic=mode == "deterministic")
                obs, reward, term, trunc, info = env.step(actions)
                new = (term | trunc).cpu() & ~done
                hit = new & term.cpu() & (reward.cpu() == 1.0)
                success |= hit
                upper |= hit & (info["final_obs"][:, 1].cpu() > 0)
                done |= new
        n_success = int(success.sum())
        out[f"{prefix}success_{mode}"] = n_success / EVAL_EPISODES
        out[f"{prefix}upper_goal_share_{mode}"] = float(upper.sum()) / n_success if n_success else None
    with torch.no_grad():
        out[f"{prefix}decision_actions"] = policy.act(start[:1].expand(300, -1), deterministic=False).tolist()
    env.close()
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Wedge

    from envs.tasks.two_goals import GOALS, OBSTACLE

    methods = list(dict.fromkeys(r["method"] for r in results))
    stages = [("pretrained_", "after the demonstrations warm start"), ("", "after RL")]
    stages = [st for st in stages if any(f"{st[0]}decision_actions" in r for r in results)]
    fig, axes = plt.subplots(len(stages), len(methods), figsize=(2.6 * len(methods), 2.8 * len(stages)), squeeze=False)
    for row, (prefix, label) in enumerate(stages):
        for ax, method in zip(axes[row], methods):
            pts = np.array([a for r in results if r["method"] == method and r["seed"] == 0
                            for a in r.get(f"{prefix}decision_actions", [])])
            # the headings whose straight path from the start runs into the obstacle (a wedge of +-asin(r / d))
            center, radius = OBSTACLE
            half = np.degrees(np.arcsin(radius / np.linalg.norm(center)))
            heading = np.degrees(np.arctan2(center[1], center[0]))
            ax.add_patch(Wedge((0, 0), 1.5, heading - half, heading + half, color="tab:red", alpha=0.2))
            for g in GOALS:
                ax.plot(*(g / np.linalg.norm(g)), "*", color="tab:green", ms=10)
            if len(pts):
                ax.scatter(pts[:, 0], pts[:, 1], s=4, alpha=0.5)
            ax.set_xlim(-1.05, 1.05)
            ax.set_ylim(-1.05, 1.05)
            ax.set_aspect("equal")
            ax.set_title(method if len(stages) == 1 else f"{method}\n{label}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("first action at the decision state (seed 0, 300 samples); stars: goal directions; "
                 "red: headings straight into the obstacle")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: list[dict], methods: list[str], name: str = "multimodal") -> None:
    """Table, PNG and JSON from the runs done so far (called after every run)."""
    warm = any("pretrained_success_sampled" in r for r in results)
    rows = []
    for method in methods:
        rs = [r for r in results if r["method"] == method]
        if not rs:
            continue

        def fmt(key: str) -> str:
            vals = [r[key] for r in rs]
            return f"{statistics.mean(vals):.2f} ± {statistics.pstdev(vals):.2f}"

        # per seed, not averaged: seeds committing to opposite goals would average to a misleading 0.5
        shares = " / ".join("-" if r["upper_goal_share_sampled"] is None else f"{r['upper_goal_share_sampled']:.2f}"
                            for r in rs)
        steps = sorted({r["steps"] for r in rs})
        row = [method, " / ".join(f"{s:,}" for s in steps), len(rs)]
        if warm:
            row += [fmt("pretrained_success_deterministic"), fmt("pretrained_success_sampled")]
        rows.append(row + [fmt("success_deterministic"), fmt("success_sampled"), shares,
                           f"{statistics.mean(r['wall_s'] for r in rs):.0f} s"])
    import benchmarks.common as common

    common.RESULTS.mkdir(parents=True, exist_ok=True)
    plot(results, common.RESULTS / f"{name}_actions.png")
    head = ["method", "RL env steps", "seeds"]
    if warm:
        head += ["warm start only: success (head, deterministic)", "warm start only: success (head, sampling)"]
    head += ["success (acting rule)", "success (sampling)", "upper-goal share of successes (sampling, per seed)",
             "wall time / run"]
    table = markdown_table(head, rows)
    kept = [{k: v for k, v in r.items() if not k.endswith("decision_actions") or r["seed"] == 0} for r in results]
    save(name, {"results": kept}, table)


def reevaluate(name: str, methods: list[str]) -> None:
    """Re-score recorded runs of ``methods`` from their run directories; other methods' rows are kept."""
    import json

    import benchmarks.common as common
    from envs import make_env
    from robo_rl.runs import load_learner, load_run_config, resolve_checkpoint

    recorded = json.loads((common.RESULTS / f"{name}.json").read_text())["results"]
    for r in recorded:
        if r["method"] not in methods:
            continue
        cfg = load_run_config(Path(r["run_dir"]))
        policy = load_learner(cfg, make_env("robo_rl/TwoGoals-v0", num_envs=1), resolve_checkpoint(Path(r["run_dir"]))).policy
        fresh = evaluate(policy, r["seed"])
        if r["seed"] != 0:
            fresh.pop("decision_actions")
        print(f"{r['method']} seed {r['seed']}: success {r['success_deterministic']:.2f} -> "
              f"{fresh['success_deterministic']:.2f} (acting rule), {r['success_sampled']:.2f} -> "
              f"{fresh['success_sampled']:.2f} (sampled)", flush=True)
        r.update(fresh, reevaluated=True)
    write(recorded, list(dict.fromkeys(r["method"] for r in recorded)), name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiplies every default budget")
    parser.add_argument("--off-policy-steps", type=whole_number(), default=None, help="env steps for sac, expo-*, parl-*")
    parser.add_argument("--on-policy-steps", type=whole_number(), default=None, help="env steps for ppo, gorl-*")
    parser.add_argument("--override", action="append", default=[], metavar="METHOD:KEY=VALUE",
                        help="an extra training override for one method (repeatable)")
    parser.add_argument("--demos", type=whole_number(0), default=0, metavar="EPISODES",
                        help="warm-start every method from this many scripted-expert episodes (half to each goal; "
                             "per seed) and also evaluate it right after the warm start; results go to multimodal_demos.*")
    parser.add_argument("--pretrain-steps", type=whole_number(), default=2000, help="demos.pretrain_steps with --demos")
    parser.add_argument("--run-root", type=Path, default=None, help="keep run directories here (default: a temp dir)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="write multimodal.{json,md} and the PNG here instead of benchmarks/results/ (scratch runs)")
    parser.add_argument("--reevaluate", action="store_true",
                        help="no training: re-score the runs recorded in results/<name>.json for --methods from their "
                             "run directories with the current code (e.g. after a fix to an acting rule)")
    args = parser.parse_args()
    extra: dict[str, list[str]] = {m: [] for m in METHODS}
    for item in args.override:
        method, _, override = item.partition(":")
        if method not in METHODS or "=" not in override:
            parser.error(f"--override {item!r}: expected METHOD:KEY=VALUE with METHOD in {list(METHODS)}")
        extra[method].append(override)

    def budget(method: str) -> int:
        algo = algo_of(method)
        fixed = args.off_policy_steps if algo in OFF_POLICY else args.on_policy_steps
        return fixed if fixed is not None else int(round(BUDGET[algo] * args.budget_scale))

    from robo_rl.perf import tune_malloc

    tune_malloc()
    logging.getLogger("robo_rl").setLevel(logging.WARNING)
    if args.out_dir is not None:
        import benchmarks.common as common

        common.RESULTS = args.out_dir  # save() reads the module global
    name = "multimodal_demos" if args.demos else "multimodal"
    if args.reevaluate:
        reevaluate(name, args.methods)
        return
    root = args.run_root if args.run_root is not None else Path(tempfile.mkdtemp())
    root.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:  # seed-major: an interrupted study still has every method at the first seeds
        warm: list[str] = []
        if args.demos:
            from envs.tasks.two_goals import expert_demos
            from robo_rl.demos import save_demos

            path = save_demos(root / f"demos-{seed}.npz", **expert_demos(args.demos, seed=seed))
            warm = [f"demos.path={path}", f"demos.pretrain_steps={args.pretrain_steps}"]
        for method in args.methods:
            # with demonstrations, off-policy learners act with the warm-started policy from the first step
            method_extra = [*warm, *(["algo.learning_starts=0"] if warm and algo_of(method) in OFF_POLICY else []),
                            *extra[method]]
            before = pretrained(method, seed, method_extra) if warm else {}
            results.append({**run(method, seed, budget(method), method_extra, root), **before})
            r = results[-1]
            print(f"{method} seed {seed}: "
                  + (f"warm start only {r['pretrained_success_deterministic']:.2f} (deterministic) "
                     f"{r['pretrained_success_sampled']:.2f} (sampled); " if warm else "")
                  + f"success {r['success_deterministic']:.2f} (deterministic) "
                  f"{r['success_sampled']:.2f} (sampled), upper-goal share {r['upper_goal_share_sampled']}, "
                  f"{r['steps']:,} steps, {r['wall_s']:.0f} s", flush=True)
            write(results, args.methods, name)


if __name__ == "__main__":
    main()
