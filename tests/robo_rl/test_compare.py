"""`robo-rl compare` on run directories written here (config.yaml, summary.json, metrics.csv as a run writes them)."""

import json
from pathlib import Path

import numpy as np
import pytest

from robo_rl.cli import main
from robo_rl.compare import compare, mean_curve, table, write


def write_run(path, seed, final, curve, algo="sac", lr=3e-4, status="completed", summary=True, progress=10.0,
              env="Hopper-v5", env_threads=0, compile_=False):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(
        f"algo:\n  name: {algo}\n  lr: {lr}\n  hidden: [256, 256]\nenv:\n  id: {env}\n  threads: {env_threads}\n"
        f"seed: {seed}\nrun_dir: {path}\nthreads: null\ncompile: {str(compile_).lower()}\nlog:\n  progress_seconds: {progress}\n")
    rows = ["step,wall_time,rollout/ep_return_mean,eval/return_mean,eval/return_std"]
    for step, value in curve:
        rows.append(f"{step},1.0,{value / 2},,")
        rows.append(f"{step},1.0,,{value},1.0")
    (path / "metrics.csv").write_text("\n".join(rows) + "\n")
    if summary:
        (path / "summary.json").write_text(json.dumps({
            "status": status, "algo": algo, "env": env, "seed": seed, "steps": curve[-1][0],
            "wall_time_s": 60.0 * (seed + 1), "steps_per_s": 100.0, "final_eval_return_mean": final,
            "best_eval_return_mean": max(v for _, v in curve)}))


def test_seeds_group_and_settings_separate(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "lr=0.0003,seed=0", 0, 300.0, [(1000, 100.0), (2000, 300.0)])
    write_run(sweep / "lr=0.0003,seed=1", 1, 500.0, [(1000, 200.0), (2000, 500.0)], progress=120.0,
              env_threads=1, compile_=True)  # logging, threads, compile: same group
    write_run(sweep / "lr=0.001,seed=0", 0, 50.0, [(1000, 80.0), (2000, 50.0)], lr=1e-3)
    result = compare([sweep])
    assert result["runs"] == 3
    by_label = {g["label"]: g for g in result["groups"]}
    assert set(by_label) == {"algo.lr=0.0003", "algo.lr=0.001"}
    g = by_label["algo.lr=0.0003"]
    assert [r["seed"] for r in g["runs"]] == [0, 1]
    assert g["final_eval_return"]["mean"] == pytest.approx(400.0) and g["final_eval_return"]["std"] == pytest.approx(100.0)
    assert g["best_eval_return"]["mean"] == pytest.approx(400.0)
    assert g["curve"] == {"step": [1000.0, 2000.0], "mean": [150.0, 400.0], "min": [100.0, 300.0], "max": [200.0, 500.0]}
    # explicit grouping pools the two settings
    pooled = compare([sweep], group_by=["algo.name"])["groups"]
    assert len(pooled) == 1 and len(pooled[0]["runs"]) == 3 and pooled[0]["label"] == "algo.name=sac"
    # the training-episode curve instead of the evaluations
    rollout = compare([sweep], curve="rollout")["groups"]
    assert {tuple(g["curve"]["mean"]) for g in rollout} == {(75.0, 200.0), (40.0, 25.0)}


def test_copies_of_one_run_are_said_to_share_a_seed(tmp_path):
    # five copies of one run beside it were six seeds with std 0, without a word
    import shutil

    write_run(tmp_path / "a", 0, 300.0, [(1000, 100.0), (2000, 300.0)])
    shutil.copytree(tmp_path / "a", tmp_path / "a-copy")
    write_run(tmp_path / "b", 1, 500.0, [(1000, 200.0), (2000, 500.0)])
    result = compare([tmp_path])
    assert len(result["groups"]) == 1 and len(result["groups"][0]["runs"]) == 3
    assert [w for w in result["warnings"] if "share seed" in w] == [
        f"group {result['groups'][0]['label']}: 2 runs share seed 0 ({tmp_path / 'a'}, {tmp_path / 'a-copy'}): copies "
        "of one run? each counts as a seed in the group's mean and std"]
    # pooled by group_by=, runs of other settings may share a seed (the lr sweep's seed 0): nothing said
    write_run(tmp_path / "c", 0, 50.0, [(1000, 80.0), (2000, 50.0)], lr=1e-3)
    pooled = compare([tmp_path / "b", tmp_path / "c", tmp_path / "a"], group_by=["algo.name"])
    assert len(pooled["groups"][0]["runs"]) == 3 and not [w for w in pooled["warnings"] if "share seed" in w]


