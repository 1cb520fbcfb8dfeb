"""train(cfg, run_dir, cli_overrides): the overrides are a list of key=value strings, as README's "Python API" says."""

import pytest

from robo_rl.train import train
from tests.helpers import FAST, compose

SMALL = ("algo=ppo", "env=pendulum", "env.num_envs=4", "steps=128", "eval.episodes=1", "eval.num_envs=1", *FAST)


def test_train_refuses_a_bare_string_of_overrides(tmp_path):
    run_dir = tmp_path / "run"
    train(compose(*SMALL, f"run_dir={run_dir}"))
    # a string was read character by character: the resume then refused an empty key as "changed"
    for bad in ("steps=256", b"steps=256", ["steps=256", 5], 5):
        with pytest.raises(TypeError, match=r"train\(cfg, run_dir, cli_overrides\) takes a list of key=value strings"):
            train(compose(f"resume={run_dir}", "steps=256"), cli_overrides=bad)


def test_train_takes_any_iterable_of_overrides(tmp_path):
    run_dir = tmp_path / "run"
    train(compose(*SMALL, f"run_dir={run_dir}"))
    summary = train(compose(f"resume={run_dir}", "steps=256"),
                    cli_overrides=(o for o in [f"resume={run_dir}", "steps=256"]))  # a generator, read once
    assert summary["steps"] == 256
