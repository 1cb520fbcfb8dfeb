"""Tasks defined by robo-rl itself, registered with gymnasium under the ``robo_rl/`` namespace."""

import gymnasium as gym

if "robo_rl/TwoGoals-v0" not in gym.registry:
    # the registered limit equals the env's own 40-step cut (the time feature of its observation counts down
    # to it), so that what reads gymnasium's registry (robo-rl's eval cadence for short runs) knows the length
    gym.register("robo_rl/TwoGoals-v0", entry_point="envs.tasks.two_goals:TwoGoalsEnv", max_episode_steps=40)
if "robo_rl/ContactMaze-v0" not in gym.registry:
    gym.register("robo_rl/ContactMaze-v0", entry_point="envs.tasks.contact_maze:ContactMazeEnv", max_episode_steps=200)
