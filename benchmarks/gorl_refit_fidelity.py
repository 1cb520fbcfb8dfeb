"""How well does one GoRL decoder refit keep the policy it was fitted on? Offline, on a run's checkpoint.

For each refit setting, the run's learner is loaded from the checkpoint, refit once (refit_on=policy, with
the reset its config says) and compared with a frozen copy of the policy before the refit:
  * the coupled action error: the mean absolute difference, in the box's unit scale, between the actions
    before and after the refit for the same noise x (the latent mean + std x), at 4,096 of the refit's
    states, by the size of x (its rms per component: 0, 1, 2, 3);
  * the evaluation before and after: deterministic (10 episodes) and sampled (40 episodes), seeded alike.

    python benchmarks/gorl_refit_fidelity.py --run runs/gorl-hopper --checkpoint step_0000800768 \\
        --settings default:5:256:3e-4 samples4x:20:1024:1e-3 samples4x-cos:20:1024:1e-3:cos

Each setting is name:refit_epochs:refit_batch_size:decoder_lr[:cos] (cos: the decoder's learning rate decayed from
decoder_lr to 0 over the refit by a cosine, which robo-rl's refit does not do; tried here). The checkpoint needs a run of algo=gorl with
data in its refit window (any stage, also algo.stages=1). Results: benchmarks/results/<--name>.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import markdown_table, save  # noqa: E402

SIZES = (0.0, 1.0, 2.0, 3.0)


@torch.no_grad()
def coupled_errors(before, after, obs: torch.Tensor, seed: int) -> list[float]:
    """Mean |a_after - a_before| (unit scale) at ``obs`` for noise x of rms size 0, 1, 2, 3 per component."""
    generator = torch.Generator().manual_seed(seed)
    o = before.observations(obs)
    mean, log_std = before.latent.distribution(o)
    mean_after, log_std_after = after.latent.distribution(o)
    errors = []
    for size in SIZES:
        x = torch.randn(mean.shape, generator=generator)
        x = x / x.norm(dim=1, keepdim=True) * size * mean.shape[1] ** 0.5
        a0 = before.to_unit(before.decode(o, mean + log_std.exp() * x))
        a1 = after.to_unit(after.decode(o, mean_after + log_std_after.exp() * x))
        errors.append(float((a1 - a0).abs().mean()))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="an algo=gorl run directory")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint name under <run>/checkpoints (default: newest)")
    parser.add_argument("--settings", nargs="+", default=["default:5:256:3e-4"],
                        help="name:refit_epochs:refit_batch_size:decoder_lr[:cos], one refit each")
    parser.add_argument("--name", default="gorl_refit_fidelity", help="result file name under benchmarks/results")
    args = parser.parse_args()

    from robo_rl.build import build_env
    from robo_rl.evaluation import evaluate
    from robo_rl.runs import load_learner, load_run_config, resolve_checkpoint

    torch.set_num_threads(1)
    cfg = load_run_config(args.run)
    if cfg.algo.name != "gorl":
        raise SystemExit(f"{args.run} is an algo={cfg.algo.name} run: this measures GoRL's (algo=gorl) refit")
    checkpoint = resolve_checkpoint(args.run, None if args.checkpoint is None
                                    else Path(args.run) / "checkpoints" / args.checkpoint)
    settings = []
    for spec in args.settings:
        try:
            name, epochs, batch, lr, *schedule = spec.split(":")
            epochs, batch = int(epochs), int(batch)
            if schedule not in ([], ["cos"]) or min(epochs, batch) < 1:
                raise ValueError
            settings.append((name, epochs, batch, float(lr), bool(schedule)))
        except ValueError:
            raise SystemExit(f"--settings {spec!r}: give name:refit_epochs:refit_batch_size:decoder_lr[:cos], epochs "
                             "and batch size whole numbers >= 1") from None
    one_env = build_env(cfg, num_envs=1, vectorization="sync", randomize=False)
    eval_env = build_env(cfg, num_envs=10, vectorization="sync", randomize=False)

    def load():
        learner = load_learner(cfg, one_env, checkpoint).train()
        learner.policy.decoder.requires_grad_(True)
        learner.refit_on = "policy"
        return learner

    def returns(policy) -> tuple[float, float]:
        return (evaluate(policy, eval_env, 10, deterministic=True, seed=7)["return_mean"],
                evaluate(policy, eval_env, 40, deterministic=False, seed=7)["return_mean"])

    learner = load()
    size = int(learner.data_size)
    if size == 0:
        raise SystemExit(f"{checkpoint} holds no states in its refit window (algo.dataset_size)")
    probe = learner.data_obs[torch.randperm(size, generator=torch.Generator().manual_seed(0))[:4096]]
    before = returns(learner.policy)
    print(f"{checkpoint}: {size:,} states; before the refit: deterministic {before[0]:.0f}, sampled {before[1]:.0f}")
    rows, results = [], {}
    for name, epochs, batch, lr, cosine in settings:
        learner = load()
        teacher = copy.deepcopy(learner.policy).requires_grad_(False)
        learner.refit_epochs, learner.refit_batch_size = epochs, batch
        group = learner.decoder_opt.param_groups[0]
        group["lr"] = lr
        if cosine:  # each decoder step's rate, set before the step
            steps, step, apply = epochs * -(-size // batch), [0], learner.decoder_opt.apply

            def decayed(grads, steps=steps, step=step, apply=apply, lr=lr, group=group):
                group["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * step[0] / steps))
                step[0] += 1
                apply(grads)

            learner.decoder_opt.apply = decayed
        torch.manual_seed(1)
        start = time.perf_counter()
        learner.refit()
        seconds = time.perf_counter() - start
        learner.eval()
        errors = coupled_errors(teacher, learner.policy, probe, seed=2)
        after = returns(learner.policy)
        results[name] = {"refit_epochs": epochs, "refit_batch_size": batch, "decoder_lr": lr, "cosine": cosine,
                         "seconds": seconds,
                         "coupled_error_by_size": dict(zip(map(str, SIZES), errors)),
                         "deterministic_return": [before[0], after[0]], "sampled_return": [before[1], after[1]]}
        rows.append([name, f"{epochs} x {batch}, lr {lr:g}{' cosine' if cosine else ''}", f"{seconds:.0f}", *(f"{e:.4f}" for e in errors),
                     f"{before[0]:.0f} -> {after[0]:.0f}", f"{before[1]:.0f} -> {after[1]:.0f}"])
        print(f"  {name}: done in {seconds:.0f} s", flush=True)
    table = markdown_table(["setting", "epochs x batch, lr", "refit s", *(f"error at x={s:g}" for s in SIZES),
                            "deterministic return", "sampled return"], rows)
    save(args.name, {"run": str(args.run), "checkpoint": str(checkpoint), "states": size, "results": results},
         f"{args.run}, {checkpoint.name}:\n\n{table}")


if __name__ == "__main__":
    main()
