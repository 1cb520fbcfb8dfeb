"""The `robo-rl` command end to end, in subprocesses as a user runs it."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

TINY = [
    "algo=sac", "env=pendulum", "algo.learning_starts=100", "algo.batch_size=32", "algo.critic_hidden=[16]",
    "policy.hidden_sizes=[16]", "eval.episodes=2", "eval.num_envs=2", "log.tensorboard=false",
    "threads=1",  # tiny nets: one thread is as fast, and 2 threads crawl when other jobs hold the cores
]


def robo_rl(*args, cwd, timeout=180, check=True):
    cmd = [sys.executable, "-m", "robo_rl.cli", *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_explains_the_commands(tmp_path):
    top = robo_rl("--help", cwd=tmp_path).stdout
    assert "train" in top and "eval" in top and "resume=" in top
    train_help = robo_rl("train", "--help", cwd=tmp_path).stdout
    for word in ("algo=sac|td3|ppo", "env.id=", "steps=", "seed=", "run_dir=", "resume=", "-m seed=0,1,2", "batch_size"):
        assert word in train_help, word
    assert "run_dir=<dir>" in robo_rl("eval", "--help", cwd=tmp_path).stdout
    assert "compare" in top and "group_by=" in robo_rl("compare", "--help", cwd=tmp_path).stdout


def test_top_help_train_examples_compose():
    """Every `robo-rl train` example in `robo-rl --help` is a config that composes and validates."""
    from robo_rl.build import check_head_and_learner
    from robo_rl.cli import TOP_HELP
    from robo_rl.defaults import resolve_defaults
    from robo_rl.validation import validate
    from tests.helpers import compose

    examples = [line.split("robo-rl train", 1)[1].split("  ")[0].split() for line in TOP_HELP.splitlines()
                if line.strip().startswith("robo-rl train")]
    assert len(examples) >= 5 and ["algo=expo", "policy=flow"] in examples
    for overrides in examples:
        overrides = [o for o in overrides if o != "-m" and not o.startswith(("resume=", "run_dir="))]
        overrides = [o.split(",")[0] for o in overrides]  # a sweep's first job
        cfg = resolve_defaults(compose(*overrides))
        validate(cfg)
        check_head_and_learner(cfg)  # e.g. algo=ppo policy=flow is refused here


def test_train_help_and_root_config_examples_compose():
    """The `robo-rl train` examples of its --help and the example in configs/config.yaml's header compose and
    validate: the header's algo.batch_size=512 was an unknown key of the default learner (PPO)."""
    from robo_rl.build import check_head_and_learner
    from robo_rl.defaults import resolve_defaults
    from robo_rl.validation import validate
    from tests.helpers import compose

    configs = Path(__file__).resolve().parents[1] / "configs"
    helped = (configs / "hydra" / "help" / "robo_rl.yaml").read_text()
    examples = [line.split("robo-rl train", 1)[1].split("#")[0].split()
                for line in helped.split("Examples:")[1].splitlines() if line.strip().startswith("robo-rl train")]
    header = re.search(r"\(e\.g\. ([^)]*)\)", (configs / "config.yaml").read_text())[1]
    examples.append(header.split())
    assert len(examples) >= 6
    for overrides in examples:
        overrides = [o for o in overrides if not o.startswith(("resume=", "run_dir="))]
        cfg = resolve_defaults(compose(*overrides))
        validate(cfg)
        check_head_and_learner(cfg)


@pytest.mark.parametrize("command", ["", "eval", "export", "deploy", "compare"])
def test_help_is_plain_text_that_fits_100_columns(tmp_path, command):
    proc = robo_rl(*([command] if command else []), "--help", cwd=tmp_path)
    assert proc.stderr == "" and proc.stdout.startswith("usage: robo-rl")
    wide = [line for line in proc.stdout.splitlines() if len(line) > 100]
    assert not wide, wide


def test_train_help_lists_every_config_of_the_groups_it_names(tmp_path):
    header = robo_rl("train", "--help", cwd=tmp_path).stdout.split("== Config groups ==")[0]
    configs = Path(__file__).resolve().parents[1] / "configs"
    for group in ("algo", "policy", "randomize", "safety"):
        listed = re.search(rf"\b{group}=([\w|]+)", header)
        assert listed, group
        assert sorted(listed[1].split("|")) == sorted(p.stem for p in (configs / group).glob("*.yaml")), group
    env = [e for e in re.search(r"\benv=([\w|]+)", header)[1].split("|") if e]  # a few of them, then ...
    assert env and set(env) <= {p.stem for p in (configs / "env").glob("*.yaml")}


def test_train_help_is_hydra_s_text_without_hydra_s_help_path(tmp_path, monkeypatch, capsys):
    # Hydra's app help lists every option of every config group (1-3 s here) for placeholders the template does not
    # print; train_main renders the template itself, and a hydra.* override still goes to Hydra
    import hydra._internal.hydra as hydra_internal

    from robo_rl.commands.train import train_main

    monkeypatch.setattr(hydra_internal.Hydra, "app_help", lambda *a, **k: pytest.fail("Hydra's help path was taken"))
    overrides, flags = ["algo=expo", "policy=flow", "steps=1e5"], ["--help", "--resolve"]
    assert train_main(overrides + flags) == 0
    ours = capsys.readouterr().out
    hydra_s = robo_rl("train", *overrides, "hydra.job.name=help", *flags, cwd=tmp_path).stdout
    assert ours == hydra_s
    assert ours.startswith("robo-rl train: train") and "edit_lr:" in ours and "steps: 100000" in ours