def test_a_failed_run_is_named_not_averaged_and_a_comma_job_directory_is_one_run(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    write_run(sweep / "algo=sac,seed=0", 0, 300.0, [(1000, 100.0), (2000, 300.0)])
    # a NaN at step 1200: its last evaluation (step 1000) is no final result to average with a finished run's
    write_run(sweep / "algo=sac,seed=1", 1, 50.0, [(1000, 50.0)], status="failed: non-finite reward at step 1,200")
    write_run(sweep / "algo=sac,seed=2", 2, None, [(1000, 80.0)], summary=False)  # still running
    (g,) = compare([sweep])["groups"]
    assert g["final_eval_return"]["mean"] == pytest.approx((300.0 + 80.0) / 2)  # the running one: its latest
    assert "| sac Hopper-v5 (1 failed (seed 1), 1 not completed (seed 2)) | 3 (0, 1, 2) | 190.0 ± 110.0 | 300, failed, 80 |" in table(
        compare([sweep]))
    # a sweep job's directory (its name holds a comma) is one run, not two (runs=a,b lists)
    assert main(["compare", f"runs={sweep / 'algo=sac,seed=0'}", f"out_dir={tmp_path / 'one'}"]) == 0
    assert json.loads((tmp_path / "one" / "compare.json").read_text())["runs"] == 1
    # and a list of them is a list of runs, next to a plain directory
    write_run(tmp_path / "other", 3, 10.0, [(1000, 10.0)])
    jobs = ",".join(str(sweep / f"algo=sac,seed={s}") for s in (0, 1)) + f",{tmp_path / 'other'}"
    assert main(["compare", f"runs={jobs}", f"out_dir={tmp_path / 'two'}"]) == 0
    assert json.loads((tmp_path / "two" / "compare.json").read_text())["runs"] == 3


def test_patterns_expand_to_the_directories_they_match(tmp_path):
    write_run(tmp_path / "sweep-a" / "seed=0", 0, 1.0, [(10, 1.0)])
    write_run(tmp_path / "sweep-b" / "seed=0", 1, 3.0, [(10, 3.0)])
    (g,) = compare([tmp_path / "sweep-*"])["groups"]
    assert g["final_eval_return"]["mean"] == 2.0 and len(g["runs"]) == 2
    with pytest.raises(FileNotFoundError, match="no directory matches"):
        compare([tmp_path / "nothing-*"])
    # a runs tree kept under a folder that happens to be called export/ is still searched
    write_run(tmp_path / "export" / "sweep" / "seed=0", 0, 5.0, [(10, 5.0)])
    assert compare([tmp_path / "export"])["runs"] == 1


def test_a_directory_whose_name_holds_brackets_is_that_directory_not_a_pattern(tmp_path, capsys, monkeypatch):
    # a sweep over lists (-m 'policy.hidden_sizes=[64],[256]') names its jobs with brackets, run_dir='sw[1]' its own
    # directory: read as patterns they matched no directory, or another one (sw1), and the sweep's printed
    # `robo-rl compare 'runs=sw[1]'` failed with "no directory matches"
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "sw[1]" / "policy.hidden_sizes=[64]", 0, 1.0, [(10, 1.0)])
    write_run(tmp_path / "sw[1]" / "policy.hidden_sizes=[256]", 1, 3.0, [(10, 3.0)])
    write_run(tmp_path / "sw1" / "seed=0", 2, 5.0, [(10, 5.0)])  # what the pattern sw[1] matches
    (run,) = compare(["sw[1]/policy.hidden_sizes=[64]"])["groups"][0]["runs"]
    assert run["seed"] == 0
    assert main(["compare", "runs='sw[1]'"]) == 0
    assert "| sac Hopper-v5 | 2 (0, 1) | 2.00 ± 1.00 | 1.00, 3.00 |" in capsys.readouterr().out
    assert (tmp_path / "sw[1]" / "compare.json").is_file() and not (tmp_path / "sw1" / "compare.json").exists()


def test_the_config_dir_a_run_read_its_presets_from_does_not_separate_groups(tmp_path):
    # config.yaml records config_dir (absolute) for `robo-rl train --config-dir DIR`: seeds of one setting, run with
    # and without it (or from a copy of DIR elsewhere), were split into groups labelled config_dir=None and config_dir=DIR
    for seed, config_dir in ((0, "null"), (1, "/home/me/presets"), (2, "/mnt/copy/presets")):
        write_run(tmp_path / f"s{seed}", seed, 10.0 * seed, [(10, 10.0 * seed)])
        with (tmp_path / f"s{seed}" / "config.yaml").open("a") as f:
            f.write(f"config_dir: {config_dir}\n")
    (g,) = compare([tmp_path])["groups"]
    assert g["label"] == "sac Hopper-v5" and [r["seed"] for r in g["runs"]] == [0, 1, 2]
    write_run(tmp_path / "lr", 3, 1.0, [(10, 1.0)], lr=1e-3)  # a setting that differs is still named, config_dir not
    assert sorted(g["label"] for g in compare([tmp_path])["groups"]) == ["algo.lr=0.0003", "algo.lr=0.001"]


def test_labels_spell_values_as_the_config_does_and_name_a_filter_chain_by_its_types(tmp_path):
    # a group was labelled safety.passivity_aware=False and safety.filters=[{"type": "box", "low": -1.0, ...}, ...]
    # (hundreds of characters of JSON)
    for name, aware, filters in (("a", "false", '[{type: box, low: -1.0, high: 1.0}, {type: rate, max_delta: 0.1}]'),
                                 ("b", "true", "[]")):
        write_run(tmp_path / name, 0, 1.0, [(1000, 1.0)])
        with (tmp_path / name / "config.yaml").open("a") as f:
            f.write(f"safety:\n  passivity_aware: {aware}\n  filters: {filters}\n")
    labels = sorted(g["label"] for g in compare([tmp_path / "a", tmp_path / "b"])["groups"])
    assert labels == ["safety.filters=[] safety.passivity_aware=true",
                      "safety.filters=box+rate safety.passivity_aware=false"]


def test_keys_implied_by_the_algorithm_stay_out_of_labels(tmp_path):
    write_run(tmp_path / "a", 0, 1.0, [(10, 1.0)], algo="sac", lr=3e-4)
    write_run(tmp_path / "b", 0, 2.0, [(10, 2.0)], algo="td3", lr=1e-3)
    labels = [g["label"] for g in compare([tmp_path / "a", tmp_path / "b"])["groups"]]
    assert labels == ["algo.name=sac", "algo.name=td3"]  # algo.lr differs only with the algorithm
    config = compare([tmp_path])["groups"][0]["config"]  # (and the keys in which their schemas' defaults differ)
    assert {k: config[k] for k in ("algo.lr", "algo.name")} == {"algo.lr": 3e-4, "algo.name": "sac"}


def test_keys_implied_by_the_task_stay_out_of_labels(tmp_path):
    # e.g. a learner's settings for a task (TASK_DEFAULTS): named by env.id already
    write_run(tmp_path / "a", 0, 1.0, [(10, 1.0)], env="Hopper-v5", lr=0.99)
    write_run(tmp_path / "b", 0, 2.0, [(10, 2.0)], env="Swimmer-v5", lr=0.9999)
    labels = [g["label"] for g in compare([tmp_path])["groups"]]
    assert labels == ["env.id=Hopper-v5", "env.id=Swimmer-v5"]
    write_run(tmp_path / "c", 0, 3.0, [(10, 3.0)], env="Swimmer-v5", lr=0.99)  # the same task at another value
    labels = [g["label"] for g in compare([tmp_path])["groups"]]
    assert labels == ["env.id=Hopper-v5 algo.lr=0.99", "env.id=Swimmer-v5 algo.lr=0.9999", "env.id=Swimmer-v5 algo.lr=0.99"]
    assert not compare([tmp_path])["warnings"]
    # group_by= without env.id pools the tasks: one mean of returns on different scales, said so
    pooled = compare([tmp_path], group_by="algo.name")
    assert pooled["warnings"] == ["group algo.name=sac: its runs are on 2 tasks (Hopper-v5, Swimmer-v5), whose returns "
                                  "its means average together; add env.id to group_by= to compare each task's runs"]


