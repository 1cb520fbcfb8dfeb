"""`robo-rl export`: a run directory's policy -> a self-contained ONNX/TorchScript file + JSON sidecar.

This is the learning side of the export (read the run, rebuild the learner, pick real observations);
the graph building, checking and sidecar live in ``sim2real.export``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import yaml

SAFETY_DIR = Path(__file__).resolve().parent / "configs" / "safety"
log = logging.getLogger("robo_rl")


def load_safety_spec(safety: str | None, run_cfg: Any = None) -> dict[str, Any]:
    """A filter chain for the sidecar: a config name (configs/safety/<name>.yaml), a YAML path, or the run's own.

    ``None`` takes the run's ``safety.filters`` if the run had any, else no filters.
    """
    if safety in (None, "", "run"):
        filters = []
        if run_cfg is not None and "safety" in run_cfg and run_cfg.safety is not None:
            from omegaconf import OmegaConf

            filters = OmegaConf.to_container(run_cfg.safety, resolve=True).get("filters", []) or []
        return {"filters": list(filters)}
    path = Path(safety)
    if not path.suffix:
        path = SAFETY_DIR / f"{safety}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in SAFETY_DIR.glob("*.yaml")) if SAFETY_DIR.is_dir() else []
        raise FileNotFoundError(f"safety={safety!r}: no such filter config (choose one of {', '.join(names) or 'none'}, "
                                "or give a path to a YAML file with a 'filters:' list)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        from sim2real.filters.spec import yaml_error

        raise ValueError(yaml_error(f"safety={safety}", exc)) from None
    # a file without its 'filters:' list (empty, or `filter:` mistyped) must not export a policy with no filters
    if not isinstance(data, dict) or not isinstance(data.get("filters"), list):
        found = f"keys {', '.join(map(str, data))}" if isinstance(data, dict) and data else (
            "an empty file" if not data else f"a {type(data).__name__}")
        raise ValueError(f"safety={safety}: {path} must be a mapping with a 'filters:' list (found {found}); for no "
                         "filters write 'filters: []'")
    from robo_rl.config import SafetyConfig

    known = {f.name for f in dataclasses.fields(SafetyConfig)}  # a configs/safety file may set the training keys too
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ValueError(f"safety={safety}: {path} has unknown key(s) {', '.join(unknown)}; it takes {', '.join(sorted(known))}")
    return {"filters": list(data["filters"])}


def export_run(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    fmt: str = "onnx",
    checkpoint: str | Path | None = None,
    safety: str | None = None,
    check_episodes_steps: int = 256,
) -> dict[str, Any]:
    """Export a run's acting policy; returns the sidecar (written as <out_dir>/policy.json).

    Parity is checked on real observations (``check_episodes_steps`` states visited by the policy
    itself on the run's task) as well as random ones around the normalizer's statistics.
    """
    import torch
    from omegaconf import OmegaConf, open_dict

    from robo_rl.build import build_env
    from robo_rl.checkpoint import verify_checkpoint
    from robo_rl.runs import foreign_checkpoint, load_run_config, load_run_learner, resolve_checkpoint
    from sim2real.export import FORMATS, export_policy

    if fmt not in FORMATS:  # before the run is read and its env built
        raise ValueError(f"format={fmt!r}: choose one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    with open_dict(cfg):  # the export runs on the CPU (export_policy): a run trained on cuda is read and checked there
        cfg.device = "cpu"
    ckpt = resolve_checkpoint(run_dir, checkpoint)
    if foreign_checkpoint(run_dir, ckpt):  # the export is built from run_dir's config: task, head, filters
        raise ValueError(f"checkpoint={checkpoint} is not one of {run_dir}'s checkpoints ({run_dir / 'checkpoints'}/"
                         f"step_...), and its weights would be exported with {run_dir}'s config (task, head, filters) "
                         "as this run's; export it with run_dir=<the run it belongs to>")
    if checkpoint is not None:  # a broken one named before the env is built (the newest was checked in choosing)
        verify_checkpoint(ckpt, replay=False)
    safety_spec = load_safety_spec(safety, cfg)
    env = build_env(cfg, num_envs=1, vectorization="sync", randomize=False)
    try:
        # (names a checkpoint whose networks do not fit: the newest one is then skipped for an older one that fits)
        learner, ckpt, manifest = load_run_learner(cfg, env, run_dir, checkpoint, "cpu", ckpt)
        policy = learner.policy
        if safety_spec["filters"]:
            from sim2real.filters import build_chain
            from sim2real.filters.chain import narrowing_boxes

            build_chain(safety_spec["filters"], int(env.act_dim), int(env.obs_dim), env.dt or None)  # refuse a bad chain now
            for line in narrowing_boxes(safety_spec, env.action_space.low, env.action_space.high, env.task_id):
                log.warning(line)
        visited = []
        obs = env.reset(seed=0)
        with torch.no_grad():
            for step in range(check_episodes_steps):
                visited.append(obs.cpu().numpy().reshape(1, -1))
                try:
                    actions = policy.act(obs.to(torch.float32), deterministic=True)
                except FloatingPointError as exc:  # (the CLI prints it in one line, as eval's)
                    raise FloatingPointError(f"{exc}, at step {step} of the rollout that collects export's check "
                                             f"observations, with checkpoint {ckpt}") from None
                obs, *_ = env.step(actions)
        space = env.observation_space
        sidecar = export_policy(
            policy, Path(out_dir) if out_dir is not None else run_dir / "export", fmt,
            observation_low=np.asarray(space.low).reshape(-1), observation_high=np.asarray(space.high).reshape(-1),
            control_dt=env.dt, task=env.task_id, safety=safety_spec, check_obs=np.concatenate(visited),
            metadata={"algo": cfg.algo.name, "policy": cfg.policy.name,
                      # the task's keyword arguments (e.g. an observation without contact forces): deploy builds the same task
                      "task_kwargs": OmegaConf.to_container(cfg.env.kwargs, resolve=True),
                      # the run's own time limit, when it set one (deploy's episodes then end where training's did)
                      "max_episode_steps": cfg.env.max_episode_steps,
                      # where the task reports its per-step cost (deploy sums it per episode, as robo-rl eval does)
                      "cost_key": str(cfg.safety.cost_key),
                      "source": {"run_dir": str(run_dir.resolve()), "checkpoint": str(Path(ckpt).resolve()), "step": int(manifest["step"])}},
        )
    finally:
        env.close()
    return sidecar