def test_a_mistyped_key_and_train_help_do_not_wait_for_torch(tmp_path):
    # both come from the composed config alone: importing torch and the training stack (1-2 s) came first
    code = ("import sys; from robo_rl.cli import main; "
            "codes = [main(['train', 'algo.lrr=1']), main(['train', 'algo=sac', '--help'])]; "
            "print(codes, [m for m in ('torch', 'robo_rl.train', 'envs.base', 'policies') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.stdout.splitlines()[-1] == "[2, 0] []", proc.stdout[-500:] + proc.stderr
    assert "unknown key 'algo.lrr'" in proc.stderr and "actor_lr:" in proc.stdout


def test_eval_compare_and_help_import_only_what_they_use(tmp_path):
    # eval built the run's learner with torch.optim's constructor guard, which imported torch._dynamo and sympy (~1 s,
    # longer than a short evaluation) for optimizers that never step; diffusers (~5 s) is for diffusion heads only;
    # every command's help text and compare imported gymnasium and MuJoCo (~0.5 s), and all but train's Hydra, which
    # they do not use
    from robo_rl.train import train
    from tests.helpers import FAST, compose

    train(compose(*TINY, "steps=200", *FAST), tmp_path / "sac")
    train(compose("algo=ppo", "env=pendulum", "env.num_envs=2", "algo.rollout_steps=32", "algo.minibatch_size=32",
                  "algo.epochs=1", "eval.episodes=1", "eval.num_envs=1", "threads=1", "steps=64", *FAST), tmp_path / "ppo")
    quick = [["--help"], *([c, "--help"] for c in ("eval", "export", "deploy", "compare")),
             ["compare", "runs=sac,ppo"]]
    evals = [["eval", f"run_dir={algo}", "episodes=1", "num_envs=1"] for algo in ("sac", "ppo")]
    unused = (["torch", "mujoco", "gymnasium", "hydra", "diffusers"], ["torch._dynamo", "sympy", "hydra", "diffusers"])
    code = ("import sys; from robo_rl.cli import main; "
            f"print([main(args) for args in {quick}], [m for m in {unused[0]} if m in sys.modules]); "
            f"print([main(args) for args in {evals}], [m for m in {unused[1]} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    printed = [line for line in proc.stdout.splitlines() if line.startswith("[")][-2:]
    assert printed == [f"{[0] * len(quick)} []", "[0, 0] []"], proc.stdout[-500:] + proc.stderr[-2000:]
    assert json.loads((tmp_path / "ppo" / "eval.json").read_text())["episodes"] == 1


def test_the_top_help_s_eval_export_deploy_examples_work(tmp_path):
    # each example run on a tiny SAC run, its [optional] keys given; `safety=passivity` (ContactMaze's energy
    # tank, dt 0.04) failed on any other task, the HalfCheetah run of the examples above it included
    tiny = [a if a != "env=pendulum" else "env=reacher" for a in TINY]  # a MuJoCo task: video=true draws it
    robo_rl("train", *tiny, "steps=200", "run_dir=runs/hc", cwd=tmp_path)
    top = robo_rl("--help", cwd=tmp_path).stdout
    examples = [line.split() for line in top.splitlines() if re.match(r"\s+robo-rl (eval|export|deploy) ", line)]
    assert [e[1] for e in examples] == ["eval", "export", "deploy"]
    try:
        import av  # noqa: F401
    except ImportError:
        av = None
    for example in examples:
        args = [a.strip("[]") for a in example[1:]]
        args = [re.sub(r"^episodes=\d+$", "episodes=1", a) for a in args if av is not None or a != "video=true"]
        proc = robo_rl(*args, cwd=tmp_path, check=False)
        assert proc.returncode == 0, (args, proc.stderr)
    assert json.loads((tmp_path / "runs" / "hc" / "export" / "policy.json").read_text())["safety"]["filters"]
    assert (tmp_path / "runs" / "hc" / "export" / "deploy.json").is_file()


def test_bad_input_exits_nonzero_with_the_key_named(tmp_path):
    proc = robo_rl("train", "algo.lrr=1", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "unknown key 'algo.lrr'; did you mean algo.lr?" in proc.stderr
    proc = robo_rl("train", "+env.foo=2", "run_dir=y", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "unknown key 'env.foo'" in proc.stderr
    assert not (tmp_path / "y").exists()
    proc = robo_rl("train", "steps=0", "run_dir=x", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "steps=0: must be > 0" in proc.stderr
    assert not (tmp_path / "x").exists()
    # a simulator that is not installed is a usage error with the install hint, not a traceback
    proc = robo_rl("train", "env.backend=isaac", "env.id=Isaac-Velocity-Flat-Anymal-C-v0", "run_dir=z", cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2 and "Isaac Lab is not installed" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "z").exists()
    # the default task on the isaac backend blamed Isaac Lab's absence ("env.id=Hopper-v5 needs isaaclab, ...")
    proc = robo_rl("train", "env.backend=isaac", "run_dir=z", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "error: env.id=Hopper-v5 is a gymnasium task, not an Isaac Lab one" in proc.stderr
    assert not (tmp_path / "z").exists()
    proc = robo_rl("eval", "run_dir=nowhere", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "nowhere does not exist; give a run's directory" in proc.stderr
    proc = robo_rl("train", "resume=nowhere", cwd=tmp_path, check=False)  # the message names the key
    # (it said "not a robo-rl run directory (config.yaml missing)" of the directory Hydra had made for the job)
    assert proc.returncode == 2 and "error: resume=nowhere: nowhere does not exist; give the directory" in proc.stderr
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "empty").mkdir()  # a directory that holds no run is still named as one
    proc = robo_rl("train", "resume=empty", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "error: resume=empty: empty is not a robo-rl run directory" in proc.stderr
    proc = robo_rl("eval", "run_dir=nowhere", "episodez=3", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "unknown key 'episodez'; did you mean episodes" in proc.stderr
    proc = robo_rl("eval", "run_dir=nowhere", "num_envs=0", cwd=tmp_path, check=False)  # was all three keys named
    assert proc.returncode == 2 and "error: num_envs=0: must be >= 1" in proc.stderr
    proc = robo_rl("frobnicate", cwd=tmp_path, check=False)
    assert proc.returncode == 2


@pytest.mark.parametrize("args, words", [
    (["-m", "seed=0,1", "stepz=10,20"], ["unknown key 'stepz'; did you mean steps?"]),
    (["algo=gorl", "policy.decoder_stepz=2"], ["did you mean policy.decoder_steps"]),
    (["algo=sac", "algo.zzzz=1"], ["unknown key 'algo.zzzz'; the keys there are", "actor_lr",
                                   "(see robo-rl train algo=sac --help)"]),
    (["env=Hopper-v5"], ["'env/Hopper-v5'", "hopper", "for a gymnasium id use env.id=Hopper-v5"]),
    (["algo.minibatch_size=big"], ["'big'", "minibatch_size"]),
    (["algo=dqn"], ["algo/dqn", "sac"]),
    (["seed=3", "algo=sac"], None),
    # every job of a sweep is composed and validated before Hydra starts the first one
    (["-m", "algo=sac,dqn"], ["sweep job algo=dqn", "algo/dqn"]),
    (["-m", "steps=100,0", "seed=1,2"], ["sweep job steps=0 seed=1", "steps=0: must be > 0", "no job was started"]),
    (["-m", "algo=sac,ppo", "algo.tau=0.01"], ["sweep job algo=ppo", "unknown key 'algo.tau'"]),
    (["-m", "algo=ppo,sac", "algo.tau=0.01"], ["sweep job algo=ppo: unknown key 'algo.tau'"]),  # the first job too
    (["-m", "steps=1,many"], ["sweep job steps=many", "'many'"]),
    (["-m", "algo=ppo,sac", "env.normalize_reward=true"], ["sweep job algo=sac", "off-policy"]),
    (["-m", "seed=range(0,3)", "algo=sac,td3"], None),
    (["-m", "steps=0"], ["steps=0: must be > 0"]),
    # found by the learner's constructor: the sac job must not train before the td3 job fails
    (["-m", "algo=sac,td3", "policy=gaussian"], ["sweep job algo=td3", "no job was started"]),
    # --help shows the config the overrides make, so they must make one (was Hydra's traceback)
    (["algo=foo", "--help"], ["algo/foo", "sac"]),
    (["algo.lrr=1", "--help"], ["unknown key 'algo.lrr'; did you mean algo.lr?"]),
    (["algo=sac", "--help"], None),
    # two jobs with one directory: the second was refused only after the first had trained
    (["-m", "algo.critic_lr=3e-4,1e-3,0.0003", "algo=sac"], ["sweep algo.critic_lr: 0.0003 given more than once"]),
    (["-m", "run_dir=a,b", "seed=1,2"], ["run_dir cannot be swept", "run_dir=<its directory>"]),
    # a / in a value is written - in a job directory's name: these two were one directory, the second job refused
    (["-m", "env.id=robo_rl-TwoGoals-v0,robo_rl/TwoGoals-v0"], [
        "sweep env.id: robo_rl-TwoGoals-v0 and robo_rl/TwoGoals-v0 would share the job directory "
        "env.id=robo_rl-TwoGoals-v0 (a / or \\ in a value is written -)"]),
    # quoted values (a space, an =) are a sweep too: the first quote and the last made them one value, "ambiguous"
    (["-m", "env.kwargs.x='a b','c=d'", "algo=sac"], None),
    # a grammar error in a sweep is one line, naming the override (it was Hydra's report, or a traceback)
    (["-m", "resume=r/seed=0,r/seed=1"], ["resume=r/seed=0,r/seed=1: mismatched input '='", "key='value'"]),
    (["-m", "seed=shuffle(0,1)", "algo=sac"], None),  # Hydra's sweep functions are sweeps ("ambiguous value" before)
    # glob over a group is expanded here: each matching learner gets the key (it was composed with the default PPO)
    (["-m", "algo=glob(*,exclude=[ppo,gorl*,expo,parl])", "algo.learning_starts=100"], None),
    (["-m", "algo=glob(*,exclude=[gorl*,expo,parl])", "algo.learning_starts=100"], ["unknown key 'algo.learning_starts'", "algo=ppo"]),
])
def test_train_overrides_are_checked_before_hydra_runs(args, words):
    from robo_rl.commands.train import composition_problem

    problem = composition_problem(args)
    if words is None:
        assert problem is None
    else:
        assert problem is not None and all(w in problem for w in words), problem


def test_path_values_holding_equals_are_quoted_for_hydra(tmp_path):
    from robo_rl.commands.common import quote_paths

    (tmp_path / "algo=sac,seed=1").mkdir()
    job = str(tmp_path / "algo=sac,seed=1")
    assert quote_paths(["resume=runs/sweep/seed=1", f"resume={job}", "run_dir=a,b", "seed=0,1",
                        "resume='q/seed=1'", "run_dir=runs/x=1,y"]) == [
        "resume='runs/sweep/seed=1'", f"resume='{job}'", "run_dir=a,b", "seed=0,1", "resume='q/seed=1'",
        "run_dir=runs/x=1,y"]  # a comma that may be a sweep: quoted only when it names a directory
    # the job of a sweep over quoted values: its printed resume= was a grammar error ("mismatched input '='")
    assert quote_paths(["resume=runs/sweep/env.kwargs.x='a b'", "resume=s/x=\"a'b\""]) == [
        "resume=\"runs/sweep/env.kwargs.x='a b'\"", "resume=s/x=\"a'b\""]  # both quotes in it: left to Hydra
    # beyond ASCII: Hydra's grammar refused the printed resume= of a run in runs/ünï_日本 when pasted unquoted
    assert quote_paths(["resume=runs/ünï_日本", "run_dir=runs/é", "seed=1"]) == [
        "resume='runs/ünï_日本'", "run_dir='runs/é'", "seed=1"]


def test_a_run_dir_that_is_or_lies_under_a_file_is_refused_before_hydra_makes_it(tmp_path, monkeypatch):
    from robo_rl.commands.train import run_dir_problem

    (tmp_path / "f").write_text("x")
    assert "that is a file, not a directory" in run_dir_problem([f"run_dir={tmp_path / 'f'}"])
    assert "that is a file, not a directory" in run_dir_problem([f"resume={tmp_path / 'f'}"])
    assert f"{tmp_path / 'f'} is a file, so no directory" in run_dir_problem(["-m", f"run_dir={tmp_path / 'f' / 'runs'}"])
    assert run_dir_problem([f"run_dir={tmp_path / 'new' / 'run'}", "seed=1"]) is None
    # a dangling symbolic link: Hydra's mkdir failed with a FileExistsError traceback
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    assert run_dir_problem([f"run_dir={tmp_path / 'link'}"]) == (
        f"run_dir={tmp_path / 'link'}: that is a symbolic link to {tmp_path / 'gone'}, which does not exist; create its "
        "target or choose another path")
    assert f"{tmp_path / 'link'} is a symbolic link to" in run_dir_problem([f"run_dir={tmp_path / 'link' / 'run'}"])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("x")  # the default run directory goes under ./runs
    assert "runs/ (where runs go without run_dir=): that is a file" in run_dir_problem(["seed=1"])
    proc = robo_rl("train", f"run_dir={tmp_path / 'f' / 'run'}", "steps=10", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "is a file, so no directory can be made under it" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_unknown_mujoco_gl_is_one_line_not_a_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "foo")  # MuJoCo refuses to import at all
    proc = robo_rl("eval", "run_dir=nowhere", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "MUJOCO_GL=foo" in proc.stderr and "egl" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_default_run_dir_is_one_directory_however_the_id_is_spelled():
    from omegaconf import OmegaConf

    from robo_rl.commands.train import register_resolvers

    register_resolvers()
    cfg = OmegaConf.create({"run_dir": None, "resume": None, "env": {"id": "my.pkg:ns/Arm-v0"},
                            "dir": "${robo_rl_run_dir:${run_dir},${resume},sac,${env.id},0,T}"})
    assert cfg.dir == "runs/sac-my.pkg-ns-Arm-v0-s0-T"


def test_large_sweeps_are_checked_one_value_at_a_time(monkeypatch, capsys):
    from robo_rl.commands import sweep
    from robo_rl.commands.train import composition_problem

    monkeypatch.setattr(sweep, "MAX_CHECKED_JOBS", 3)
    assert composition_problem(["-m", "seed=0,1", "algo=sac,td3"]) is None
    assert "checking 3 configs of a 4-job sweep before it starts (each swept value once)" in capsys.readouterr().err
    problem = composition_problem(["-m", "seed=0,1", "steps=5,-1"])
    assert problem is not None and "sweep job seed=0 steps=-1" in problem
    assert composition_problem(["-m", "seed=range(0,10)", "steps=5,6"]) is None  # 11 values: capped
    assert "checking 3 configs of a 20-job sweep before it starts (the first swept values)" in capsys.readouterr().err


def test_an_abort_by_ctrl_c_exits_130_with_one_line(tmp_path, monkeypatch, capsys):
    import robo_rl.commands.train as cli
    import robo_rl.train

    def aborted(*args, **kwargs):
        raise KeyboardInterrupt  # a second Ctrl-C in the loop, or one during start-up

    monkeypatch.setattr(robo_rl.train, "train", aborted)
    assert cli.run_training(None, tmp_path / "run", []) == 128 + signal.SIGINT
    assert capsys.readouterr().err.strip() == "robo-rl: error: aborted by Ctrl-C"


def test_a_second_signal_as_robo_rl_exits_keeps_its_exit_code(tmp_path):
    # a terminal's Ctrl-C, then a SIGTERM (or a second signal to the process group) after the command had returned:
    # robo-rl put the default handlers back and the interpreter's shutdown died of it, exit -15 (or -2 after a sweep
    # that had completed), not the command's 130
    script = (
        "import os, signal, sys\n"
        "import robo_rl.config, robo_rl.cli as cli\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # (an ignored SIGINT is inherited from the parent)\n"
        "robo_rl.config.register_schemas = lambda *a, **k: signal.raise_signal(signal.SIGINT)  # Ctrl-C at start-up\n"
        "sys.argv = ['robo-rl', 'train', 'run_dir=run', 'steps=200', *%r]\n" % (TINY,) +
        "code = cli.main()\n"
        "os.kill(os.getpid(), signal.SIGTERM)  # the next signal, as the process exits\n"
        "sys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 128 + signal.SIGINT, proc.stderr
    assert proc.stderr.strip() == "robo-rl: error: aborted by Ctrl-C"


def test_a_ctrl_c_while_the_command_starts_exits_130_with_one_line(tmp_path, monkeypatch, capsys):
    # a Ctrl-C while torch was imported (the first seconds of `robo-rl train resume=...`) printed a traceback
    import robo_rl.config
    from robo_rl.cli import main

    def starting(*args, **kwargs):
        # what Python's default SIGINT handler does (raising the signal itself depends on the process's handler, which
        # a test runner's worker may have replaced: the command then trained on, a default run of 1M steps)
        raise KeyboardInterrupt

    monkeypatch.setattr(robo_rl.config, "register_schemas", starting)
    try:
        code = main(["train", *TINY, "steps=200", f"run_dir={tmp_path / 'run'}"])
    except KeyboardInterrupt:
        code = "a traceback"
    assert code == 128 + signal.SIGINT
    assert capsys.readouterr().err.strip() == "robo-rl: error: aborted by Ctrl-C"
    assert not (tmp_path / "run").exists()


def test_a_sigterm_while_train_starts_exits_143_with_one_line(tmp_path, monkeypatch, capsys):
    # before run_training's handler (torch's import, Hydra's composition) the default handler ended it silently (-15)
    import robo_rl.config
    from robo_rl.cli import main

    def starting(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)

    def killed(signum, frame):  # what the default handler did
        raise RuntimeError("the default SIGTERM handler ended the process")

    monkeypatch.setattr(robo_rl.config, "register_schemas", starting)
    # an earlier run in this process was interrupted (a test before this one): its signal made this one's SIGTERM a
    # repeat to ignore, and the command went on to compose its config
    from robo_rl.runners.stopping import StopOnSignal

    monkeypatch.setattr(StopOnSignal, "received", signal.SIGTERM)
    previous = signal.signal(signal.SIGTERM, killed)
    try:
        code = main(["train", *TINY, "steps=200", f"run_dir={tmp_path / 'run'}"])
        assert signal.getsignal(signal.SIGTERM) is killed  # put back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip() == ("robo-rl: error: stopped by SIGTERM outside the training loop; "
                                               "nothing was training")
    assert not (tmp_path / "run").exists()


def test_a_sigterm_before_the_loop_exits_143_with_one_line(tmp_path, monkeypatch, capsys):
    import robo_rl.commands.train as cli
    import robo_rl.train

    def starting(*args, **kwargs):  # SIGTERM while the envs are built (the default handler ended it silently, -15)
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(robo_rl.train, "train", starting)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.run_training(None, tmp_path / "run", []) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip() == ("robo-rl: error: stopped by SIGTERM outside the training loop; "
                                               "nothing was written")
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


def test_train_eval_resume(tmp_path):
    out = robo_rl("train", *TINY, "steps=300", "run_dir=runs/p", "seed=3", cwd=tmp_path).stderr
    assert "step 300/300" in out and "eval at step 300" in out
    run = tmp_path / "runs" / "p"
    assert json.loads((run / "summary.json").read_text())["steps"] == 300

    out = robo_rl("eval", "run_dir=runs/p", "episodes=3", cwd=tmp_path).stdout
    result = json.loads((run / "eval.json").read_text())
    assert result["episodes"] == 3 and result["deterministic"] is True and result["checkpoint_step"] == 300
    # what acted: 3 episodes need 3 env copies of the default 10; the run's head, device and filters (none)
    assert (result["num_envs"], result["device"], result["policy"], result["safety_filters"]) == (3, "cpu", "gaussian", [])
    assert f"{result['return_mean']:.1f}" in out
    # paths absolute (run_dir=runs/p was stored as given, relative to where eval ran)
    assert result["run_dir"] == str(run.resolve()) and result["checkpoint"] == str(run.resolve() / "checkpoints" / "step_0000000300")

    out = robo_rl("train", "resume=runs/p", "steps=500", cwd=tmp_path).stderr
    assert "resumed from" in out and "step_0000000300" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 500
    assert summary["last_checkpoint"] == str(run.absolute() / "checkpoints" / "step_0000000500")  # not runs/p/...
    # SAC's own keys are checked against the SAC run, not the default PPO ("unknown key" before); its values are no change
    proc = robo_rl("train", "resume=runs/p", "algo.batch_size=64", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "algo.batch_size cannot change on resume" in proc.stderr
    proc = robo_rl("train", "resume=runs/p", "algo.batch_size=32", "seed=3", "steps=500", cwd=tmp_path)
    assert "the run is already complete (500 of 500 steps)" in proc.stderr
    assert "its summary and learning curve are written again" in proc.stderr
    proc = robo_rl("train", "resume=runs/p", "log.plot=false", cwd=tmp_path)  # no curve: none is promised
    assert "nothing to train; its summary is written again" in proc.stderr

    # a damaged newest checkpoint: eval says which one it skips (it used to fall back silently)
    (run / "checkpoints" / "step_0000000500" / "state.safetensors").write_bytes(b"0" * 100)
    proc = robo_rl("eval", "run_dir=runs/p", "episodes=1", cwd=tmp_path)
    assert "robo-rl: warning: skipping step_0000000500" in proc.stderr and "truncated or altered" in proc.stderr
    assert "(checkpoint step 480)" in proc.stdout and "over 1 episode (" in proc.stdout  # the one before (every 30)


def test_an_off_policy_run_that_never_updates_says_so(tmp_path):
    err = robo_rl("train", *TINY, "steps=60", "run_dir=r", cwd=tmp_path).stderr  # learning_starts=100
    assert "steps=60 ends before algo.learning_starts=100, so the policy is never updated" in err
    # its resume said "lower algo.learning_starts", which a resume refuses to change: it names steps only
    err = robo_rl("train", "resume=r", "steps=80", cwd=tmp_path).stderr
    assert "steps=80 ends before algo.learning_starts=100, so the policy is never updated (every action is uniform " \
           "random); raise steps (a resume keeps algo.learning_starts)" in err, err
    err = robo_rl("train", "resume=r", "steps=150", cwd=tmp_path).stderr
    assert "never updated" not in err and json.loads((tmp_path / "r" / "summary.json").read_text())["updates"] > 0
    err = robo_rl("train", *TINY, "steps=150", "run_dir=r2", cwd=tmp_path).stderr
    assert "never updated" not in err and "makes no gradient update" not in err
    err = robo_rl("train", *TINY, "steps=150", "algo.utd=0.01", "run_dir=r3", cwd=tmp_path).stderr  # 0.5 updates
    assert "algo.utd=0.01 over the 50 steps after algo.learning_starts makes no gradient update" in err
    # steps 100..150 are 51 iterations: 51 x 0.0199 credit makes one update (counted as the runner does, not 50 x utd)
    err = robo_rl("train", *TINY, "steps=150", "algo.utd=0.0199", "run_dir=r4", cwd=tmp_path).stderr
    assert "makes no gradient update" not in err
    assert json.loads((tmp_path / "r4" / "summary.json").read_text())["updates"] == 1


SMALL = ["env=pendulum", "policy.hidden_sizes=[16]", "eval.episodes=2", "eval.num_envs=2", "log.tensorboard=false",
         "log.plot=false", "threads=1"]  # TINY for any learner
OFF_POLICY = ["algo.batch_size=32", "algo.critic_hidden=[16]", "algo.learning_starts=100"]


@pytest.mark.parametrize("args, warning", [
    # 50 iterations of 2 envs at utd=0.3 make 30 updates (a plain float sum of the credit made 29)
    (["algo=td3", "algo.batch_size=32", "algo.critic_hidden=[16]", "env.num_envs=2", "steps=99", "algo.learning_starts=0",
      "algo.utd=0.3", "algo.policy_delay=31"],
     "algo.policy_delay=31 is more than the run's 30 gradient updates, so the actor and the target networks are never "
     "updated; lower algo.policy_delay to at most 30 or raise steps"),
    (["algo=parl", *OFF_POLICY, "policy.steps=2", "steps=150", "algo.policy_update_every=52"],  # steps 100..150: 51 updates
     "algo.policy_update_every=52 is more than the run's 51 gradient updates, so the policy is never updated"),
    (["algo=sac", *OFF_POLICY, "steps=150", "algo.target_update_every=52"],
     "algo.target_update_every=52 is more than the run's 51 gradient updates, so the target critics are never updated"),
])
def test_a_network_the_run_never_updates_is_named_at_the_start(tmp_path, args, warning):
    err = robo_rl("train", *SMALL, *args, "run_dir=r", cwd=tmp_path).stderr
    assert f"robo-rl: warning: {warning}" in err
    updates = int(re.search(r"the run's (\d+) gradient updates", warning)[1])
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["updates"] == updates  # counted as the runner does
    # one more update, and the network is updated once: no warning
    key = re.search(r"(algo\.\w+)=", warning)[1]
    args = [a for a in args if not a.startswith(f"{key}=")] + [f"{key}={updates}"]
    err = robo_rl("train", *SMALL, *args, "run_dir=r2", cwd=tmp_path).stderr
    assert "never updated" not in err


def test_a_warm_started_run_may_leave_the_actor_to_its_pretraining(tmp_path):
    # demonstrations pretrain the actor and move the targets (demos.critic_steps) before the first step
    rng = np.random.default_rng(0)
    from robo_rl.demos import save_demos
    save_demos(tmp_path / "demos.npz", rng.normal(size=(64, 3)), rng.uniform(-2, 2, size=(64, 1)), rng.normal(size=64),
               rng.normal(size=(64, 3)), np.zeros(64, bool))
    err = robo_rl("train", *SMALL, "algo=td3", *OFF_POLICY, "steps=150", "algo.policy_delay=1000", "demos.path=demos.npz",
                  "demos.pretrain_steps=5", "demos.critic_steps=5", "run_dir=r", cwd=tmp_path).stderr
    assert "pretrained the deterministic head" in err and "never updated" not in err
    # its resume loads no demos, but the actor it continues was pretrained all the same
    err = robo_rl("train", "resume=r", "steps=300", cwd=tmp_path).stderr
    assert "resumed from" in err and "never updated" not in err


@pytest.mark.parametrize("args", [
    ["algo=gorl", "env.num_envs=2", "algo.rollout_steps=32", "steps=256", "algo.epochs=1"],  # 4 updates, a refit after 2
    ["algo=gorl_sac", *OFF_POLICY, "steps=150", "algo.refit_every=20"],  # 51 updates, refits after 20 and 40
])
def test_a_decoder_refit_on_less_than_a_minibatch_is_named_at_the_start(tmp_path, args):
    small_decoder = ["policy.decoder_hidden=[16]"]
    err = robo_rl("train", *SMALL, *args, *small_decoder, "algo.dataset_size=8", "algo.refit_batch_size=16",
                  "run_dir=r", cwd=tmp_path).stderr
    assert ("robo-rl: warning: algo.dataset_size=8 is smaller than algo.refit_batch_size=16: each decoder refit trains "
            "on at most 8 (s, a) pair(s), fewer than one minibatch; raise algo.dataset_size to at least 16") in err
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["status"] == "completed"
    # a run without a refit keeps no pairs for one: nothing to say
    once = ["algo.stages=1"] if "algo=gorl" in args else ["algo.refit_every=51"]
    err = robo_rl("train", *SMALL, *args, *small_decoder, *once, "algo.dataset_size=8", "algo.refit_batch_size=16",
                  "run_dir=r2", cwd=tmp_path).stderr
    assert "algo.dataset_size" not in err


def test_a_learner_with_settings_for_the_task_says_which(tmp_path):
    out = robo_rl("train", "env=swimmer", "steps=2048", "eval.episodes=1", "log.plot=false", "log.tensorboard=false",
                  "run_dir=r", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "ppo's settings for Swimmer-v5: env.num_envs=4 algo.rollout_steps=512" in out.stderr
    saved = (tmp_path / "r" / "config.yaml").read_text()
    assert "num_envs: 4" in saved and "rollout_steps: 512" in saved
    # a key given on the command line is the user's, not the task's
    out = robo_rl("train", "env=swimmer", "steps=2048", "eval.episodes=1", "log.plot=false", "log.tensorboard=false",
                  "env.num_envs=8", "run_dir=r2", cwd=tmp_path)
    assert "settings for Swimmer-v5: algo.rollout_steps=512 (set" in out.stderr


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(tmp_path):
    cmd = [sys.executable, "-m", "robo_rl.cli", "train", *TINY, "steps=100000", "run_dir=run",
           "log.progress_seconds=0.5", "checkpoint.every=100000"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "run" / "train.log").exists():
        time.sleep(0.2)
    while time.time() < deadline and not re.search(r"step [1-9][\d,]*/", (tmp_path / "run" / "train.log").read_text()):
        time.sleep(0.2)  # until a progress line shows it has trained a little
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err and "robo-rl train resume=" in err
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("step_*"))
    assert len(ckpts) == 1
    step = int(ckpts[0].name.split("_")[1])
    assert 0 < step < 100000
    robo_rl("train", "resume=run", f"steps={step + 50}", cwd=tmp_path)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] >= step + 50


def test_eval_records_demonstrations_that_warm_start_another_run(tmp_path):
    robo_rl("train", *TINY, "steps=200", "run_dir=expert", cwd=tmp_path)
    out = robo_rl("eval", "run_dir=expert", "episodes=3", "num_envs=2", "demos_out=demos.npz", cwd=tmp_path).stdout
    assert "demonstrations: 600 transitions in" in out  # 3 Pendulum episodes of 200 steps
    result = json.loads((tmp_path / "expert" / "eval.json").read_text())
    with np.load(tmp_path / "demos.npz") as d:
        assert d["obs"].shape == (600, 3) and d["actions"].shape == (600, 1) and not d["terminated"].any()
        assert d["rewards"].sum() == pytest.approx(sum(result["returns"]), rel=1e-5)  # exactly the counted episodes
    err = robo_rl("train", *TINY, "steps=100", "run_dir=warm", "demos.path=demos.npz", "demos.pretrain_steps=20",
                  cwd=tmp_path).stderr
    assert "demos: pretrained the gaussian head on 600 transitions" in err and "preloaded 600 transitions" in err
    assert "of pretraining on demonstrations); final eval return" in err  # reported apart from the training time
    assert json.loads((tmp_path / "warm" / "summary.json").read_text())["pretrain_time_s"] > 0


def test_head_keys_reach_every_job_when_the_algorithms_pick_the_head(monkeypatch):
    # Hydra's sweep-level config has the default head (gaussian, no `steps`): set-or-add it there
    from robo_rl.commands import sweep

    args = ["-m", "algo=expo,parl", "policy.steps=2", "seed=0"]
    monkeypatch.setattr(sweep, "TRAIN_ARGS", args)
    assert sweep.for_hydra_multirun(args) == ["-m", "algo=expo,parl", "++policy.steps=2", "seed=0"]
    chosen = ["-m", "algo=expo,parl", "policy=flow", "policy.steps=2"]  # a head named on the command line
    monkeypatch.setattr(sweep, "TRAIN_ARGS", chosen)
    assert sweep.for_hydra_multirun(chosen) == chosen


def test_multirun_over_seeds(tmp_path):
    err = robo_rl("train", "-m", "seed=0,1", *TINY, "steps=150", "run_dir=sweep", cwd=tmp_path).stderr
    assert "sweep: 2 job(s) in sweep; side by side: robo-rl compare runs=sweep" in err
    finals = []
    for seed in (0, 1):
        summary = json.loads((tmp_path / "sweep" / f"seed={seed}" / "summary.json").read_text())
        assert summary["seed"] == seed and summary["steps"] == 150
        finals.append(summary["final_eval_return_mean"])
    # the sweep's seeds side by side: one group (the runs differ only in seed)
    out = robo_rl("compare", "runs=sweep", cwd=tmp_path).stdout
    assert "2 runs in 1 group(s)" in out and "| sac Pendulum-v1 | 2 (0, 1) |" in out
    group = json.loads((tmp_path / "sweep" / "compare.json").read_text())["groups"][0]
    assert group["final_eval_return"]["mean"] == pytest.approx(sum(finals) / 2)
    assert (tmp_path / "sweep" / "compare.png").stat().st_size > 0


def test_a_sweep_exits_with_its_failed_job_s_code(tmp_path, monkeypatch):
    # job after=20 stops on a NaN observation (exit 1), job after=100000 completes: the sweep exits 1, not 0
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))  # tests.helpers for the subprocess
    proc = robo_rl("train", "-m", "env.kwargs.after=20,100000", *TINY, "env.id=tests.helpers:robo_rl_test/NaNAfter-v0",
                   "steps=150", "run_dir=sweep", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "sweep: 1 of 2 job(s) failed: env.kwargs.after=20" in proc.stderr
    assert json.loads((tmp_path / "sweep" / "env.kwargs.after=100000" / "summary.json").read_text())["steps"] == 150
    # the same sweep again into its directory continues it: the failed job is left as it is (not replayed into
    # its NaN), the finished one is kept (it used to be refused: "already holds a run", counted as failed)
    proc = robo_rl("train", "-m", "env.kwargs.after=20,100000", *TINY, "env.id=tests.helpers:robo_rl_test/NaNAfter-v0",
                   "steps=150", "run_dir=sweep", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "env.kwargs.after=20 failed before (failed: non-finite" in proc.stderr
    assert "the run is already complete (150 of 150 steps)" in proc.stderr and "already holds a run" not in proc.stderr


@pytest.fixture
def console(monkeypatch, capsys):
    """capsys for an in-process train_main's stderr: the console log handler train() adds writes to this test's
    stream and is dropped afterwards (a handler bound to an earlier test's closed capture stream fails)."""
    import logging

    logger = logging.getLogger("robo_rl")
    monkeypatch.setattr(logger, "handlers", [h for h in logger.handlers if not getattr(h, "_robo_rl", False)])
    return capsys


def test_a_failed_sweep_job_is_named_by_its_own_values_whatever_order_hydra_runs_them_in(tmp_path, monkeypatch, console):
    # Hydra runs a shuffle() sweep in an order of its own (reversed here, deterministically): the failed job was
    # named by its number in the command line's order, i.e. the job that completed (after=100000)
    from hydra.core.plugins import Plugins

    from robo_rl.commands.train import train_main

    Plugins.instance()  # Hydra's plugin scan executes the sweeper's module again: patch the class it then holds
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    split = BasicSweeper.split_arguments
    monkeypatch.setattr(BasicSweeper, "split_arguments",
                        staticmethod(lambda overrides, size: [b[::-1] for b in split(overrides, size)]))
    monkeypatch.chdir(tmp_path)
    nan_env = [*TINY, "env.id=tests.helpers:robo_rl_test/NaNAfter-v0", "steps=40", "eval.episodes=1", "eval.num_envs=1"]
    assert train_main(["-m", "env.kwargs.after=20,100000", *nan_env, "run_dir=sweep"]) == 1
    assert "robo-rl: error: sweep: 1 of 2 job(s) failed: env.kwargs.after=20\n" in console.readouterr().err


def test_each_compiled_sweep_job_compiles_as_a_run_of_its_own(tmp_path, monkeypatch, console):
    # torch keeps compiled code per function across a multirun's jobs (one process), up to recompile_limit versions:
    # past it (by default the 9th network shape, task or precision) a job ran eager, with torch's warning on the console
    import torch._dynamo

    from robo_rl.commands.train import train_main

    monkeypatch.chdir(tmp_path)
    small = [*TINY, "algo=td3", "steps=101", "eval.episodes=1", "eval.num_envs=1", "compile=true"]  # 2 critic updates
    with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):  # the limit, from job 2
        assert train_main(["-m", *small, "algo.batch_size=16,17", "run_dir=sweep"]) == 0, console.readouterr().err
    assert len([p for p in (tmp_path / "sweep").iterdir() if p.is_dir()]) == 2


def test_a_failed_job_of_a_one_job_sweep_is_named_by_its_directory(tmp_path, monkeypatch, console):
    # no key takes two values: the job has no swept values, and the failed job's name was empty; its directory is
    # named by its overrides (a key given twice once, with its last value, as Hydra's sweeper passes it; a / written
    # -; not threads= or log.*)
    from robo_rl.commands.train import train_main

    monkeypatch.chdir(tmp_path)
    nan_env = [*TINY, "env.id=tests.helpers:robo_rl_test/NaNAfter-v0", "steps=40", "eval.episodes=1", "eval.num_envs=1"]
    assert train_main(["-m", "env.kwargs.after=20", *nan_env, "run_dir=one"]) == 1
    job = ("env.kwargs.after=20,algo=sac,env=pendulum,algo.learning_starts=100,algo.batch_size=32,"
           "algo.critic_hidden=[16],policy.hidden_sizes=[16],eval.episodes=1,eval.num_envs=1,"
           "env.id=tests.helpers:robo_rl_test-NaNAfter-v0")
    assert f"robo-rl: error: sweep: 1 of 1 job(s) failed: {job}\n" in console.readouterr().err
    assert [p.name for p in (tmp_path / "one").iterdir() if p.is_dir()] == [job]


def test_a_sweep_whose_jobs_all_failed_before_writing_a_run_prints_no_compare_line(tmp_path, monkeypatch, console):
    # an unknown env.id fails each job as it starts: the closing line still said "side by side: robo-rl compare
    # runs=...", a command that then failed with "neither a run directory nor a directory holding runs"
    from robo_rl.commands.train import train_main

    monkeypatch.chdir(tmp_path)
    assert train_main(["-m", "seed=0,1", *TINY, "env.id=Nope-v0", "steps=40", "run_dir=bad"]) == 2
    err = console.readouterr().err
    assert "sweep: 2 job(s) in bad, none of which wrote a run to compare" in err and "robo-rl compare" not in err
    assert "sweep: 2 of 2 job(s) failed: seed=0; seed=1" in err


def test_a_sweep_run_again_prints_its_compare_line_when_no_job_trains(tmp_path, monkeypatch, console):
    # run again, a sweep whose every job failed before trains nothing: its closing line (and a continued job's) went
    # to a logger with no handler yet (train() adds it), so the documented robo-rl compare line was missing
    from robo_rl.commands.train import train_main

    monkeypatch.chdir(tmp_path)
    name = ("seed=0,algo=sac,env=pendulum,algo.learning_starts=100,algo.batch_size=32,algo.critic_hidden=[16],"
            "policy.hidden_sizes=[16],eval.episodes=2,eval.num_envs=2")  # the job's overrides (a one-job sweep)
    job = tmp_path / "one" / name  # what a job that stopped on a NaN leaves (a config and a failed summary)
    job.mkdir(parents=True)
    (job / "config.yaml").write_text("seed: 0\n")
    (job / "summary.json").write_text(json.dumps({"status": "failed: non-finite observation at step 20"}))
    assert train_main(["-m", "seed=0", *TINY, "steps=40", "run_dir=one"]) == 1
    err = console.readouterr().err
    assert f"{name} failed before (failed: non-finite observation at step 20)" in err
    assert f"sweep: 1 job(s) in one; side by side: robo-rl compare runs=one\nrobo-rl: error: sweep: 1 of 1 job(s) failed: {name}\n" in err


def test_a_sweep_run_again_resumes_its_jobs_whatever_keys_their_runs_saved(tmp_path, monkeypatch, console):
    # a sweep from before a key nothing reads was refused (safety.cost_budget without passivity_aware), run again to
    # continue it: the check before the first job refused the key, though every job would resume its saved run
    from robo_rl.commands.train import train_main

    monkeypatch.chdir(tmp_path)
    for seed in (0, 1):  # what jobs that stopped on a NaN leave (a config and a failed summary): nothing trains
        job = tmp_path / "old" / f"seed={seed}"
        job.mkdir(parents=True)
        (job / "config.yaml").write_text(f"seed: {seed}\n")
        (job / "summary.json").write_text(json.dumps({"status": "failed: non-finite observation at step 20"}))
    assert train_main(["-m", "seed=0,1", *TINY, "steps=40", "safety.cost_budget=0.03", "run_dir=old"]) == 1
    err = console.readouterr().err
    assert "seed=0 failed before" in err and "seed=1 failed before" in err and "cost_budget" not in err
    # a new sweep with the key is still refused before any job starts
    assert train_main(["-m", "seed=0,1", *TINY, "steps=40", "safety.cost_budget=0.03", "run_dir=new"]) == 2
    assert "safety.cost_budget=0.03: only passivity-aware training reads it" in console.readouterr().err
    assert not (tmp_path / "new").exists()


def test_overrides_before_m_make_the_same_sweep(tmp_path, monkeypatch, console):
    # Hydra's argument parser takes the overrides as one run of words: `algo=sac -m seed=0,1` passed every check of
    # robo-rl's and then ended in Hydra's usage text ("unrecognized arguments: seed=0,1 ..."), exit 2
    from robo_rl.commands import train

    jobs = []
    monkeypatch.setattr(train, "run_training", lambda cfg, run_dir, overrides: jobs.append((cfg, run_dir)) or 0)
    monkeypatch.chdir(tmp_path)
    assert train.train_main(["algo=sac", "-m", "seed=0,1", *TINY[1:], "run_dir=sweep"]) == 0
    assert [(cfg.algo.name, cfg.seed, run_dir.relative_to(tmp_path).as_posix()) for cfg, run_dir in jobs] == [
        ("sac", 0, "sweep/seed=0"), ("sac", 1, "sweep/seed=1")]


def test_a_swept_value_with_a_slash_names_one_flat_job_directory(tmp_path, monkeypatch, console):
    # the job of env.id=robo_rl/TwoGoals-v0 went into sweep/env.id=robo_rl/TwoGoals-v0, two directories deep, and
    # a module's id into sweep/env.id=tests.helpers\:robo_rl_test/NaNAfter-v0 (Hydra's escape of the : kept)
    from robo_rl.commands import train

    jobs = []
    monkeypatch.setattr(train, "run_training", lambda cfg, run_dir, overrides: jobs.append((cfg, run_dir)) or 0)
    monkeypatch.chdir(tmp_path)
    ids = "Pendulum-v1,robo_rl/TwoGoals-v0,tests.helpers:robo_rl_test/NaNAfter-v0"
    assert train.train_main(["-m", f"env.id={ids}", *TINY, "run_dir=sweep"]) == 0
    assert [(cfg.env.id, run_dir.relative_to(tmp_path).as_posix()) for cfg, run_dir in jobs] == [
        ("Pendulum-v1", "sweep/env.id=Pendulum-v1"), ("robo_rl/TwoGoals-v0", "sweep/env.id=robo_rl-TwoGoals-v0"),
        ("tests.helpers:robo_rl_test/NaNAfter-v0", "sweep/env.id=tests.helpers:robo_rl_test-NaNAfter-v0")]


def test_a_one_job_sweep_is_named_by_its_overrides_not_its_number(tmp_path, monkeypatch, console):
    # both were sweep/job0: the seed=1 sweep into that directory took the seed=0 run for its own and was refused
    # ("seed cannot change on resume"); steps= (which a resume may change) leaves the name alone, to continue it
    from robo_rl.commands import sweep, train

    jobs = []
    monkeypatch.setattr(train, "run_training", lambda cfg, run_dir, overrides: jobs.append((cfg, run_dir)) or 0)
    monkeypatch.chdir(tmp_path)
    assert train.train_main(["-m", "seed=0", "algo=sac", "env=pendulum", "seed=2", "seed=0", "steps=40",
                             "run_dir=sweep"]) == 0
    assert [(cfg.seed, run_dir.relative_to(tmp_path).as_posix()) for cfg, run_dir in jobs] == [
        (0, "sweep/seed=0,algo=sac,env=pendulum")]
    names = {}
    for seed, steps in ((1, 40), (0, 80)):
        sweep.TRAIN_ARGS[:] = ["-m", f"seed={seed}", "algo=sac", "env=pendulum", f"steps={steps}", "threads=1"]
        names[seed, steps] = sweep.job_dir_name(sweep.TRAIN_ARGS[1:], 0)
    sweep.TRAIN_ARGS[:] = []
    assert names == {(1, 40): "seed=1,algo=sac,env=pendulum", (0, 80): "seed=0,algo=sac,env=pendulum"}


def test_a_job_name_longer_than_a_file_name_keeps_its_start_and_a_hash():
    # a 300-character value failed each job with "File name too long" (Errno 36) as it started
    from robo_rl.commands import sweep

    sweep.TRAIN_ARGS[:] = ["-m", f"env.kwargs.x={'a' * 300}1,{'a' * 300}2,'a{'é' * 200}'"]
    try:
        names = [sweep.job_dir_name([v], 0) for v in sweep.sweep_values(sweep.TRAIN_ARGS[1])]
    finally:
        sweep.TRAIN_ARGS[:] = []
    assert [len(n.encode()) for n in names] == [255, 255, 254]  # the last: 2-byte characters, none cut in half
    assert names[0][:-13] == names[1][:-13] == "env.kwargs.x=" + "a" * 229 and names[0] != names[1]
    assert names[2].startswith("env.kwargs.x='aéé") and re.fullmatch(r".*-[0-9a-f]{12}", names[2])


def test_resume_under_m_is_refused_before_any_job(tmp_path, monkeypatch, console):
    # every job continued the one run (each failing alike here, a missing run), under a new sweep directory that
    # held no run but was printed for robo-rl compare; with a run to resume, Hydra's usage text instead
    from robo_rl.commands.train import train_main

    monkeypatch.chdir(tmp_path)
    assert train_main(["-m", "seed=0,1", "resume=runs/gone"]) == 2
    assert console.readouterr().err == ("robo-rl: error: resume=runs/gone continues one run: give it without -m; to "
                                        "continue a sweep, run it again with run_dir=<its directory> (its jobs "
                                        "resume, the unstarted ones start)\n")
    assert not (tmp_path / "runs").exists()


def test_a_sweep_into_a_run_s_directory_is_refused_before_any_job(tmp_path, monkeypatch, console):
    # its jobs went below the run (run/seed=0, ...), and the robo-rl compare runs=run it printed showed that one run
    from robo_rl.commands.train import train_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("algo: {name: sac}\n")
    assert train_main(["-m", "seed=0,1", *TINY, "steps=40", "eval.episodes=1", "eval.num_envs=1", "run_dir=run"]) == 2
    assert console.readouterr().err == ("robo-rl: error: run_dir=run holds a run (config.yaml): a sweep's run_dir= is "
                                        "the directory its jobs go under; choose a new directory (or the directory of "
                                        "the sweep to continue)\n")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["config.yaml"]


def test_an_interrupted_sweep_names_the_jobs_it_did_not_start(tmp_path, monkeypatch):
    # a Ctrl-C at step 61 of the first job (the env sends it): that job saves and stops, the others never start
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))  # tests.helpers for the subprocess
    proc = robo_rl("train", "-m", "seed=0,1,2", *TINY, "env.id=tests.helpers:robo_rl_test/NaNAfter-v0",
                   "env.kwargs.where=sigint", "env.kwargs.after=60", "steps=150", "run_dir=sweep", cwd=tmp_path,
                   check=False)
    assert proc.returncode == 130, proc.stderr
    assert re.search(r"Continue with: robo-rl train resume=\S*sweep/seed=0\n", proc.stderr)
    assert "sweep: stopped in job 1 of 3 (seed=0); not started: seed=1; seed=2; to continue the sweep (this job " \
        "resumes, finished ones are kept, the rest start): robo-rl train -m seed=0,1,2 " in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].endswith("run_dir=sweep")
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["seed=0"]
    # the printed resume= works as pasted, although Hydra's grammar reads the job's '=' as syntax (it failed
    # with a parse traceback); this env interrupts every 60 steps, so the resumed job stops again, saved
    proc = robo_rl("train", "resume=sweep/seed=0", cwd=tmp_path, check=False)
    assert proc.returncode == 130 and "resumed from" in proc.stderr, proc.stderr


def test_a_sweep_interrupted_during_a_job_s_final_evaluation_stops_after_that_job(tmp_path, monkeypatch, console):
    # the job waits for its final evaluation and save and ends complete (exit 0 for one run), but the sweep went on
    # to start the next job, exit 0, as if there had been no Ctrl-C. Here the evaluation env's copy sends the SIGINT
    # at its step 151, in the second of its two episodes: eval.every past steps= makes that the final evaluation, and
    # the training env, at 150 steps, never gets there
    import tests.helpers  # noqa: F401 - registers robo_rl_test/NaNAfter-v0
    from robo_rl.commands.train import train_main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        train_main(["-m", "seed=0,1", *TINY, "env.id=robo_rl_test/NaNAfter-v0", "env.kwargs.where=sigint",
                    "env.kwargs.after=150", "steps=150", "eval.num_envs=1", "eval.every=100000", "log.plot=false",
                    "run_dir=sweep"])
    err = console.readouterr().err
    assert stop.value.code == 130, err
    assert "SIGINT arrived after the last training step: the run is complete" in err
    assert "sweep: stopped in job 1 of 2 (seed=0); not started: seed=1; to continue the sweep (this job is complete, " \
        "finished ones are kept, the rest start)" in err
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["seed=0"]
    assert json.loads((tmp_path / "sweep" / "seed=0" / "summary.json").read_text())["status"] == "completed"


def test_a_sweep_stopped_before_its_job_s_first_checkpoint_says_the_job_starts_again(tmp_path, monkeypatch, console):
    # a Ctrl-C in the job's first seconds (imports, building envs) leaves no checkpoint: "this job resumes" was wrong,
    # continuing the sweep starts that job from step 0 (train's resume of a run without a checkpoint)
    from robo_rl.commands import train

    monkeypatch.setattr(train, "run_training", lambda cfg, run_dir, overrides: 130)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        train.train_main(["-m", "seed=0,1", *TINY, "run_dir=sweep"])
    assert stop.value.code == 130
    assert "sweep: stopped in job 1 of 2 (seed=0); not started: seed=1; to continue the sweep (this job starts again, " \
        "stopped before its first checkpoint, finished ones are kept, the rest start): robo-rl train -m " \
        in console.readouterr().err


def test_a_ctrl_c_between_two_jobs_of_a_sweep_stops_it_with_its_continue_command(tmp_path, monkeypatch, console):
    # the Ctrl-C lands while Hydra prepares the second job (names its directory), where no job's handler was installed:
    # a KeyboardInterrupt, "aborted by Ctrl-C" and no command to continue the sweep (a SIGTERM there: "nothing was
    # training")
    from robo_rl.cli import main
    from robo_rl.commands import sweep

    name = sweep.job_dir_name

    def ctrl_c_before_the_second_job(task_overrides, job_num):
        if int(job_num) == 1:
            signal.raise_signal(signal.SIGINT)
        return name(task_overrides, job_num)

    monkeypatch.setattr(sweep, "job_dir_name", ctrl_c_before_the_second_job)
    monkeypatch.chdir(tmp_path)
    args = ["train", "-m", "seed=0,1", *TINY, "steps=150", "log.plot=false", "run_dir=sweep"]
    with pytest.raises(SystemExit) as stop:
        main(args)
    err = console.readouterr().err
    assert stop.value.code == 130, err
    assert "sweep: stopped before job 2 of 2; not started: seed=1; to continue the sweep" in err
    assert err.rstrip().endswith("run_dir=sweep")
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["seed=0"]
    monkeypatch.setattr(sweep, "job_dir_name", name)
    assert main(args) == 0  # the continue command: seed=0 kept as it is, seed=1 runs
    assert "seed=0 holds this job's run: continuing it" in console.readouterr().err
    for job in ("seed=0", "seed=1"):
        assert json.loads((tmp_path / "sweep" / job / "summary.json").read_text())["status"] == "completed"


def test_two_default_named_sweeps_started_in_the_same_second_do_not_share_a_job(tmp_path, monkeypatch, capsys):
    # runs/sweep-<algo>-<task>-<time> names a sweep to the second: the second sweep took the first one's finished job
    # for a continued sweep of its own and reported that run as its result, exit 0
    import hydra._internal.hydra as hydra_internal
    from omegaconf import OmegaConf

    from robo_rl.commands.train import train_main

    setup = hydra_internal.setup_globals

    def same_second() -> None:
        setup()
        OmegaConf.register_new_resolver("now", lambda pattern: "20260101-000000", use_cache=True, replace=True)

    monkeypatch.setattr(hydra_internal, "setup_globals", same_second)
    monkeypatch.chdir(tmp_path)
    args = ["-m", "seed=0", *TINY, "steps=150"]
    assert train_main(args) == 0
    with pytest.raises(SystemExit) as stop:
        train_main(args)
    assert stop.value.code == 2
    assert "already holds a run of another sweep started in the same second" in capsys.readouterr().err


def test_a_sweep_over_env_configs_names_its_directory_by_task_ids():
    from robo_rl.commands import sweep
    from robo_rl.commands.train import register_resolvers
    from omegaconf import OmegaConf

    register_resolvers()
    sweep.TRAIN_ARGS[:] = ["-m", "env=pendulum,inverted_pendulum", "algo=sac"]
    try:
        cfg = OmegaConf.create({"d": "${robo_rl_sweep_dir:null,sac,Pendulum-v1,T}"})
        assert cfg.d == "runs/sweep-sac-Pendulum-v1+InvertedPendulum-v5-T"  # was pendulum+inverted_pendulum
    finally:
        sweep.TRAIN_ARGS[:] = []


def test_a_sweep_over_every_algorithm_and_task_names_its_directory_within_a_file_name():
    # -m 'algo=glob(*)' 'env=glob(*)' named its directory by every algorithm and task id, over 300 bytes: the first
    # job failed with "File name too long" (Errno 36), a traceback
    from omegaconf import OmegaConf

    from robo_rl.commands import sweep
    from robo_rl.commands.train import register_resolvers

    register_resolvers()
    sweep.TRAIN_ARGS[:] = ["-m", "algo=glob(*)", "env=glob(*)"]
    try:
        path = OmegaConf.create({"d": "${robo_rl_sweep_dir:null,sac,Pendulum-v1,20260101-000000}"}).d
    finally:
        sweep.TRAIN_ARGS[:] = []
    runs, name = path.split("/")
    assert runs == "runs" and len(name.encode()) == 255 and name.startswith("sweep-") and "+sac+td3-Ant-v5+" in name
    assert re.fullmatch(r"sweep-.*-[0-9a-f]{12}-20260101-000000", name)  # the time kept: sweeps still sort by it


def test_multirun_over_algorithms_shares_one_directory(tmp_path):
    # Hydra composes a sweep-level config with the default algo (ppo), which has no algo.learning_starts:
    # the override still reaches every job, and the jobs share one directory named by the swept algos
    args = [a for a in TINY if a != "algo=sac"]
    err = robo_rl("train", "-m", "algo=sac,td3", *args, "steps=120", cwd=tmp_path).stderr
    (sweep,) = (tmp_path / "runs").iterdir()
    assert sweep.name.startswith("sweep-sac+td3-Pendulum-v1-")
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["algo=sac", "algo=td3"]
    for algo in ("sac", "td3"):
        summary = json.loads((sweep / f"algo={algo}" / "summary.json").read_text())
        config = (sweep / f"algo={algo}" / "config.yaml").read_text()
        assert summary["algo"] == algo and summary["steps"] == 120 and "learning_starts: 100" in config
    assert f"robo-rl compare runs=runs/{sweep.name}" in err
    out = robo_rl("compare", f"runs=runs/{sweep.name}", cwd=tmp_path).stdout
    assert "| algo.name=sac policy.name=gaussian | 1 (0) |" in out and "| algo.name=td3 policy.name=deterministic | 1 (0) |" in out


def test_eval_writes_a_video_with_one_frame_per_step(tmp_path):
    av = pytest.importorskip("av")
    robo_rl("train", "algo=ppo", "env=inverted_pendulum", "steps=2048", "run_dir=ip", "log.tensorboard=false",
            "eval.episodes=2", cwd=tmp_path)
    out = robo_rl("eval", "run_dir=ip", "episodes=2", "video=true", cwd=tmp_path).stdout
    result = json.loads((tmp_path / "ip" / "eval.json").read_text())
    video = Path(result["video"])
    assert video.is_file() and "frames" in out
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    first_of_env0 = result["lengths"][result["env_index"].index(0)]
    assert len(frames) == result["video_frames"] == first_of_env0  # env 0's first episode, a frame per step
    assert frames[0].std() > 5  # a drawn scene, not a blank image
    # more filmed episodes than env copy 0's share (one): it keeps going until they are filmed, counting none
    robo_rl("eval", "run_dir=ip", "episodes=1", "video=true", "video_episodes=2", cwd=tmp_path)
    result = json.loads((tmp_path / "ip" / "eval.json").read_text())
    assert result["episodes"] == 1 and result["video_frames"] > result["lengths"][0] + 1
    # a file where videos/ belongs: refused in one line before any episode runs, the last eval.json kept
    import shutil

    shutil.rmtree(tmp_path / "ip" / "videos")
    (tmp_path / "ip" / "videos").write_text("not a directory")
    before = (tmp_path / "ip" / "eval.json").read_text()
    proc = robo_rl("eval", "run_dir=ip", "episodes=1", "video=true", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "videos is a file, not a directory" in proc.stderr and "eval at" not in proc.stderr
    assert (tmp_path / "ip" / "eval.json").read_text() == before


def test_help_piped_into_a_reader_that_stopped_exits_quietly():
    # `robo-rl deploy --help | head -1`: a BrokenPipeError traceback (the console script has no SIGPIPE default)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    code = "import sys; from robo_rl.cli import main; sys.exit(main(['deploy', '--help']))"
    result = subprocess.run([sys.executable, "-c", code], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write_end)
    assert result.returncode == 128 + signal.SIGPIPE and result.stderr == ""


@pytest.mark.parametrize("args, words", [
    # ~key deletions were never checked: Hydra's report (exit 1), or a traceback once the run read the key
    (["~seed"], ["~seed: robo-rl train does not delete keys", "seed=<value>"]),
    (["~policy"], ["~policy: robo-rl train does not delete keys"]),
    (["~demos.path"], ["~demos.path: robo-rl train does not delete keys"]),
    (["env.kwargs.x=1", "~env.kwargs.x"], None),  # a task keyword argument is free-form: Hydra deletes it
    (["~env.kwargs.y"], ["Could not delete from config. 'env.kwargs.y' does not exist."]),
    # a sweep without -m was Hydra's four-line "Ambiguous value" report, exit 1
    (["seed=0,1"], ["seed=0,1: a sweep", "needs -m: robo-rl train -m seed=0,1"]),
    (["seed=range(0,3)"], ["needs -m: robo-rl train -m seed=range(0,3)"]),
    (["run_dir=a,b"], ["run_dir='a,b'"]),
    (["seed=0,1", "--help"], None),  # help on one config (train_main drops the sweep; composition_problem sees it)
    # interval() was a traceback from Hydra's basic sweeper
    (["-m", "algo=sac", "algo.tau=interval(0.001,0.01)"], ["interval() needs a sampling sweeper", "algo.tau=0.001,"]),
    # -m with --cfg/--info was Hydra's ValueError traceback
    (["-m", "seed=0,1", "--cfg", "job"], ["--cfg cannot be combined with -m"]),
    (["-m", "--info"], ["--info cannot be combined with -m"]),
    (["seed=0", "--cfg", "job"], None),
    # a deletion next to a flag was left to Hydra: its report, exit 1 (the flags after the overrides, as documented)
    (["~env.kwargs.y", "--cfg", "job"], ["Could not delete from config. 'env.kwargs.y' does not exist."]),
    (["env.kwargs.y=1", "~env.kwargs.y", "--cfg", "job"], None),
    # hydra.run.dir silently won over run_dir= (the run went elsewhere, config.yaml naming hydra's)
    (["hydra.run.dir=out", "run_dir=mine"], ["hydra.run.dir=out", "use run_dir="]),
    (["-m", "seed=0,1", "hydra.sweep.dir=out"], ["use run_dir="]),
    # another launcher or sweeper: Hydra's missing-config report (exit 1), or jobs outside the sweep's bookkeeping
    (["hydra/launcher=joblib"], ["hydra/launcher=joblib: robo-rl train runs a sweep's jobs one after another"]),
    (["-m", "seed=0,1", "hydra/sweeper=optuna"], ["hydra/sweeper=optuna"]),
    (["hydra/launcher=basic"], None),
    # another config was Hydra's report (--config-name), or silently not the config checked (--config-dir)
    (["--config-name", "foo"], ["--config-name is not supported", "env.id=module:Id"]),
    (["--config-path", "/tmp"], ["--config-path is not supported", "--config-dir DIR"]),
    (["-cn", "foo"], ["-cn is not supported"]),
    # a search path of one's own was not the one composition_problem checked: --config-dir is robo-rl's way
    (["hydra.searchpath=[file:///tmp]"], ["--config-dir DIR"]),
    (["--shell-completion", "install=bash"], ["--shell-completion is not supported"]),
    # a file path for a group option: the list of options, but not what to do instead
    (["env=./my_env.yaml"], ["env= takes the name of a config in robo_rl/configs/env/, not a file path",
                             "env.kwargs.<name>"]),
    # a scalar for a list key: OmegaConf's words only
    (["policy.hidden_sizes=256"], ["policy.hidden_sizes=256: ", "A list is written policy.hidden_sizes=[256]"]),
    (["policy.hidden_sizes=abc"], ["A list is written in brackets, e.g. policy.hidden_sizes=[256,256]"]),  # not [abc]
    (["steps=abc"], ["steps=abc: Value 'abc' of type 'str' could not be converted to Integer"]),  # the key first
    # a misspelled group option: Hydra's list of them, and the one meant
    (["algo=sacc"], ["Could not find 'algo/sacc'. Available options in 'algo': ", "(did you mean algo=sac?)"]),
    # an argument that is no override was Hydra's four-line "missing EQUAL" report (or a lexer error), exit 1
    (["steps"], ["expected key=value arguments, got steps"]),
    (["-m", "interval(0,1)"], ["expected key=value arguments, got interval(0,1)"]),
    (["--info", "foo"], ["got foo"]),
    (["seed=0", "--cfg", "job", "--package", "algo"], None),  # flags' values are not overrides
    (["--info", "config"], None),
])
def test_hydra_conventions_robo_rl_does_not_follow_are_one_line(args, words):
    from robo_rl.commands.train import composition_problem

    problem = composition_problem(args)
    if words is None:
        assert problem is None, problem
    else:
        assert problem is not None and "\n" not in problem and all(w in problem for w in words), problem


@pytest.mark.parametrize("override, offered", [
    ("seed=0,1", []),  # an integer: "for a list write seed=[0,1]" and "seed='0,1'" were offered, and refused
    ("policy.hidden_sizes=256,256", ["policy.hidden_sizes=[256,256]"]),
    ("env.id=Pendulum-v1,x", ["env.id='Pendulum-v1,x'"]),
    ("env.kwargs.goal=1,2", ["env.kwargs.goal=[1,2]", "env.kwargs.goal='1,2'"]),  # free-form: either
])
def test_what_a_sweep_without_m_may_mean_instead_is_offered_only_where_the_key_takes_it(override, offered):
    from robo_rl.commands.train import composition_problem

    problem = composition_problem([override])
    assert f"needs -m: robo-rl train -m {override}" in problem, problem
    key = override.split("=", 1)[0]
    assert re.findall(rf"(?:write|it:) ({re.escape(key)}=(?:\[[^\]]*\]|'[^']*'))", problem) == offered, problem
    for advice in offered:
        assert composition_problem([advice]) is None, advice


def test_every_flag_an_unknown_flag_s_refusal_lists_is_one_robo_rl_train_takes(tmp_path):
    # the list left out --config-dir DIR, robo-rl's own flag: a mistyped --config-dr was told of no way to give one
    from robo_rl.commands.train import composition_problem, config_dir_flag
    from robo_rl.config import with_config_dir

    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "mine.yaml").write_text("id: Pendulum-v1\n")
    problem = composition_problem(["--config-dr", str(tmp_path)])
    listed = re.search(r"its flags are (.*) \(see robo-rl train --help\)$", problem)[1]
    flags = [f.strip() for f in re.split(r", | and ", listed)]
    assert "--config-dir DIR" in flags, problem
    for flag in flags:  # as train_main reads them
        env = "env=mine" if "DIR" in flag else "env=pendulum"
        args, bad = config_dir_flag([*flag.replace("DIR", str(tmp_path)).split(), env, "seed=0"])
        assert bad is None and composition_problem(with_config_dir(args)) is None, flag


def test_a_deletion_or_a_sweep_without_m_exits_2_with_one_line_and_writes_nothing(tmp_path):
    # `~policy` used to leave an empty run directory behind its traceback
    for args in (["~policy"], ["seed=0,1"], ["-m", "seed=0,1", "--cfg", "job"]):
        proc = robo_rl("train", *args, "steps=100", cwd=tmp_path, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("robo-rl: error: "), proc.stderr
    assert not (tmp_path / "runs").exists()


def test_a_sweep_over_env_configs_named_with_yaml_names_its_directory_by_task_ids():
    from robo_rl.commands import sweep
    from robo_rl.commands.train import register_resolvers
    from omegaconf import OmegaConf

    register_resolvers()
    sweep.TRAIN_ARGS[:] = ["-m", "env=pendulum.yaml,inverted_pendulum", "algo=sac"]  # Hydra reads pendulum.yaml
    try:
        cfg = OmegaConf.create({"d": "${robo_rl_sweep_dir:null,sac,Pendulum-v1,T}"})
        assert cfg.d == "runs/sweep-sac-Pendulum-v1+InvertedPendulum-v5-T"  # was pendulum.yaml+InvertedPendulum-v5
    finally:
        sweep.TRAIN_ARGS[:] = []


def test_a_sweep_s_compare_command_works_as_pasted_with_a_space_in_its_directory(tmp_path):
    import shlex

    err = robo_rl("train", "-m", "seed=0", *TINY, "steps=120", "run_dir=my sweep", cwd=tmp_path).stderr
    line = next(l for l in err.splitlines() if "side by side: robo-rl compare" in l)
    command = shlex.split(line.split("side by side: ", 1)[1])  # was runs=my sweep: two arguments
    assert command == ["robo-rl", "compare", "runs=my sweep"], line


def test_a_broken_pipe_that_is_not_stdout_s_is_an_error_not_a_quiet_exit(monkeypatch):
    # only a reader of stdout that went away ends quietly (141); a task's or robot's pipe is a failure
    from robo_rl import cli

    def lost_link(argv):
        raise BrokenPipeError("controller link lost")

    monkeypatch.setattr(cli, "_main", lost_link)
    with pytest.raises(BrokenPipeError, match="controller link lost"):
        cli.main(["eval", "run_dir=x"])


@pytest.mark.parametrize("argv, says", [
    ([], "no command given: robo-rl train|eval|export|deploy|compare"),
    (["nosuchcommand"], "unknown command 'nosuchcommand'"),
    (["train", "--nosuchflag"], "--nosuchflag: not an option of robo-rl train: settings are key=value"),
    (["train", "steps"], "expected key=value arguments, got steps"),  # was Hydra's report, exit 1
])
def test_a_missing_command_or_unknown_flag_is_one_line_exit_2(argv, says, capsys):
    from robo_rl.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err


def user_configs(root):
    """A config directory of one's own: a task (Pendulum with 100-step episodes) and a SAC preset."""
    (root / "env").mkdir(parents=True)
    (root / "env" / "my_pendulum.yaml").write_text("# shorter episodes\nid: Pendulum-v1\nmax_episode_steps: 100\n")
    (root / "algo").mkdir()
    (root / "algo" / "my_sac.yaml").write_text("defaults:\n  - sac\n  - _self_\nlearning_starts: 100\nbatch_size: 32\n")
    return root


def test_a_user_config_dir_trains_and_resumes_with_its_configs(tmp_path, monkeypatch, console):
    # --config-dir was refused: a robot's task or preset could only be typed out as overrides on every command
    from omegaconf import OmegaConf

    from robo_rl.commands.train import train_main

    monkeypatch.chdir(tmp_path)
    user_configs(tmp_path / "cfgs")
    assert train_main([*TINY, "--config-dir", "cfgs", "env=my_pendulum", "algo=my_sac", "steps=300", "run_dir=p"]) == 0
    assert "step 300/300" in console.readouterr().err
    saved = OmegaConf.load(tmp_path / "p" / "config.yaml")
    assert (saved.env.id, saved.env.max_episode_steps, saved.algo.name) == ("Pendulum-v1", 100, "sac")
    assert saved.config_dir == str(tmp_path / "cfgs")  # absolute: a resume from elsewhere finds it
    # the resume composes the command line's group choices with the run's own directory
    assert train_main(["resume=p", "steps=400", "env=my_pendulum"]) == 0
    assert "resumed from" in console.readouterr().err
    # moved away: a resume runs the saved config.yaml; choosing from the directory names it
    (tmp_path / "cfgs").rename(tmp_path / "moved")
    assert train_main(["resume=p", "steps=400", "env=my_pendulum"]) == 2
    err = console.readouterr().err
    assert f"the resumed run was made with --config-dir {tmp_path / 'cfgs'}, and config dir " in err
    assert err.count("\n") == 1
    assert train_main(["-cd", "moved", "resume=p", "steps=400", "env=my_pendulum"]) == 0
    assert "the run is already complete (400 of 400 steps)" in console.readouterr().err
    assert OmegaConf.load(tmp_path / "p" / "config.yaml").config_dir == str(tmp_path / "moved")


def test_a_sweep_over_a_user_config(tmp_path, monkeypatch, console):
    from omegaconf import OmegaConf

    from robo_rl.commands.train import train_main

    monkeypatch.chdir(tmp_path)
    user_configs(tmp_path / "cfgs")
    args = ["-m", "env=my_pendulum,pendulum", TINY[0], *TINY[2:], "--config-dir", "cfgs", "steps=150", "run_dir=sweep"]
    assert train_main(args) == 0
    assert "sweep: 2 job(s) in sweep" in console.readouterr().err
    lengths = {job: OmegaConf.load(tmp_path / "sweep" / job / "config.yaml").env.max_episode_steps
               for job in ("env=my_pendulum", "env=pendulum")}
    assert lengths == {"env=my_pendulum": 100, "env=pendulum": None}
    # run again into its directory: both jobs are continued (complete), with the user's config composed again
    assert train_main(args) == 0
    assert console.readouterr().err.count("the run is already complete (150 of 150 steps)") == 2


@pytest.mark.parametrize("layout, words", [
    (None, ["config dir {dir} does not exist"]),
    ({"cfgs": "a file"}, ["config dir {dir} is not a directory"]),
    ({"cfgs/envs/x.yaml": "id: Pendulum-v1\n"}, ["config dir {dir} holds none of robo-rl's config groups", "env/"]),
    # the packaged configs come first in Hydra's search path: a user's hopper.yaml would be silently unused
    ({"cfgs/env/hopper.yaml": "id: Pendulum-v1\n"}, ["{dir}/env/hopper.yaml has the name of a packaged config "
                                                     "(env=hopper)", "rename it"]),
    # Hydra reads .yaml files only: env=mine would be "not found" beside the file the user wrote
    ({"cfgs/env/mine.yml": "id: Pendulum-v1\n"}, ["{dir}/env/mine.yml: Hydra reads config files ending in .yaml, "
                                                  "not .yml; rename it to mine.yaml"]),
    # a user's file is checked as a packaged one: the key and the file named
    ({"cfgs/env/mine.yaml": "idd: Pendulum-v1\n"}, ["{dir}/env/mine.yaml: unknown key 'env.idd'; did you mean env.id?"]),
    ({"cfgs/env/mine.yaml": "num_envs: two\n"}, ["{dir}/env/mine.yaml: env.num_envs: Value 'two'"]),
    ({"cfgs/env/mine.yaml": "num_envs: -3\n"}, ["{dir}/env/mine.yaml: env.num_envs=-3: must be >= 1"]),
    ({"cfgs/algo/mine.yaml": "gamma: 0.9\n"}, ["{dir}/algo/mine.yaml: an algo config builds on a packaged one",
                                              "defaults: [<one of sac|td3|ppo"]),
    ({"cfgs/randomize/mine.yaml": "obs_noise_std: 0.1\n"}, ["{dir}/randomize/mine.yaml: a randomize config begins "
                                                            "with the line `# @package env.randomize`"]),
])
def test_a_bad_config_dir_or_user_config_is_one_line_before_any_work(tmp_path, monkeypatch, console, layout, words):
    from robo_rl.commands.train import train_main

    monkeypatch.chdir(tmp_path)
    for name, text in (layout or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    name = next(iter(layout or {"": ""}))
    choice = [f"{name.split('/')[1]}=mine"] if name.endswith("/mine.yaml") else []  # cfgs/<group>/mine.yaml
    try:
        code = train_main([*TINY, "--config-dir", "cfgs", *choice, "steps=300", "run_dir=r"])
    except SystemExit as exc:  # (a single run's failure is Hydra's job's exit, caught by the robo-rl script)
        code = exc.code
    assert code == 2
    err = console.readouterr().err
    assert err.startswith("robo-rl: error: ") and err.count("\n") == 1, err
    assert all(w.format(dir=tmp_path / "cfgs") in err for w in words), err
    assert not (tmp_path / "r").exists()


def test_a_head_option_a_user_policy_file_sets_is_refused_naming_the_file_before_any_work(tmp_path, monkeypatch, console):
    # checked by the head itself (not by validate): named with the file as validate's refusals are, before any env
    from robo_rl.commands.train import train_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfgs" / "policy").mkdir(parents=True)
    (tmp_path / "cfgs" / "policy" / "mine.yaml").write_text("defaults: [flow, _self_]\nsolver: rk4\n")
    args = ["algo=expo", "env=pendulum", "--config-dir", "cfgs", "policy=mine", "steps=300", "run_dir=r"]
    try:
        code = train_main(args)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = console.readouterr().err
    assert err == f"robo-rl: error: {tmp_path / 'cfgs/policy/mine.yaml'}: policy.solver='rk4': choose one of euler, midpoint\n"
    assert not (tmp_path / "r").exists()


def test_config_dir_flag_needs_a_directory(console):
    from robo_rl.commands.train import train_main

    assert train_main(["--config-dir"]) == 2
    assert "--config-dir needs a directory: --config-dir DIR" in console.readouterr().err


def test_help_lists_the_user_s_configs_too(tmp_path, monkeypatch, capsys):
    from robo_rl.commands.train import train_main

    monkeypatch.chdir(tmp_path)
    user_configs(tmp_path / "cfgs")
    assert train_main(["-cd", "cfgs", "env=my_pendulum", "--help"]) == 0
    out = capsys.readouterr().out
    assert "\nYour configs:    algo=my_sac   env=my_pendulum (--config-dir" in out  # (the path may wrap: 100 columns)
    assert f"Your configs: algo=my_sac env=my_pendulum (--config-dir {tmp_path / 'cfgs'})" in " ".join(out.split())
    assert "max_episode_steps: 100" in out  # the help's config is the one these overrides make


def test_a_sweep_s_continue_command_gives_its_config_dir(monkeypatch):
    # printed when a sweep is interrupted: the config dir as a flag, not Hydra's quoted override pasted in shell quotes
    from robo_rl.commands import sweep
    from robo_rl.commands.train import continue_command

    monkeypatch.setattr(sweep, "TRAIN_ARGS", ["-m", "env=arm,pendulum", "config_dir='/my cfgs'", "run_dir=s"])
    assert continue_command("s") == "robo-rl train -m env=arm,pendulum --config-dir '/my cfgs' run_dir=s"


def test_cfg_job_of_a_resume_prints_the_config_the_resume_runs(tmp_path, monkeypatch, console):
    # Hydra's --cfg job printed its composition of the defaults with the run's group choices: Hopper-v5, steps null,
    # and algo.batch_size=7 shown as taken, where the resume itself runs the saved config and refuses that key
    import yaml

    from robo_rl.commands.train import train_main

    monkeypatch.chdir(tmp_path)
    assert train_main([*TINY, "steps=200", "run_dir=run"]) == 0
    console.readouterr()
    assert train_main(["resume=run", "steps=300", "--cfg", "job"]) == 0
    shown = yaml.safe_load(console.readouterr().out)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert shown["env"]["id"] == "Pendulum-v1" and shown["steps"] == 300 and shown["algo"] == saved["algo"]
    assert shown["resume"] == shown["run_dir"] == "run"
    assert train_main(["resume=run", "algo.batch_size=7", "-c", "job"]) == 2
    assert "algo.batch_size cannot change on resume" in console.readouterr().err
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()) == saved  # a preview: nothing written