def test_unfinished_runs_are_shown_from_their_metrics(tmp_path):
    write_run(tmp_path / "done", 0, 10.0, [(100, 5.0), (200, 10.0)])
    write_run(tmp_path / "running", 1, 0.0, [(100, 7.0)], summary=False)
    (g,) = compare([tmp_path])["groups"]
    statuses = [r["status"] for r in g["runs"]]
    assert statuses[0] == "completed" and statuses[1].startswith("no summary.json")
    assert [r["final_eval_return"] for r in g["runs"]] == [10.0, 7.0]  # its latest evaluation
    assert g["curve"]["step"] == [100.0]  # only the steps every run has reached


def test_a_run_without_a_summary_shows_the_steps_and_wall_time_its_metrics_reached(tmp_path, capsys, monkeypatch):
    # a run in progress (or killed before its summary.json) showed '-' for env steps, wall time and steps/s, and its
    # group's means were of the finished runs only, although its metrics.csv has its latest step and wall time
    write_run(tmp_path / "done", 0, 10.0, [(100, 5.0), (200, 10.0)])  # summary: 200 steps, 60 s, 100 steps/s
    write_run(tmp_path / "running", 1, None, [(100, 7.0)], summary=False)
    (tmp_path / "running" / "metrics.csv").write_text(
        "step,wall_time,rollout/ep_return_mean,eval/return_mean\n100,2.0,3.0,\n100,2.0,,7.0\n150,3.0,4.0,\n")
    (tmp_path / "running" / "eval.json").write_text(json.dumps(  # evaluated, then resumed: now further on
        {"return_mean": 7.0, "return_std": 0.0, "episodes": 1, "deterministic": True, "checkpoint_step": 100}))
    result = compare([tmp_path])
    (g,) = result["groups"]
    assert [(r["steps"], r["wall_time_s"], r["steps_per_s"]) for r in g["runs"]] == [(200, 60.0, 100.0), (150, 3.0, 50.0)]
    assert g["steps"]["mean"] == 175.0 and g["wall_time_s"]["mean"] == 31.5 and g["steps_per_s"]["mean"] == 75.0
    assert "but the run has since trained to step 150" in result["warnings"][0]
    # a run still training has no final policy yet (the message once said so of any run)
    assert result["warnings"][0].endswith("evaluates its newest checkpoint (the run has not completed)")
    assert "| sac Hopper-v5 (1 not completed (seed 1)) | 2 (0, 1) |" in table(result)
    assert "| 150-200 | 0:31 | 75 |" in table(result)
    # its metrics are read as a run writes them: a wall time that is not one names the file and line
    (tmp_path / "running" / "metrics.csv").write_text("step,wall_time,eval/return_mean\n100,2.0,7.0\n150,abc,\n")
    with pytest.raises(ValueError, match=r"running/metrics\.csv: line 3 \(step 150\): wall_time is 'abc', not a number"):
        compare([tmp_path])


def test_curves_on_different_steps_are_interpolated():
    c = mean_curve([[(0, 0.0), (10, 10.0)], [(0, 0.0), (4, 8.0), (10, 8.0)]])
    assert c["step"] == [0.0, 4.0, 10.0] and c["mean"] == [0.0, 6.0, 9.0]  # every run's steps: 4 is the second's
    c = mean_curve([[(0, 0.0), (5, 10.0), (10, 20.0)], [(0, 0.0), (10, 10.0)]])
    np.testing.assert_allclose(c["mean"], [0.0, 7.5, 15.0])
    assert mean_curve([[], []]) is None


