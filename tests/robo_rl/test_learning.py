"""Short, seeded learning tests: each agent must really cross a threshold, with margin.

Random policies score about -1200 on Pendulum-v1 and about 5-10 on InvertedPendulum-v5.
"""

import pytest

from robo_rl.train import train
from tests.helpers import FAST, compose

pytestmark = pytest.mark.slow  # `python -m pytest -q -m "not slow"` leaves these out of a quick run

QUIET = (*FAST, "eval.episodes=20", "eval.num_envs=5")


def test_sac_swings_up_pendulum(tmp_path):
    # measured: final eval about -185 (seeds 0-2: -254, -184, -183) in ~30 s
    summary = train(compose(
        "algo=sac", "env=pendulum", "steps=5000", "algo.learning_starts=500", "policy.hidden_sizes=[128,128]",
        "algo.critic_hidden=[128,128]", "eval.every=5000", "seed=1", *QUIET), tmp_path / "sac")
    assert summary["final_eval_return_mean"] > -400


def test_td3_learns_pendulum(tmp_path):
    # measured: final eval about -330 (seeds 0-2: -348, -314, -336; 2026-12-05, seeds 0-4: -324, -326, -374, -553,
    # -478); some episodes still fail to swing up
    summary = train(compose(
        "algo=td3", "env=pendulum", "steps=6000", "algo.learning_starts=500", "policy.hidden_sizes=[128,128]",
        "algo.critic_hidden=[128,128]", "eval.every=6000", "seed=1", *QUIET), tmp_path / "td3")
    assert summary["final_eval_return_mean"] > -600


def test_gorl_sac_learns_pendulum_through_its_decoder_refits(tmp_path):
    # SAC on a squashed latent through a flow decoder refit (on the current policy) at steps 2,500 and
    # 4,500, the latent reset to the prior each time. measured: final eval -342, -299, -365 (seeds 0-2, one thread) in ~110 s
    # on one busy core; a random policy scores about -1200. Not every seed gets there: 2026-12-05, seeds 0-5 gave -360,
    # -326, -239, -843, -477, -299 (seed 3 below the threshold; the evaluation right after the refit at 4,500 drops,
    # e.g. seed 4 from -596 to -1111, and 1,500 steps do not always win it back). The test's seed is deterministic
    summary = train(compose(
        "algo=gorl_sac", "env=pendulum", "steps=6000", "algo.learning_starts=500", "policy.hidden_sizes=[128,128]",
        "algo.critic_hidden=[128,128]", "policy.decoder_hidden=[64,64]", "policy.decoder_steps=2",
        "algo.refit_every=2000", "algo.dataset_size=2000", "eval.every=6000", "seed=1", *QUIET), tmp_path / "gorl_sac")
    assert summary["final_eval_return_mean"] > -600
    assert summary["updates"] == 5501  # one per step from learning_starts (step 500) on


def test_ppo_balances_inverted_pendulum(tmp_path):
    # measured: 1000 (the maximum) for seeds 0-2 after 60k steps, in ~3 s each (at 30k: 289, 735, 1000; the
    # initial std is the box's half-width, +-3 here, since PPO's Gaussian is over the box's unit scale)
    summary = train(compose("algo=ppo", "env=inverted_pendulum", "steps=60000", "eval.every=60000", "seed=0", *QUIET),
                    tmp_path / "ppo")
    assert summary["final_eval_return_mean"] >= 950
