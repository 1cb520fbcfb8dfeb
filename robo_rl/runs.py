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


def load_policy(cfg: DictConfig, env: BatchedEnv, checkpoint: Path, device: str = "cpu") -> PolicyHead:
    """Build the run's policy head and load its weights (and normalizer) from ``checkpoint``."""
    from robo_rl.build import build_policy

    state, _ = load_checkpoint(checkpoint, load_replay=False)
    modules = state["learner"]["modules"]
    weights = {k[len("policy."):]: v for k, v in modules.items() if k.startswith("policy.")}
    policy = build_policy(cfg, env)
    missing, unexpected = policy.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {checkpoint} does not match the run's policy: missing {missing}, unexpected {unexpected}")
    return policy.to(device).eval().requires_grad_(False)