def test_cli_writes_the_table_json_and_plot(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for seed in (0, 1, 2):
        write_run(tmp_path / "sweep" / f"seed={seed}", seed, 100.0 * (seed + 1), [(1000, 10.0), (2000, 100.0 * (seed + 1))])
    assert main(["compare", "runs=sweep"]) == 0
    out = capsys.readouterr().out
    assert "| sac Hopper-v5 | 3 (0, 1, 2) | 200.0 ± 81.6 | 100, 200, 300 |" in out
    assert "3 runs in 1 group(s)" in out
    for name in ("compare.json", "compare.md", "compare.png"):
        assert (tmp_path / "sweep" / name).stat().st_size > 0
    assert json.loads((tmp_path / "sweep" / "compare.json").read_text())["groups"][0]["steps"]["mean"] == 2000
    assert main(["compare", "runs=[sweep/seed=0,sweep/seed=1]", "out_dir=cmp"]) == 0
    assert "2 runs in 1 group(s)" in capsys.readouterr().out and (tmp_path / "cmp" / "compare.png").is_file()
    # runs evaluated with `robo-rl eval` (eval.json) get a column: the mean over the runs that have one
    for seed, ret in ((0, 90.0), (2, 110.0)):
        (tmp_path / "sweep" / f"seed={seed}" / "eval.json").write_text(json.dumps(
            {"return_mean": ret, "return_std": 3.0, "episodes": 100, "deterministic": True, "checkpoint_step": 2000}))
    assert main(["compare", "runs=sweep"]) == 0
    out = capsys.readouterr().out
    assert "`robo-rl eval` return (runs)" in out and "| 100.0 ± 10.0 (2) |" in out
    # an eval.json older than the run (resumed after `robo-rl eval`) is still shown, with a note
    (tmp_path / "sweep" / "seed=1" / "eval.json").write_text(json.dumps(
        {"return_mean": 50.0, "return_std": 3.0, "episodes": 10, "deterministic": True, "checkpoint_step": 1000}))
    assert main(["compare", "runs=sweep"]) == 0
    captured = capsys.readouterr()
    assert "seed=1/eval.json: evaluates the checkpoint at step 1,000, but the run has since trained to step 2,000" \
        in captured.out + captured.err
    (tmp_path / "sweep" / "seed=1" / "eval.json").unlink()
    # a pattern matching one sweep writes into that sweep, not into a new directory named after the pattern
    assert main(["compare", "runs=swe*"]) == 0
    assert not (tmp_path / "swe*").exists() and "sweep/compare.json" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["runs=nowhere"], "runs=nowhere: no such directory"),
    (["runs=empty"], "runs=empty: neither a run directory nor a directory holding runs"),
    (["runs=sweep", "group_by=algo.bogus"], "group_by: no run has the key(s) algo.bogus"),
    (["runs=sweep", "curve=loss"], "curve=loss: expected one of eval, rollout"),
    (["runs=sweep", "colour=red"], "colour"),
    (["runs=bad"], "bad/summary.json: not valid JSON"),
    ([], "runs=<dir> is required"),
    (["runs="], "runs= names no run"),
    (["runs=afile"], "runs=afile: a file, not a run directory"),
    (["runs=sweep", "out_dir=afile"], "out_dir=afile: afile exists and is not a directory"),
    (["runs=sweep", "out_dir=afile/out"], "afile is a file, so no directory can be made under it"),
])
def test_bad_input_fails_with_the_problem_named(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    write_run(tmp_path / "sweep" / "seed=0", 0, 1.0, [(10, 1.0)])
    write_run(tmp_path / "bad", 0, 1.0, [(10, 1.0)])
    (tmp_path / "bad" / "summary.json").write_text('{"status": "comp')
    (tmp_path / "afile").write_text("x")
    assert main(["compare", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "sweep" / "compare.json").exists()


@pytest.mark.parametrize("file, content, message", [
    ("summary.json", '{"final_eval_return_mean": "high"}', "summary.json: final_eval_return_mean is 'high', expected a number"),
    ("summary.json", "[]", "summary.json: expected a JSON object, found a list"),
    ("eval.json", "[1, 2]", "eval.json: expected a JSON object, found a list"),
    ("config.yaml", "- a\n- b\n", "config.yaml: not a run config (a list, not a mapping of keys)"),
    ("metrics.csv", b"\xff\xfe\x00bad", "metrics.csv: not a readable metrics file"),
    ("metrics.csv", "step,eval/return_mean\n10,1.0\nnan,2.0\n", "metrics.csv: line 3: a row with step 'nan'"),
    ("metrics.csv", "step,eval/return_mean\n1e400,2.0\n", "metrics.csv: line 2: a row with step '1e400'"),
    ("metrics.csv", "wall_time,eval/return_mean\n1.0,2.0\n", "metrics.csv: not a metrics file a run writes (no 'step' column"),
    ("metrics.csv", "step,eval/return_mean\n10,\x00-5\n", "metrics.csv: line 2 (step 10): eval/return_mean is '\\x00-5', not a number"),
    ("summary.json", '{"steps": "300"}', "summary.json: steps is '300', expected a number"),
    ("summary.json", '{"seed": [0]}', "summary.json: seed is [0], expected a number"),
    ("eval.json", '{"return_mean": 1.0, "deterministic": "yes"}', "eval.json: deterministic is 'yes', expected true or false"),
    ("config.yaml", "", "config.yaml: not a run config (no algo.name or env.id in it"),
    ("config.yaml", "hello\n", "config.yaml: not a run config (no algo.name or env.id in it"),
])
def test_a_damaged_file_in_a_run_is_named_not_half_read(tmp_path, file, content, message):
    write_run(tmp_path / "run", 0, 1.0, [(10, 1.0)])
    target = tmp_path / "run" / file
    target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    with pytest.raises(ValueError) as exc:
        compare([tmp_path / "run"])
    assert str(tmp_path / "run" / file) in str(exc.value) and message in str(exc.value)


def _strict_json(text):
    """compare.json as strict JSON: a bare NaN/Infinity fails the test."""
    def refuse(constant):
        raise AssertionError(f"compare.json holds a bare {constant}")
    return json.loads(text, parse_constant=refuse)


def test_nan_in_a_summary_is_not_measured_said_so_and_compare_json_stays_valid(tmp_path, capsys, monkeypatch):
    write_run(tmp_path / "run", 0, float("nan"), [(10, 1.0), (20, 3.0)])
    write_run(tmp_path / "other", 1, 5.0, [(10, 2.0), (20, 5.0)])
    summary = json.loads((tmp_path / "other" / "summary.json").read_text())
    (tmp_path / "other" / "summary.json").write_text(json.dumps({**summary, "wall_time_s": float("inf")}))
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "runs=run,other", "out_dir=out"]) == 0
    out, err = capsys.readouterr()
    assert (f"robo-rl: warning: {tmp_path / 'run' / 'summary.json'}: final_eval_return_mean is NaN or infinite; "
            "shown as not measured ('-')") in err
    assert f"robo-rl: warning: {tmp_path / 'other' / 'summary.json'}: wall_time_s is NaN or infinite" in err
    assert "Traceback" not in err and "nan" not in out.lower().replace("final eval", "")
    # the summary's NaN is that run's final result: not replaced by an earlier point of its curve
    assert "| 5.00 | -, 5.00 |" in out
    result = _strict_json((tmp_path / "out" / "compare.json").read_text())
    (g,) = result["groups"]
    assert [r["final_eval_return"] for r in g["runs"]] == [None, 5.0]
    assert g["final_eval_return"]["mean"] == 5.0 and g["wall_time_s"]["mean"] == 60.0  # the finite one only
    assert len(result["warnings"]) == 2  # compare.json says what was left out, too


def test_nan_returns_in_metrics_are_left_out_of_the_curve_with_a_warning(tmp_path, capsys, monkeypatch):
    write_run(tmp_path / "run", 0, 1.0, [(10, 1.0)])
    (tmp_path / "run" / "metrics.csv").write_text("step,eval/return_mean\n10,1.0\n20,nan\n30,1e400\n40,2.0\n")
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "runs=run", "out_dir=out"]) == 0
    err = capsys.readouterr().err
    assert (f"robo-rl: warning: {tmp_path / 'run' / 'metrics.csv'}: eval/return_mean is NaN or infinite in 2 row(s) "
            "(first at step 20); left out of the curve") in err
    result = _strict_json((tmp_path / "out" / "compare.json").read_text())
    assert result["groups"][0]["curve"]["step"] == [10.0, 40.0]


