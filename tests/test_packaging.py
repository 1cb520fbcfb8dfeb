"""A built wheel holds what a run reads: the packages, the config groups (robo_rl/configs, a symlink to configs/ in
the source tree) and the task assets. The test suite runs on the editable install, which reads them from the source
tree, so a file the wheel leaves out would show only after a plain `pip install .` or an install from a wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "robo_rl", "policies", "envs", "sim2real", "configs")

# run where only the unpacked wheel provides robo-rl: -S leaves out site-packages' .pth files (the editable install's
# path hook) and robo_rl is a namespace package, which would otherwise merge the source tree's portion into it
CHECK = textwrap.dedent("""
    import sys
    from pathlib import Path

    import robo_rl, policies, envs, sim2real
    site = Path(sys.argv[1]).resolve()
    for package in (robo_rl, policies, envs, sim2real):
        paths = [Path(p).resolve() for p in package.__path__]
        assert paths and all(p.is_relative_to(site) for p in paths), (package.__name__, paths)

    from robo_rl.train import compose_config, train
    # every config group with a choice beside its default, and a task whose model is a packaged XML file
    for overrides in (["algo=expo", "policy=flow"], ["algo=gorl", "policy=latent"], ["algo=parl", "policy=diffusion"],
                      ["randomize=mild"], ["safety=box"], ["algo=ppo", "env=walker2d"]):
        compose_config(overrides)
    summary = train(compose_config(["algo=sac", "env=contact_maze", "steps=40", "algo.learning_starts=20",
                                    "algo.batch_size=8", "algo.critic_hidden=[8]", "policy.hidden_sizes=[8]",
                                    "eval.every=40", "eval.episodes=1", "eval.num_envs=1", "log.progress_seconds=1000",
                                    "log.tensorboard=false", "log.plot=false"]), sys.argv[2])
    assert summary["status"] == "completed", summary
    print("ok")
""")


def test_a_built_wheel_holds_everything_a_run_reads(tmp_path):
    src = tmp_path / "src"
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(path, src / name)
    # no build isolation: the venv's setuptools (torch requires one new enough) builds it, without the network
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("robo_rl-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    paths = sysconfig.get_paths()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), paths["purelib"], paths["platlib"]])}
    out = subprocess.run([sys.executable, "-S", "-c", CHECK, str(site), str(tmp_path / "run")], capture_output=True,
                         text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
