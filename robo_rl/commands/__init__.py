"""The `robo-rl` commands, one module each (robo_rl/cli.py dispatches): train (and its -m sweeps), eval,
export and deploy, compare. Every command checks its options first and reports bad input in one line
(common.error) with the exit codes in common."""