def test_non_finite_config_values_keep_compare_json_valid(tmp_path):
    # env.kwargs may hold inf (a range bound); a config that differs in it is still written as valid JSON
    for name, bound in (("a", ".inf"), ("b", "2.0")):
        write_run(tmp_path / name, 0, 1.0, [(10, 1.0)])
        config = tmp_path / name / "config.yaml"
        config.write_text(config.read_text().replace("env:\n", f"env:\n  kwargs:\n    bound: {bound}\n"))
    result = compare([tmp_path / "a", tmp_path / "b"])
    assert [g["label"] for g in result["groups"]] == ["env.kwargs.bound=inf", "env.kwargs.bound=2.0"]
    out = tmp_path / "out"
    write(result, out)
    assert _strict_json((out / "compare.json").read_text())["groups"][0]["config"] == {"env.kwargs.bound": "inf"}


def test_a_damaged_file_in_one_of_several_runs_stops_the_comparison(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for seed in (0, 1, 2):
        write_run(tmp_path / "sweep" / f"seed={seed}", seed, 1.0, [(10, 1.0)])
    (tmp_path / "sweep" / "seed=1" / "summary.json").write_text('{"final_eval_return_mean": "abc"}')
    assert main(["compare", "runs=sweep"]) == 2
    out, err = capsys.readouterr()
    assert err.strip() == (f"robo-rl: error: {tmp_path / 'sweep' / 'seed=1' / 'summary.json'}: "
                           "final_eval_return_mean is 'abc', expected a number")
    assert out == "" and not (tmp_path / "sweep" / "compare.json").exists()


def test_a_default_place_that_cannot_hold_the_outputs_is_refused_before_reading(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "a", 0, 1.0, [(10, 1.0)])
    write_run(tmp_path / "b", 1, 1.0, [(10, 1.0)])
    (tmp_path / "b" / "summary.json").write_text("{broken")  # not reached: the place is checked first
    (tmp_path / "runs").write_text("a file where the default runs/compare-<time> would go")
    assert main(["compare", "runs=a,b"]) == 2
    err = capsys.readouterr().err
    assert "robo-rl: error: out_dir is unset, so the outputs go to runs/compare-" in err
    assert "runs is a file, so no directory can be made under it; give out_dir=<dir>" in err


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc (a place no directory can be made in)")
def test_an_out_dir_that_cannot_be_made_is_one_line(tmp_path, capsys):
    write_run(tmp_path / "run", 0, 1.0, [(10, 1.0)])
    assert main(["compare", f"runs={tmp_path / 'run'}", "out_dir=/proc/robo-rl-compare-test/out"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robo-rl: error: out_dir=/proc/robo-rl-compare-test/out: cannot write compare.json there")
    assert "choose another out_dir" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_blank_out_dir_is_named_as_given(tmp_path, capsys):
    # out_dir=' ' read "out_dir=PosixPath(' ')"
    write_run(tmp_path / "run", 0, 1.0, [(10, 1.0)])
    assert main(["compare", f"runs={tmp_path / 'run'}", "out_dir=' '"]) == 2
    assert "robo-rl: error: out_dir=' ': give a directory" in capsys.readouterr().err


def test_a_directory_where_a_run_file_belongs_is_named(tmp_path):
    write_run(tmp_path / "run", 0, 1.0, [(10, 1.0)])
    for name in ("summary.json", "metrics.csv"):
        (tmp_path / "run" / name).rename(tmp_path / f"{name}.bak")
        (tmp_path / "run" / name).mkdir()
        with pytest.raises(ValueError, match=str(tmp_path / "run" / name).replace(".", r"\.")):
            compare([tmp_path / "run"])
        (tmp_path / "run" / name).rmdir()
        (tmp_path / f"{name}.bak").rename(tmp_path / "run" / name)


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs /dev/null (a device)")
def test_a_device_where_a_run_file_belongs_is_named_not_read(tmp_path):
    # a link to /dev/zero was read until memory ran out (a MemoryError traceback), a named pipe waited for a writer;
    # /dev/null, which ends at once, stands for them: it was read as an empty file (metrics.csv: a run with no curve)
    write_run(tmp_path / "run", 0, 1.0, [(10, 1.0)])
    for name in ("summary.json", "eval.json", "metrics.csv"):
        target = tmp_path / "run" / name
        target.unlink(missing_ok=True)
        target.symlink_to("/dev/null")
        with pytest.raises(ValueError) as exc:
            compare([tmp_path / "run"])
        assert str(exc.value) == f"{target}: cannot be read (not a regular file (a device, pipe or socket)); a run " \
                                 "writes a file there: move it aside"
        target.unlink()


@pytest.mark.parametrize("file, content, message", [
    ("eval.json", {"return_mean": -5.0, "algo": "td3", "env": "Hopper-v5", "checkpoint_step": 1000},
     "algo is 'td3', and {run}/config.yaml has algo.name='sac': the file of another run; move it aside "
     "(`robo-rl eval run_dir={run}` writes this run's)"),
    ("eval.json", {"return_mean": -5.0, "algo": "sac", "env": "Walker2d-v5", "checkpoint_step": 1000},
     "env is 'Walker2d-v5', and the run trained on 'Hopper-v5' ({run}/summary.json): the file of another "
     "run; move it aside (`robo-rl eval run_dir={run}` writes this run's)"),
    ("summary.json", {"status": "completed", "algo": "sac", "env": "Hopper-v5", "seed": 3, "steps": 1000,
                      "final_eval_return_mean": 99.0},
     "seed is 3, and {run}/config.yaml has seed=0: the file of another run; move it aside"),
])
def test_a_file_of_another_run_is_named_not_taken_as_this_runs(tmp_path, file, content, message):
    # another run's eval.json or summary.json copied into a run was read as its own: a TD3 policy's return in the SAC
    # group's `robo-rl eval` column, another seed's final return among this seed's
    run = tmp_path / "run"
    write_run(run, 0, 1.0, [(1000, 1.0)])
    (run / file).write_text(json.dumps(content))
    with pytest.raises(ValueError) as exc:
        compare([run])
    assert str(exc.value) == f"{run / file}: " + message.format(run=run)
    (run / file).write_text(json.dumps({**content, "algo": "sac", "seed": 0, "env": "Hopper-v5"}))
    assert compare([run])["runs"] == 1  # the run's own file


def test_the_eval_command_a_warning_or_refusal_gives_names_a_run_dir_with_a_space_as_one_argument(tmp_path):
    # `robo-rl eval run_dir=/x/my runs/run` pasted into a shell is two arguments: "expected key=value, got runs/run"
    import re
    import shlex

    from robo_rl.commands.common import parse_options
    from robo_rl.config import EvalCommandConfig

    run = tmp_path / "my runs" / "run"
    write_run(run, 0, 1.0, [(1000, 1.0)])
    stale = {"return_mean": 1.0, "algo": "sac", "env": "Hopper-v5", "checkpoint_step": 500}
    (run / "eval.json").write_text(json.dumps(stale))
    (warning,) = compare([run])["warnings"]
    (run / "eval.json").write_text(json.dumps({**stale, "algo": "td3"}))
    with pytest.raises(ValueError) as refused:
        compare([run])
    for message in (warning, str(refused.value)):
        command = shlex.split(re.search(r"`(robo-rl eval [^`]*)`", message)[1])
        assert parse_options(command[2:], EvalCommandConfig, "eval").run_dir == str(run), message


def test_the_python_api_takes_one_directory_as_a_string_or_path(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path / "sweep" / f"seed={seed}", seed, 1.0 + seed, [(10, 1.0), (20, 1.0 + seed)])
    for given in (str(tmp_path / "sweep"), tmp_path / "sweep"):
        result = compare(given, group_by="algo.name")  # not read as a sequence of characters
        assert result["runs"] == 2 and [g["label"] for g in result["groups"]] == ["algo.name=sac"]
    with pytest.raises(ValueError, match="no run directories given"):
        compare([])
    with pytest.raises(ValueError, match=r"curve=\['eval'\]: expected one of"):
        compare(tmp_path / "sweep", curve=["eval"])


def test_a_metrics_file_out_of_step_order_gives_the_curve_in_order(tmp_path):
    write_run(tmp_path / "run", 0, 3.0, [(10, 1.0)])
    (tmp_path / "run" / "metrics.csv").write_text("step,eval/return_mean\n20,3.0\n10,1.0\n30,5.0\n")
    curve = compare([tmp_path / "run"])["groups"][0]["curve"]
    assert curve["step"] == [10.0, 20.0, 30.0] and curve["mean"] == [1.0, 3.0, 5.0]


def test_small_returns_keep_their_digits_in_the_table(tmp_path):
    # TwoGoals and ContactMaze return ~1 or less: at a fixed 1 decimal (0 per seed) these read "0.5 ± 0.4 | 1, 0"
    write_run(tmp_path / "seed=0", 0, 0.97, [(1000, 0.5), (2000, 0.97)])
    write_run(tmp_path / "seed=1", 1, 0.12, [(1000, 0.05), (2000, 0.12)])
    assert "| 2 (0, 1) | 0.545 ± 0.425 | 0.970, 0.120 | 0.545 ± 0.425 |" in table(compare([tmp_path]))


def test_the_mean_curve_starts_where_every_run_has_a_point():
    # a run evaluated first at step 1500 has no value at step 1000: holding its first one flat before it invented one
    c = mean_curve([[(1000, 10.0), (2000, 20.0), (3000, 30.0)], [(1500, 100.0), (3000, 200.0)]])
    assert c["step"] == [1500.0, 2000.0, 3000.0]
    np.testing.assert_allclose(c["mean"], [(15.0 + 100.0) / 2, (20.0 + 100.0 + 100.0 * 500 / 1500) / 2,
                                           (30.0 + 200.0) / 2])


def test_pooled_runs_of_different_lengths_show_the_range_of_their_steps(tmp_path):
    write_run(tmp_path / "a", 0, 1.0, [(1000, 1.0)], lr=3e-4)
    write_run(tmp_path / "b", 0, 2.0, [(1000, 1.5), (2000, 2.0)], lr=1e-3)
    md = table(compare([tmp_path], group_by=["algo.name"]))
    assert "| 1,000-2,000 |" in md and "1,500" not in md  # the mean of the budgets is no run's budget


def test_small_returns_keep_their_digits_on_the_progress_line_too(caplog):
    # the same numbers as the table's, as training shows them (ContactMaze: "return -0.0 | eval -0.0 ± 0.0")
    import logging

    from robo_rl import metrics

    progress = metrics.Progress("sac robo_rl/ContactMaze-v0", total_steps=1_000, every_seconds=60)
    with caplog.at_level(logging.INFO, logger=metrics.log.name):
        progress.maybe_print(1_000, -0.0412, (-0.0321, 0.0012), force=True)
        progress = metrics.Progress("sac Hopper-v5", total_steps=1_000, every_seconds=60)
        progress.maybe_print(1_000, 3425.94, (3625.31, 24.83), force=True)  # large returns: one decimal, as before
    assert "| return -0.0412 | eval -0.0321 ± 0.0012 |" in caplog.messages[0]
    assert "| return 3425.9 | eval 3625.3 ± 24.8 |" in caplog.messages[1]


def test_runs_from_before_policy_unit_actions_group_by_what_they_trained_with(tmp_path):
    # config.yaml files written before the option have no policy.unit_actions: a squashed head never had an
    # env-unit Gaussian (one group with newer runs), an unsquashed one had (its own group, labelled false)
    def run(name, seed, policy):
        write_run(tmp_path / name, seed, 100.0, [(1000, 100.0)])
        with (tmp_path / name / "config.yaml").open("a") as f:
            f.write("policy:\n" + "".join(f"  {k}: {v}\n" for k, v in policy.items()))

    run("sac_old", 0, {"name": "gaussian", "squash": "true"})
    run("sac_new", 1, {"name": "gaussian", "squash": "true", "unit_actions": "true"})
    assert len(compare([tmp_path / "sac_old", tmp_path / "sac_new"])["groups"]) == 1
    run("ppo_old", 0, {"name": "gaussian", "squash": "false"})
    run("ppo_new", 1, {"name": "gaussian", "squash": "false", "unit_actions": "true"})
    labels = {g["label"] for g in compare([tmp_path / "ppo_old", tmp_path / "ppo_new"])["groups"]}
    assert labels == {"policy.unit_actions=false", "policy.unit_actions=true"}


def test_gorl_runs_from_before_the_kept_std_group_by_the_reset_they_trained_with(tmp_path):
    # config.yaml files written before 2026-12-05 have no algo.keep_latent_std / algo.recenter_latent: those runs
    # reset the latent by zeroing it, as newer runs with both false do, not as the defaults (true) do
    import yaml

    def run(name, seed, **algo):
        write_run(tmp_path / name, seed, 100.0, [(1000, 100.0)], algo="gorl")
        saved = yaml.safe_load((tmp_path / name / "config.yaml").read_text())
        saved["algo"].update(algo)
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(saved))

    run("old", 0)
    run("zeroed", 1, keep_latent_std=False, recenter_latent=False)
    run("recentred", 2, keep_latent_std=True, recenter_latent=True)
    assert len(compare([tmp_path / "old", tmp_path / "zeroed"])["groups"]) == 1
    groups = compare([tmp_path / "old", tmp_path / "recentred"])["groups"]
    assert {g["label"] for g in groups} == {"algo.keep_latent_std=false algo.recenter_latent=false",
                                            "algo.keep_latent_std=true algo.recenter_latent=true"}


def test_a_run_saved_before_a_key_was_added_groups_with_newer_runs_of_its_settings(tmp_path):
    # a run written before precision= and demos.critic_steps existed trained as precision=fp32 and with the critic
    # pretraining's default: seeds of one setting, before and after, are one group, not two labelled None and fp32
    import yaml

    from omegaconf import OmegaConf

    from robo_rl.config import compose_config

    for seed in (0, 1):
        write_run(tmp_path / f"s{seed}", seed, 1.0, [(10, 1.0)])
        saved = compose_config(["algo=sac", "env=pendulum", f"seed={seed}"])
        saved = yaml.safe_load(OmegaConf.to_yaml(saved))
        if seed == 0:
            del saved["precision"], saved["demos"]["critic_steps"]
        (tmp_path / f"s{seed}" / "config.yaml").write_text(yaml.safe_dump(saved))
    (g,) = compare([tmp_path])["groups"]
    assert [r["seed"] for r in g["runs"]] == [0, 1]


def test_a_metrics_row_cut_off_mid_write_is_left_out_not_read_as_a_return(tmp_path, capsys, monkeypatch):
    # a run killed (or whose disk filled) while appending its eval row: "-1373.4" cut to "-13" read as a return of -13
    write_run(tmp_path / "s0", 0, None, [(1000, -1500.0), (2000, -1400.0)], summary=False)
    write_run(tmp_path / "s1", 1, -1300.0, [(1000, -1450.0), (2000, -1300.0)])
    path = tmp_path / "s0" / "metrics.csv"
    path.write_text(path.read_text() + "3000,1.0,,-13")
    (g,) = compare([tmp_path])["groups"]
    assert [r["final_eval_return"] for r in g["runs"]] == [-1400.0, -1300.0]
    assert g["best_eval_return"]["mean"] == pytest.approx(-1350.0) and g["curve"]["step"] == [1000.0, 2000.0]
    monkeypatch.chdir(tmp_path)
    assert main(["compare", f"runs={tmp_path}"]) == 0
    assert f"{path}: its last row (line 6) is cut off, without a line end" in capsys.readouterr().err


def test_the_plot_and_note_count_the_runs_a_curve_holds(tmp_path, capsys, monkeypatch):
    # seed 2 is not evaluated yet and seed 3 failed after one evaluation: the curve averages 3 runs up to step 1000
    write_run(tmp_path / "s0", 0, -50.0, [(1000, -100.0), (2000, -50.0)])
    write_run(tmp_path / "s1", 1, -100.0, [(500, -300.0), (1500, -200.0), (2500, -100.0)])
    write_run(tmp_path / "s2", 2, None, [(1000, 0.0)], summary=False)
    (tmp_path / "s2" / "metrics.csv").write_text("step,wall_time,rollout/ep_return_mean\n100,1.0,-900\n")
    write_run(tmp_path / "s3", 3, -900.0, [(1000, -900.0)], status="failed: non-finite critic_loss at step 1,100")
    (g,) = compare([tmp_path])["groups"]
    assert g["curve_runs"] == 3 and g["curve"]["step"] == [1000.0]
    assert g["curve"]["mean"] == pytest.approx([(-100.0 - 250.0 - 900.0) / 3])
    assert [r["curve_points"] for r in g["runs"]] == [2, 3, 0, 1]
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "runs=.", "out_dir=out"]) == 0
    out = capsys.readouterr().out
    assert "each run has one evaluation" not in out  # they have 2, 3, 0 and 1
    assert "a group's curve spans only the steps all its runs have reached" in out
    assert (tmp_path / "out" / "compare.png").stat().st_size > 0
    # the legend counts the runs the curve averages (a spy on the real Axes.plot reads it)
    import matplotlib.axes

    from robo_rl.compare import plot

    labels = []
    real = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, *a, **k: labels.append(k.get("label")) or real(self, *a, **k))
    plot(compare([tmp_path]), tmp_path / "again.png")
    assert labels == ["sac Hopper-v5 (n=3 of 4)"]


