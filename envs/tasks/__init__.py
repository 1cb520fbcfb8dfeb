"""Tasks defined by robo-rl itself, registered with gymnasium under the ``robo_rl/`` namespace."""

import gymnasium as gym

if "robo_rl/TwoGoals-v0" not in gym.registry:
    gym.register("robo_rl/TwoGoals-v0", entry_point="envs.tasks.two_goals:TwoGoalsEnv")
if "robo_rl/ContactMaze-v0" not in gym.registry:
    gym.register("robo_rl/ContactMaze-v0", entry_point="envs.tasks.contact_maze:ContactMazeEnv", max_episode_steps=200)
