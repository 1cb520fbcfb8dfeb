"""Reading a run directory back: its config, and its policy from a checkpoint."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from envs import BatchedEnv
from policies.heads import PolicyHead
from robo_rl.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from robo_rl.config import ALGO_SCHEMAS, POLICY_SCHEMAS, TrainConfig

CONFIG_FILE = "config.yaml"


def load_run_config(run_dir: str | Path) -> DictConfig:
    """The resolved config a run was started with, checked against the current schemas."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a robo-rl run directory ({CONFIG_FILE} missing)")
    saved = OmegaConf.load(path)
    algo, head = saved.get("algo", {}).get("name"), saved.get("policy", {}).get("name")
    if algo not in ALGO_SCHEMAS or head not in POLICY_SCHEMAS:
        raise ValueError(f"{path}: unknown algo.name={algo!r} or policy.name={head!r}")
    schema = OmegaConf.structured(TrainConfig)
    schema.algo = OmegaConf.structured(ALGO_SCHEMAS[algo])
    schema.policy = OmegaConf.structured(POLICY_SCHEMAS[head])
    cfg = OmegaConf.merge(schema, saved)
    OmegaConf.set_struct(cfg, True)
    return cfg


def resolve_checkpoint(run_dir: str | Path, checkpoint: str | Path | None = None) -> Path:
    if checkpoint is not None:
        return Path(checkpoint)
    path = latest_checkpoint(Path(run_dir) / "checkpoints")
    if path is None:
        raise CheckpointError(f"{run_dir} holds no complete checkpoint")
    return path


def load_learner(cfg: DictConfig, env: BatchedEnv, checkpoint: Path, device: str = "cpu"):  # -> Learner
    """Build the run's learner and load every module (policy, critics, normalizers) from ``checkpoint``."""
    from robo_rl.build import build_learner, build_policy

    state, _ = load_checkpoint(checkpoint, load_replay=False)
    learner = build_learner(cfg, build_policy(cfg, env))
    try:
        learner.load_state_dict(state["learner"]["modules"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {checkpoint} does not match the run's learner: {exc}") from None
    return learner.to(device).eval().requires_grad_(False)


def load_policy(cfg: DictConfig, env: BatchedEnv, checkpoint: Path, device: str = "cpu") -> PolicyHead:
    """The policy a run acts with (EXPO/PA-RL-style learners choose with their critic), loaded from ``checkpoint``."""
    return load_learner(cfg, env, checkpoint, device).policy