def test_a_group_whose_eval_jsons_mix_deterministic_and_stochastic_evaluations_is_warned(tmp_path, capsys, monkeypatch):
    # one mean of two measures: the column read as a deterministic evaluation (the default) said nothing of it
    for seed, deterministic in ((0, True), (1, False), (2, True)):
        write_run(tmp_path / f"s{seed}", seed, 10.0, [(1000, 10.0)])
        (tmp_path / f"s{seed}" / "eval.json").write_text(json.dumps(
            {"return_mean": 10.0 * seed, "return_std": 1.0, "episodes": 10, "deterministic": deterministic,
             "checkpoint_step": 1000}))
    result = compare([tmp_path])
    assert result["groups"][0]["robo_rl_eval_return"]["mean"] == pytest.approx(10.0)
    assert result["warnings"] == [f"group sac Hopper-v5: {tmp_path / 's1' / 'eval.json'} is of stochastic evaluations "
                                  "(deterministic=false), the group's other eval.json deterministic ones; the "
                                  "`robo-rl eval` mean averages both (evaluate every run alike)"]
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "runs=.", "out_dir=out"]) == 0
    assert "s1/eval.json is of stochastic evaluations" in capsys.readouterr().err
    # all alike (every run stochastic, or one run): nothing to say
    for seed in (0, 2):
        (tmp_path / f"s{seed}" / "eval.json").unlink()
    assert compare([tmp_path])["warnings"] == []


