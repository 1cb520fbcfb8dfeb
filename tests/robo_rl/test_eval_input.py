"""Bad input to `robo-rl eval` (and export's checkpoint=): one line naming the key, exit 2, before any work."""

import pytest
import torch

from robo_rl.build import build_env
from robo_rl.checkpoint import CheckpointError, latest_checkpoint
from robo_rl.commands.evaluate import eval_main
from robo_rl.commands.export import export_main
from robo_rl.runs import load_learner, load_run_config
from robo_rl.train import train
from tests.helpers import FAST, compose

TINY = ("env=pendulum", "steps=40", "algo.learning_starts=20", "algo.batch_size=16", "algo.critic_hidden=[16]",
        "policy.hidden_sizes=[16]", "eval.episodes=1", "eval.num_envs=1", "checkpoint.every=40", "eval.every=40",
        *FAST)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for algo in ("sac", "td3"):
        train(compose(f"algo={algo}", *TINY), root / algo)
    return root


def _eval(capsys, *args):
    code = eval_main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err):
    assert err.startswith("robo-rl: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("key", ["demos_out", "checkpoint"])
def test_a_blank_path_is_refused_not_taken_as_not_given(capsys, key):
    # demos_out= (an unset shell variable) evaluated without saving any demonstrations and without a word
    code, out, err = _eval(capsys, "run_dir=nowhere", f"{key}=")
    assert code == 2 and _one_line_error(err).startswith(f"robo-rl: error: {key}= is blank (an unset shell variable?)")
    code, out, err = _eval(capsys, "run_dir=nowhere", f"{key}=null")  # null is still "not given": on to the run
    assert code == 2 and "nowhere does not exist" in err


@pytest.mark.parametrize("device, words", [
    ("gpu", "device=gpu: must be cpu or cuda[:N]"),
    ("cuda:x", "device=cuda:x: must be cpu or cuda[:N]"),
    pytest.param("cuda", "device=cuda: CUDA is not available on this machine; use device=cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_an_unusable_device_is_refused_before_the_run_is_read(tmp_path, capsys, device, words):
    # run_dir=nowhere does not exist: the device is checked first, before anything is loaded
    code, out, err = _eval(capsys, f"run_dir={tmp_path / 'nowhere'}", f"device={device}")
    assert code == 2 and words in _one_line_error(err) and out == ""


def test_a_demos_out_that_cannot_be_written_is_refused_before_the_evaluation(tmp_path, capsys, runs):
    (tmp_path / "afile").write_text("x")
    cases = {
        str(tmp_path): "is a directory; give a file path such as",
        str(tmp_path / "afile" / "x.npz"): "afile is a file, not a directory",
        "/proc/nope/x.npz": "cannot write a file there",
    }
    for demos_out, words in cases.items():
        code, _, err = _eval(capsys, f"run_dir={runs / 'sac'}", "episodes=1", "num_envs=1", f"demos_out={demos_out}")
        assert code == 2 and f"demos_out={demos_out}: " in _one_line_error(err) and words in err, err
        assert not (runs / "sac" / "eval.json").exists()  # refused before the episodes ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no <dir>.tmp, no probe file
    # a directory that does not exist yet is fine; the check makes nothing that stays behind
    code, out, err = _eval(capsys, f"run_dir={runs / 'sac'}", "episodes=1", "num_envs=1",
                           f"demos_out={tmp_path / 'new' / 'd.npz'}")
    assert code == 0 and "demonstrations: 200 transitions" in out and (tmp_path / "new" / "d.npz").is_file()
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["d.npz"]
    (runs / "sac" / "eval.json").unlink()


def test_a_run_dir_that_does_not_exist_or_is_a_file_is_said_so(tmp_path, capsys):
    # both were "is not a robo-rl run directory (config.yaml missing)"
    code, _, err = _eval(capsys, f"run_dir={tmp_path / 'nowhere'}")
    assert code == 2 and f"{tmp_path / 'nowhere'} does not exist; give a run's directory" in _one_line_error(err)
    (tmp_path / "afile").write_text("x")
    code, _, err = _eval(capsys, f"run_dir={tmp_path / 'afile'}")
    assert code == 2 and f"{tmp_path / 'afile'} is a file, not a run's directory" in _one_line_error(err)


def test_video_episodes_without_video_is_refused(tmp_path, capsys):
    code, _, err = _eval(capsys, f"run_dir={tmp_path}", "video_episodes=5")
    assert code == 2 and "video_episodes=5 has no effect without a video: add video=true" in _one_line_error(err)


@pytest.mark.parametrize("command", ["eval", "export"])
@pytest.mark.parametrize("value, said", [("", "run_dir= is blank (an unset shell variable?)"), (" ", "run_dir= is blank (an unset shell variable?)"),
                                         ("null", "run_dir=null")])
def test_a_blank_run_dir_is_said_so(capsys, command, value, said):
    # run_dir=$RUN with RUN unset was "run_dir: Incompatible value 'None' for field of type 'str'"
    code = (eval_main if command == "eval" else export_main)([f"run_dir={value}"])
    err = capsys.readouterr().err
    assert code == 2 and f"{said}: run_dir=<dir> is required (see robo-rl {command} --help)" in _one_line_error(err)


def test_an_absurd_episode_count_is_refused_before_the_run_is_read(tmp_path, capsys):
    # episodes=1e12 ran until killed; run_dir=nowhere does not exist: the count is checked first
    code, out, err = _eval(capsys, f"run_dir={tmp_path / 'nowhere'}", "episodes=1e12")
    assert code == 2 and "episodes=1000000000000: must be between 1 and 100,000" in _one_line_error(err) and out == ""


def test_an_absurd_video_episode_count_is_refused_before_the_run_is_read(tmp_path, capsys):
    # video_episodes=1e12 filmed env copy 0 until killed (the 10M-step budget is hours of rendering), and the kill
    # left a truncated mp4 in place of the run's video; run_dir=nowhere does not exist: the count is checked first
    code, out, err = _eval(capsys, f"run_dir={tmp_path / 'nowhere'}", "video=true", "video_episodes=1e12")
    assert code == 2 and out == ""
    assert "video_episodes=1000000000000: must be between 1 and 100,000" in _one_line_error(err)


@pytest.mark.parametrize("seed, words", [
    ("1e30", "seed=1000000000000000000000000000000: must be between 0 and 2**64 - 1"),  # was torch's "Overflow when ..."
    ("-1", "seed=-1: must be between 0 and 2**64 - 1"),  # was the env's reset(seed=-1), after loading the run
])
def test_a_seed_out_of_range_is_refused_before_the_run_is_read(tmp_path, capsys, seed, words):
    code, out, err = _eval(capsys, f"run_dir={tmp_path / 'nowhere'}", f"seed={seed}")
    assert code == 2 and words in _one_line_error(err) and out == ""


def test_a_checkpoint_of_another_algorithm_is_one_line(tmp_path, capsys, runs):
    other = latest_checkpoint(runs / "td3" / "checkpoints")
    cfg = load_run_config(runs / "sac")
    env = build_env(cfg, num_envs=1)
    try:
        with pytest.raises(CheckpointError) as exc:
            load_learner(cfg, env, other)
    finally:
        env.close()
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"checkpoint {other} does not fit this run's sac learner (")
    assert "missing log_alpha" in message and "unexpected actor_target." in message
    assert f"it was saved by a td3 run ({runs / 'td3'})" in message
    # eval and export refuse another run's checkpoint before they read it (eval's result would go to this run's
    # eval.json, the export out with this run's config)
    code, _, err = _eval(capsys, f"run_dir={runs / 'sac'}", "episodes=1", "num_envs=1", f"checkpoint={other}")
    assert code == 2 and f"is not one of {runs / 'sac'}'s checkpoints" in _one_line_error(err)
    code = export_main([f"run_dir={runs / 'sac'}", f"checkpoint={other}", f"out_dir={tmp_path / 'x'}"])
    err = capsys.readouterr().err
    assert code == 2 and f"is not one of {runs / 'sac'}'s checkpoints" in _one_line_error(err)
    assert not (tmp_path / "x").exists()


def test_a_checkpoint_of_another_run_is_refused_not_reported_as_this_run_s(tmp_path, capsys, runs):
    # another seed's checkpoint fits the networks: it was evaluated and written to this run's eval.json, and
    # robo-rl compare showed that policy's return as this run's
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs / "sac", run)
    other = latest_checkpoint(runs / "sac" / "checkpoints")
    code, out, err = _eval(capsys, f"run_dir={run}", "episodes=1", "num_envs=1", f"checkpoint={other}")
    assert code == 2 and out == "" and not (run / "eval.json").exists()
    assert f"checkpoint={other} is not one of {run}'s checkpoints" in _one_line_error(err)
    own = latest_checkpoint(run / "checkpoints")  # its own, named: evaluated
    code, out, err = _eval(capsys, f"run_dir={run}", "episodes=1", "num_envs=1", f"checkpoint={own}")
    assert code == 0 and (run / "eval.json").is_file(), err


def test_another_run_s_checkpoint_is_refused_as_such_not_as_an_edited_config(tmp_path, capsys, runs):
    # the other run's config differs from this run's (here eval.episodes): eval loaded the checkpoint first and said
    # "<the other run>/config.yaml was edited since checkpoint ... was saved: put the file back", of a file never edited
    import shutil

    import yaml

    run = tmp_path / "run"
    shutil.copytree(runs / "sac", run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["eval"]["episodes"] = 2
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    other = latest_checkpoint(runs / "sac" / "checkpoints")
    code, out, err = _eval(capsys, f"run_dir={run}", "episodes=1", "num_envs=1", f"checkpoint={other}")
    assert code == 2 and f"checkpoint={other} is not one of {run}'s checkpoints" in _one_line_error(err)
    assert "was edited" not in err


def test_networks_resized_in_config_yaml_are_named_with_the_file_not_only_the_checkpoint(tmp_path, capsys, runs):
    # policy.hidden_sizes edited in config.yaml: every checkpoint "does not fit this run's sac learner", and nothing
    # said that config.yaml is what changed
    import shutil

    import yaml

    run = tmp_path / "run"
    shutil.copytree(runs / "sac", run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["policy"]["hidden_sizes"] = [24]
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    code, _, err = _eval(capsys, f"run_dir={run}", "episodes=1", "num_envs=1")
    assert code == 2 and "does not fit this run's sac learner" in _one_line_error(err)
    assert (f"; {run / 'config.yaml'} differs from the config it was trained with (policy.hidden_sizes is '[24]' in "
            "config.yaml, '[16]' in the checkpoint): edited since, or another run's checkpoint?") in err


def test_another_run_s_checkpoint_copied_in_is_skipped_for_an_older_one_of_this_run(tmp_path, capsys, runs, caplog):
    # a same-shape checkpoint of another run (another seed), newer than the run's own: eval and export stopped on it
    # with "config.yaml was edited since ...", where a resume skips it for the newest checkpoint that is the run's
    import logging
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs / "sac", run)
    train(compose("algo=sac", *TINY, "seed=7", "steps=80"), tmp_path / "other")
    own, foreign = latest_checkpoint(run / "checkpoints"), latest_checkpoint(tmp_path / "other" / "checkpoints")
    shutil.copytree(foreign, run / "checkpoints" / foreign.name)
    assert latest_checkpoint(run / "checkpoints").name == foreign.name  # the newest now
    with caplog.at_level(logging.WARNING, logger="robo_rl"):
        code, out, err = _eval(capsys, f"run_dir={run}", "episodes=1", "num_envs=1")
    assert code == 0 and f"(checkpoint step {int(own.name.split('_')[1]):,})" in out, err
    assert (f"skipping {foreign.name}: it was trained with another config than {run / 'config.yaml'} holds (seed is 0 "
            f"in config.yaml, 7 in the checkpoint): another run's checkpoint copied in?; trying {own.name}") in caplog.text
    assert export_main([f"run_dir={run}", f"out_dir={tmp_path / 'x'}"]) == 0
    capsys.readouterr()
    # with no checkpoint of its own left, the run's config.yaml is what differs: said so
    shutil.rmtree(own)
    for older in sorted((run / "checkpoints").glob("step_*")):
        if older.name != foreign.name:
            shutil.rmtree(older)
    code, _, err = _eval(capsys, f"run_dir={run}", "episodes=1", "num_envs=1")
    assert code == 2 and f"{run / 'config.yaml'} was edited since checkpoint" in _one_line_error(err)


def test_a_checkpoint_given_by_name_is_the_run_s_and_a_missing_one_lists_them(tmp_path, capsys, runs, monkeypatch):
    # checkpoint=step_... (a name, not a path from here) was "does not exist"; it is read in the run's checkpoints/
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs / "sac", run)
    own = latest_checkpoint(run / "checkpoints")
    monkeypatch.chdir(tmp_path)
    code, out, err = _eval(capsys, f"run_dir={run}", "episodes=1", "num_envs=1", f"checkpoint={own.name}")
    assert code == 0 and f"(checkpoint step {int(own.name.split('_')[1]):,})" in out, err
    code, out, err = _eval(capsys, f"run_dir={run}", "episodes=1", "checkpoint=step_0000000999")
    assert code == 2 and out == ""
    assert f"checkpoint=step_0000000999 does not exist; {run / 'checkpoints'} holds {own.name}" in _one_line_error(err)



def test_an_eval_json_that_cannot_be_written_is_refused_before_the_episodes(tmp_path, capsys, runs, monkeypatch):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs / "sac", run)
    (run / "eval.json").mkdir()
    ran = []
    monkeypatch.setattr("robo_rl.evaluation.evaluate", lambda *a, **k: ran.append(1))
    code, out, err = _eval(capsys, f"run_dir={run}", "episodes=1", "num_envs=1")
    assert code == 2 and f"{run / 'eval.json'} is not a file" in _one_line_error(err) and not ran and out == ""


def test_a_failed_eval_json_write_still_says_the_result(tmp_path, capsys, runs, monkeypatch):
    import errno
    import shutil
    from pathlib import Path

    run = tmp_path / "run"
    shutil.copytree(runs / "sac", run)
    assert _eval(capsys, f"run_dir={run}", "episodes=2", "num_envs=1")[0] == 0
    earlier = (run / "eval.json").read_text()
    write_text = Path.write_text

    def full_disk(self, text, *args, **kwargs):  # the disk fills halfway through the file
        if "eval.json" in self.name:
            write_text(self, text[: len(text) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    code, out, err = _eval(capsys, f"run_dir={run}", "episodes=1", "num_envs=1")
    assert code == 1 and out == ""
    assert "over 1 episodes, but " in _one_line_error(err) and "eval.json could not be written (No space left on device)" in err
    assert err.startswith("robo-rl: error: return -")  # Pendulum's returns are negative: the number itself is said
    # the earlier evaluation's file is whole (it was cut in half, its numbers lost), and no hidden file is left
    assert (run / "eval.json").read_text() == earlier and sorted(p.name for p in run.glob("*eval.json*")) == ["eval.json"]


def test_sampling_a_head_that_does_not_sample_is_warned_of(tmp_path, capsys, runs, caplog):
    # TD3's head acts deterministically whatever deterministic= says: training warned of eval.deterministic=false,
    # robo-rl eval said "(deterministic)" without a word
    import logging
    import shutil

    for algo in ("td3", "sac"):  # (copies: eval writes eval.json into the run)
        shutil.copytree(runs / algo, tmp_path / algo)
    run = tmp_path / "td3"
    with caplog.at_level(logging.WARNING, logger="robo_rl"):
        code, out, err = _eval(capsys, f"run_dir={run}", "deterministic=false", "episodes=1", "num_envs=1")
    assert code == 0, err
    assert [r.getMessage() for r in caplog.records] == [
        "deterministic=false: the deterministic head has no distribution to sample, so the episodes act deterministically"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robo_rl"):
        assert _eval(capsys, f"run_dir={tmp_path / 'sac'}", "deterministic=false", "episodes=1", "num_envs=1")[0] == 0
    assert caplog.records == []  # SAC's head samples


def test_a_small_return_is_printed_with_its_digits(tmp_path, capsys):
    import json
    import re

    # ContactMaze's returns are ~0.1: one fixed decimal printed "return -0.0 ± 0.0"
    train(compose("algo=sac", "env=contact_maze", *TINY[1:]), tmp_path / "maze")
    code, out, err = _eval(capsys, f"run_dir={tmp_path / 'maze'}", "episodes=2", "num_envs=2")
    assert code == 0, err
    saved = json.loads((tmp_path / "maze" / "eval.json").read_text())
    mean, std = (float(x) for x in re.search(r"return (-?[\d.]+) ± ([\d.]+) over", out).groups())
    assert saved["return_mean"] != 0 and mean == pytest.approx(saved["return_mean"], rel=5e-3)
    assert std == pytest.approx(saved["return_std"], rel=5e-3, abs=5e-3 * abs(saved["return_mean"]))


def test_a_sweep_directory_given_as_a_run_names_its_jobs(tmp_path, capsys, runs):
    # resume=, eval's or export's run_dir= of a -m sweep's directory said only "config.yaml missing"
    import shutil

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    shutil.copytree(runs / "sac", sweep / "seed=0")
    with pytest.raises(FileNotFoundError, match=rf"{sweep} is a -m sweep's directory, not one run: give one of its "
                                                rf"jobs' directories \({sweep / 'seed=0'}\), or continue"):
        load_run_config(sweep)
    code, out, err = _eval(capsys, f"run_dir={sweep}")
    assert code == 2 and "is a -m sweep's directory" in _one_line_error(err)


def test_a_run_with_safety_filters_is_evaluated_by_hand_as_robo_rl_eval_does(tmp_path, capsys):
    # README's Python recipe (load_run, build_env(cfg, randomize=False), evaluate) left the run's filters out: a
    # run trained behind safety=box (actions clipped to [-1, 1] on Pendulum's [-2, 2]) scored another return by
    # hand than robo-rl eval and its training-time evaluations gave, with nothing said
    import json

    from robo_rl.evaluation import evaluate
    from robo_rl.runs import load_run

    run = tmp_path / "run"
    train(compose("algo=sac", *TINY, "safety=box"), run)
    code, _, err = _eval(capsys, f"run_dir={run}", "episodes=2", "num_envs=2", "seed=7")
    assert code == 0, err
    policy, cfg = load_run(run)
    env = build_env(cfg, num_envs=2, randomize=False, safety=True)
    try:
        by_hand = evaluate(policy, env, 2, seed=7)["returns"]
    finally:
        env.close()
    assert by_hand == json.loads((run / "eval.json").read_text())["returns"]
    raw = build_env(cfg, num_envs=2, randomize=False)  # the filters matter here: without them, another return
    try:
        assert evaluate(policy, raw, 2, seed=7)["returns"] != by_hand
    finally:
        raw.close()


def test_a_checkpoint_pruned_by_the_training_run_while_it_loads_gives_way_to_the_newest(tmp_path, capsys, monkeypatch):
    # a run still training with checkpoint.keep=1 saves step_40 and deletes step_20 between eval choosing step_20 and
    # reading it: eval stopped with "checkpoint .../step_0000000020 does not exist" (or "is incomplete", half deleted)
    import json
    import shutil

    import robo_rl.checkpoint as checkpoint_module
    from robo_rl.runs import load_run

    run = tmp_path / "run"
    train(compose("algo=sac", *TINY, "checkpoint.every=20", "checkpoint.keep=2"), run)
    ckpts = run / "checkpoints"
    shutil.move(ckpts / "step_0000000040", tmp_path / "saved_later")  # not yet saved when eval chooses
    real_load = checkpoint_module.load_checkpoint
    loads = []

    def training_saves_and_prunes(path, *args, **kwargs):
        if not loads:  # the training process, between eval's choice and its read
            shutil.move(tmp_path / "saved_later", ckpts / "step_0000000040")
            shutil.rmtree(ckpts / "step_0000000020")
        loads.append(path.name)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "load_checkpoint", training_saves_and_prunes)
    code, out, err = _eval(capsys, f"run_dir={run}", "episodes=1", "num_envs=1")
    assert code == 0 and "(checkpoint step 40)" in out, err
    assert loads == ["step_0000000020", "step_0000000040"]
    assert json.loads((run / "eval.json").read_text())["checkpoint_step"] == 40
    # the Python API's load_run alike
    shutil.copytree(ckpts / "step_0000000040", ckpts / "step_0000000020")  # (a stand-in: any older checkpoint)
    shutil.move(ckpts / "step_0000000040", tmp_path / "saved_later")
    loads.clear()
    load_run(run)
    assert loads == ["step_0000000020", "step_0000000040"]


def test_eval_leaves_a_save_in_progress_of_a_process_it_cannot_see_alone(tmp_path, capsys):
    # a run training on another host (or in another container) over a shared filesystem: its save in progress is
    # .tmp-step_X-<its pid>, a PID that is no process here. eval tidied checkpoints/ as a resume does and deleted it
    # as a dead process's, under the training process writing it
    import shutil

    from robo_rl.runs import load_run

    run = tmp_path / "run"
    train(compose("algo=sac", *TINY), run)
    pid = 2**22 + 1  # above Linux's largest PID (pid_max <= 2**22): no process here
    saving = run / "checkpoints" / f".tmp-step_0000000080-{pid}"
    saving.mkdir()
    (saving / "state.safetensors").write_bytes(b"being written")
    shutil.copytree(run / "checkpoints" / "step_0000000040", run / "checkpoints" / f".old-step_0000000040-{pid}")
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    code, out, err = _eval(capsys, f"run_dir={run}", "episodes=1", "num_envs=1")
    assert code == 0 and "(checkpoint step 40)" in out, err
    load_run(run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_a_config_yaml_edited_since_the_checkpoint_is_refused_by_eval_and_export(tmp_path, capsys, runs):
    # the weights were trained on Pendulum's g=10: evaluated with g=30 from an edited config.yaml they gave another
    # return as the run's, and an export wrote task_kwargs {g: 30} for deploy to build (a resume refuses the edit)
    import shutil

    run = tmp_path / "sac"
    shutil.copytree(runs / "sac", run)
    original = (run / "config.yaml").read_text()
    assert "  kwargs: {}\n" in original
    (run / "config.yaml").write_text(original.replace("  kwargs: {}\n", "  kwargs: {g: 30.0}\n"))
    words = (f"{run / 'config.yaml'} was edited since checkpoint {run / 'checkpoints' / 'step_0000000040'} was saved: "
             "env.kwargs is {'g': 30.0} in config.yaml, {} in the checkpoint; the weights act with the config they were "
             "trained with: put the file back as it was")
    code, out, err = _eval(capsys, f"run_dir={run}", "episodes=1", "num_envs=1")
    assert code == 2 and out == "" and _one_line_error(err) == f"robo-rl: error: {words}\n"
    assert not (run / "eval.json").exists()
    assert export_main([f"run_dir={run}", "format=torchscript"]) == 2
    assert _one_line_error(capsys.readouterr().err) == f"robo-rl: error: {words}\n"
    assert not (run / "export").exists()
    # keys a resume may change (steps, cadences) and the device it acts on are no edit
    (run / "config.yaml").write_text(original.replace("steps: 40\n", "steps: 80\n").replace("every: 40\n", "every: 20\n"))
    assert (run / "config.yaml").read_text().count("every: 20\n") >= 2
    code, out, err = _eval(capsys, f"run_dir={run}", "episodes=1", "num_envs=1")
    assert code == 0 and (run / "eval.json").exists(), err


def test_a_newest_checkpoint_that_does_not_fit_is_skipped_for_an_older_one_as_a_resume_does(tmp_path, capsys, runs):
    # another run's checkpoint copied in as the newest verifies (its files match its manifest) but does not load into
    # this run's learner: a resume fell back past it to the newest that fits, eval and export stopped on it
    import json
    import logging
    import shutil

    from tests.helpers import robo_rl_records

    run = tmp_path / "run"
    shutil.copytree(runs / "sac", run)
    own = latest_checkpoint(run / "checkpoints")
    odd = run / "checkpoints" / "step_0000000080"
    shutil.copytree(latest_checkpoint(runs / "td3" / "checkpoints"), odd)
    assert latest_checkpoint(run / "checkpoints") == odd
    with robo_rl_records(logging.WARNING) as records:
        code, _, _ = _eval(capsys, f"run_dir={run}", "episodes=1", "num_envs=1")
    warned = "\n".join(r.getMessage() for r in records)
    assert code == 0 and f"skipping {odd.name}: checkpoint {odd} does not fit this run's sac learner (" in warned
    assert "missing log_alpha" in warned and warned.endswith(f"; trying {own.name}")
    assert json.loads((run / "eval.json").read_text())["checkpoint"] == str(own)
    with robo_rl_records(logging.WARNING) as records:
        code = export_main([f"run_dir={run}", f"out_dir={tmp_path / 'export'}"])
    capsys.readouterr()
    assert code == 0 and [r.getMessage() for r in records] == [warned]
    assert json.loads((tmp_path / "export" / "policy.json").read_text())["source"]["checkpoint"] == str(own)
    # named with checkpoint=, it is refused as before: one line, exit 2
    code, _, err = _eval(capsys, f"run_dir={run}", "episodes=1", "num_envs=1", f"checkpoint={odd.name}")
    assert code == 2 and f"checkpoint {odd} does not fit this run's sac learner" in _one_line_error(err)


def test_eval_names_num_envs_beyond_the_episodes(tmp_path, capsys):
    # num_envs=5 with episodes=2 built 2 copies and said nothing; at the default (10 of 10, or fewer episodes) it is quiet
    import logging

    from tests.helpers import robo_rl_records

    for args, said in ((["num_envs=5", "episodes=2"], ["num_envs=5: an evaluation steps at most one copy per episode, "
                                                       "so episodes=2 builds 2"]),
                       (["episodes=2"], []), (["num_envs=2", "episodes=2"], [])):
        with robo_rl_records(logging.WARNING) as records:
            assert eval_main([f"run_dir={tmp_path / 'nowhere'}", *args]) != 0  # (no run there: only the options count)
        assert [r.getMessage() for r in records] == said
