"""A module that registers a gymnasium task when imported and is imported by nothing else: it stands for a
user's own package of environments, reached with gymnasium's ``module:Id`` convention."""

import gymnasium as gym

from tests.helpers import NaNAfter

gym.register("robo_rl_test/RegisteredOnImport-v0", entry_point=NaNAfter, max_episode_steps=20,
             kwargs={"after": 10**9})