def test_the_mean_curve_does_not_depend_on_which_run_comes_first():
    # every 300 steps to 3,000, beside a 500-step run evaluated at 400 and 500: the first run's steps made the grid,
    # and with it first there was no step between 400 and 500, so no curve at all
    every_300 = [(float(s), float(s)) for s in range(300, 3001, 300)]
    short = [(400.0, 1.0), (500.0, 2.0)]
    expected = {"step": [400.0, 500.0], "mean": [200.5, 251.0], "min": [1.0, 2.0], "max": [400.0, 500.0]}
    assert mean_curve([every_300, short]) == expected
    assert mean_curve([short, every_300]) == expected
    a, b = [(100.0, 1.0), (300.0, 3.0)], [(100.0, 5.0), (200.0, 5.0), (300.0, 5.0)]  # the union of the steps, either way
    assert mean_curve([a, b]) == mean_curve([b, a]) == {"step": [100.0, 200.0, 300.0], "mean": [3.0, 3.5, 4.0],
                                                        "min": [1.0, 2.0, 3.0], "max": [5.0, 5.0, 5.0]}
    assert mean_curve([every_300, [(3100.0, 1.0)]]) is None  # no step both have reached


def test_a_comparison_that_fails_to_write_leaves_the_earlier_one_whole(tmp_path, capsys, monkeypatch):
    # a full disk while compare.png was saved left a cut PNG beside a new compare.json and compare.md: each file now
    # goes through a hidden file renamed over it, the plot first
    import errno

    from matplotlib.figure import Figure

    for seed in (0, 1):
        write_run(tmp_path / "sweep" / f"seed={seed}", seed, 100.0, [(1000, 10.0), (2000, 100.0)])
    assert main(["compare", f"runs={tmp_path / 'sweep'}"]) == 0
    earlier = {p.name: p.read_bytes() for p in (tmp_path / "sweep").glob("compare.*")}
    assert sorted(earlier) == ["compare.json", "compare.md", "compare.png"]
    real = Figure.savefig

    def full_disk(self, fname, *args, **kwargs):  # the disk fills a third of the way through the PNG
        real(self, fname, *args, **kwargs)
        Path(fname).write_bytes(Path(fname).read_bytes()[: Path(fname).stat().st_size // 3])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    write_run(tmp_path / "sweep" / "seed=2", 2, 300.0, [(1000, 10.0), (2000, 300.0)])
    capsys.readouterr()
    assert main(["compare", f"runs={tmp_path / 'sweep'}"]) == 1
    assert "writing the comparison failed (No space left on device)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "sweep").glob("*compare.*")} == earlier  # no hidden file


def test_a_failed_comparison_leaves_the_earlier_one_whole_and_no_directory_of_its_own(tmp_path, capsys, monkeypatch):
    # the disk fills while compare.json is written: the new compare.png was already moved over the earlier one (a
    # plot of three seeds beside the table of two), and a new runs/compare-<time>/ (or out_dir=) was left behind,
    # empty or holding a plot alone, as if it were a comparison
    import errno

    monkeypatch.chdir(tmp_path)
    for seed in (0, 1):
        write_run(tmp_path / "sweep" / f"seed={seed}", seed, 100.0, [(1000, 10.0), (2000, 100.0)])
    assert main(["compare", "runs=sweep"]) == 0
    before = sorted(p.name for p in (tmp_path / "sweep").iterdir())
    earlier = {p.name: p.read_bytes() for p in (tmp_path / "sweep").glob("compare.*")}
    real = Path.write_text

    def full_disk(self, *args, **kwargs):
        if "compare.json" in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    write_run(tmp_path / "sweep" / "seed=2", 2, 300.0, [(1000, 10.0), (2000, 300.0)])
    capsys.readouterr()
    assert main(["compare", "runs=sweep"]) == 1
    assert "writing the comparison failed (No space left on device)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "sweep").glob("compare.*")} == earlier
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == before + ["seed=2"]  # nothing hidden left
    # the directories it made for the outputs go with them: the default runs/compare-<time>/ (and runs/), an out_dir=
    assert main(["compare", "runs=sweep/seed=0,sweep/seed=1"]) == 1
    assert main(["compare", "runs=sweep", "out_dir=new/deep"]) == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()  # a directory that was there before is kept, empty or not
    assert main(["compare", "runs=sweep", "out_dir=kept/deep"]) == 1
    assert [p.name for p in tmp_path.joinpath("kept").iterdir()] == []


def test_a_comparison_without_a_plot_does_not_leave_an_earlier_ones_plot_beside_it(tmp_path, capsys):
    # curve=rollout drew compare.png; the same runs with curve=eval (no evaluation yet) have no plot, and the
    # rollout plot stayed beside the new compare.json and compare.md, read as theirs
    write_run(tmp_path / "run", 0, None, [(100, 1.0)], summary=False)
    (tmp_path / "run" / "metrics.csv").write_text("step,wall_time,rollout/ep_return_mean\n100,1.0,-900\n200,2.0,-800\n")
    assert main(["compare", f"runs={tmp_path / 'run'}", "curve=rollout", f"out_dir={tmp_path / 'out'}"]) == 0
    assert (tmp_path / "out" / "compare.png").is_file()
    assert main(["compare", f"runs={tmp_path / 'run'}", f"out_dir={tmp_path / 'out'}"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["compare.json", "compare.md"]


def test_two_comparisons_in_one_second_get_a_directory_each(tmp_path, capsys, monkeypatch):
    # the default runs/compare-<time> has a one-second resolution: a script's second comparison wrote over the first's
    import time

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt, *args: "20261206-100000")  # one second for all of them
    for seed in (0, 1, 2):
        write_run(tmp_path / f"s{seed}", seed, 10.0 * seed, [(10, 10.0 * seed)])
    assert main(["compare", "runs=s0,s1"]) == 0
    assert main(["compare", "runs=s1,s2"]) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["compare-20261206-100000", "compare-20261206-100000-2"]
    for name, seeds in (("compare-20261206-100000", [0, 1]), ("compare-20261206-100000-2", [1, 2])):
        result = json.loads((tmp_path / "runs" / name / "compare.json").read_text())
        assert [r["seed"] for r in result["groups"][0]["runs"]] == seeds
