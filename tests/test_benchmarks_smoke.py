"""The benchmark scripts still run against the current library: each cheap one once, with tiny settings.

Every script runs as a user runs it (a subprocess from the repository root), with ROBO_RL_BENCH_RESULTS
pointing its result files at tmp_path, so the recorded results under benchmarks/results/ are never touched.
Scripts whose budgets have no option (returns.py) run their main() with the module's budget shrunk.
Left out as too heavy for a test: throughput.py and update_anatomy.py (SB3 and 1,200-step warm-ups, minutes; the
settings throughput.py gives both libraries, the segments it times and its argument checks are tested without a
measurement), checkpoint_cost.py (fills a 1M-row, 2.9 GB replay buffer), passivity.py, sim2sim.py, demos_warm_start.py
and the generative heads of export_latency.py other than GoRL's (each over a minute at their smallest settings).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # ~60 s together; `python -m pytest -q -m "not slow"` leaves them out

ROOT = Path(__file__).resolve().parents[1]


def bench(tmp_path: Path, *args: str, timeout: float = 240, check: bool = True) -> subprocess.CompletedProcess:
    scratch = tmp_path / "tmp"  # the script's temp directory
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "ROBO_RL_BENCH_RESULTS": str(tmp_path / "results"), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "TMPDIR": str(scratch)}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0 or not check, f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    # runs kept for nothing (benchmarks.common.scratch_dir) are gone when the script ends
    assert not list(scratch.glob("robo-rl-bench-*")), "a benchmark left its scratch runs behind"
    return proc


def result(tmp_path: Path, name: str) -> dict:
    assert (tmp_path / "results" / f"{name}.md").is_file()
    return json.loads((tmp_path / "results" / f"{name}.json").read_text())


def test_env_speed(tmp_path):
    bench(tmp_path, "benchmarks/env_speed.py", "--tasks", "Hopper-v5", "--sizes", "2", "--rounds", "1",
          "--seconds", "0.05", "--name", "env_speed")
    out = result(tmp_path, "env_speed")
    assert out["results"][0]["robo_rl_steps_per_s"] > 0 and out["memory_per_env_bytes"]["Hopper-v5"] > 0


def test_fused_offpolicy(tmp_path):
    bench(tmp_path, "benchmarks/fused_offpolicy.py", "--rounds", "1", "--updates", "2", "--hidden", "16", "--batch", "32",
          "--name", "fused")
    out = result(tmp_path, "fused")["results"]
    assert [(r["algo"], r["precision"]) for r in out] == [("sac", "fp32"), ("sac", "bf16"), ("td3", "fp32"), ("td3", "bf16")]
    assert all(r["median_ms"]["fused"] > 0 and r["speedup"] > 0 for r in out)
    # compile=true's step too, on one learner (its compile takes a few seconds)
    bench(tmp_path, "benchmarks/fused_offpolicy.py", "--rounds", "1", "--updates", "2", "--hidden", "16", "--batch", "32",
          "--algos", "td3", "--precisions", "fp32", "--compiled", "--name", "fused_compiled")
    (compiled,) = result(tmp_path, "fused_compiled")["results"]
    assert compiled["median_ms"]["compiled"] > 0 and compiled["compiled_speedup"] > 0
    assert "compiled vs fused" in (tmp_path / "results" / "fused_compiled.md").read_text()
    # EXPO: float32 only (it refuses bf16), so its bf16 row is left out rather than measured as something else
    bench(tmp_path, "benchmarks/fused_offpolicy.py", "--rounds", "1", "--updates", "2", "--hidden", "16", "--batch", "32",
          "--algos", "expo", "--precisions", "fp32", "bf16", "--name", "fused_expo")
    (expo,) = result(tmp_path, "fused_expo")["results"]
    assert (expo["algo"], expo["precision"]) == ("expo", "fp32") and expo["median_ms"]["fused"] > 0


def test_default_run(tmp_path):
    bench(tmp_path, "benchmarks/default_run.py", "--seeds", "0", "--steps", "2048", "--name", "default_run")
    (run,) = result(tmp_path, "default_run")["runs"]
    assert run["env"] == "Hopper-v5" and run["steps"] == 2048


def test_returns_with_a_shrunk_budget(tmp_path):
    # SB3's runs come from a cache next to the results (as benchmarks/results/returns_sb3.json is used)
    (tmp_path / "results").mkdir()
    cache = {"runs": {"sac/0": {"seed": 0, "return": 1.0, "wall_s": 1.0, "budget": 300, "eval_episodes": 1,
                                "eval_seed": 10_000},
                      "ppo/0": {"seed": 0, "return": 2.0, "wall_s": 1.0, "budget": 2048, "eval_episodes": 1}}}
    (tmp_path / "results" / "returns_sb3.json").write_text(json.dumps(cache))
    code = ("import sys; sys.argv = ['returns.py', '--seeds', '0', '--name', 'returns_small']; "
            "import benchmarks.returns as m; m.BUDGET.update(sac=300, ppo=2048); m.EVAL_EPISODES = 1; m.main()")
    bench(tmp_path, "-c", code)
    out = result(tmp_path, "returns_small")["results"]  # --name: a trial run leaves the record (returns.*) alone
    assert out["sac"]["budget"] == 300 and out["ppo"]["sb3"][0]["return"] == 2.0
    assert not (tmp_path / "results" / "returns.json").exists()


@pytest.mark.parametrize("script", ["update_anatomy", "sim2sim", "passivity"])
def test_scripts_take_a_results_name(tmp_path, script):
    # without --name, README's commands for a study's variant wrote over the script's main record
    proc = bench(tmp_path, f"benchmarks/{script}.py", "--help", timeout=60)
    assert "--name NAME" in proc.stdout


def test_returns_takes_only_cached_sb3_runs_of_the_same_budget(monkeypatch):
    # the SB3 cache was keyed by algo and seed only: a changed budget compared robo-rl's runs with SB3's of another
    import benchmarks.returns as returns

    cache = {"runs": {"sac/0": {"seed": 0, "return": 1.0, "wall_s": 1.0, "budget": 300, "eval_episodes": 10,
                                "eval_seed": 10_000},
                      "sac/1": {"seed": 1, "return": 1.0, "wall_s": 1.0, "eval_seed": 10_001},  # no budget: 30,000
                      "sac/2": {"seed": 2, "return": 1.0, "wall_s": 1.0, "budget": 30_000, "eval_episodes": 10},
                      "ppo/0": {"seed": 0, "return": 2.0, "wall_s": 1.0, "budget": 2048, "eval_episodes": 1}}}
    assert returns.cached_sb3(cache, "sac", 0) is None  # 300 steps, not 30,000
    assert returns.cached_sb3(cache, "sac", 1) is cache["runs"]["sac/1"]  # recorded before runs kept their budget
    assert returns.cached_sb3(cache, "sac", 2) is None  # evaluated on an unseeded env (before 2026-12-06)
    assert returns.cached_sb3(cache, "ppo", 0) is None and returns.cached_sb3(cache, "ppo", 1) is None
    monkeypatch.setitem(returns.BUDGET, "sac", 300)
    assert returns.cached_sb3(cache, "sac", 0) is cache["runs"]["sac/0"] and returns.cached_sb3(cache, "sac", 1) is None
    monkeypatch.setitem(returns.BUDGET, "ppo", 2048)
    assert returns.cached_sb3(cache, "ppo", 0) is None  # scored on 1 episode, not 10
    monkeypatch.setattr(returns, "EVAL_EPISODES", 1)
    assert returns.cached_sb3(cache, "ppo", 0) is cache["runs"]["ppo/0"]


@pytest.mark.parametrize("algo", ["sac", "td3", "ppo"])
def test_throughput_configures_both_libraries_alike(monkeypatch, algo):
    # network sizes, activations, batch sizes, updates per step, warm-up, buffer, PPO's rollout layout, dtype: read
    # back from robo-rl's resolved config and from SB3's built model, as the results record them
    import benchmarks.throughput as throughput

    monkeypatch.setattr(throughput, "PPO_ENVS", 16)
    cfg, _ = throughput.ours_config(algo, "Hopper-v5", "gymnasium")
    model = throughput.sb3_model(algo, "Hopper-v5", throughput.sb3_env_kwargs(cfg), warm=False)
    ours, sb3 = throughput.ours_settings(cfg, 1), throughput.sb3_settings(model, [1])
    assert set(ours) == set(sb3)
    differ = {k for k in ours if ours[k] != sb3[k] and k != "torch_threads"}  # (robo-rl's count; SB3's, each timed)
    # robo-rl's PPO normalizes observations and rewards (its defaults), SB3's runs without VecNormalize: stated in
    # the script's docstring, the README and each result's settings
    assert differ == ({"normalize_obs", "normalize_reward"} if algo == "ppo" else set())
    assert ours["dtype"] == "float32" and ours["actor_activation"] == ("tanh" if algo == "ppo" else "relu")
    assert ours["actor_hidden"] == ours["critic_hidden"] == ([64, 64] if algo == "ppo" else [256, 256])
    if algo == "ppo":
        assert (ours["num_envs"], ours["samples_per_update"], ours["batch_size"], ours["epochs"]) == (16, 2048, 64, 10)
    else:
        assert (ours["batch_size"], ours["updates_per_env_step"], ours["learning_starts"]) == (256, 1.0, 1000)


def test_throughput_gives_sb3_the_task_as_robo_rl_builds_it(monkeypatch):
    # robo-rl's PPO on Ant-v5 leaves the 78 contact-force terms out of the observation (TASK_DEFAULTS); SB3's env was
    # gym.make(env_id) with them: 105 inputs against 27
    import benchmarks.throughput as throughput
    from robo_rl.build import build_env

    monkeypatch.setattr(throughput, "PPO_ENVS", 2)
    cfg, _ = throughput.ours_config("ppo", "Ant-v5", "gymnasium")
    model = throughput.sb3_model("ppo", "Ant-v5", throughput.sb3_env_kwargs(cfg), warm=False)
    env = build_env(cfg, num_envs=1)
    try:
        assert model.observation_space.shape == (env.obs_dim,) == (27,)
    finally:
        env.close()


def test_throughput_warms_sb3_up_under_autocast_with_bf16(monkeypatch):
    # robo-rl's precision=bf16 runner warms up in bf16; SB3's peer was put under autocast only after its warm-up,
    # so its first timed segment also paid bf16's first calls
    import torch
    from stable_baselines3 import SAC

    import benchmarks.throughput as throughput

    seen = []
    monkeypatch.setattr(SAC, "train", lambda self, *a, **k: seen.append(torch.is_autocast_enabled("cpu")))
    monkeypatch.setattr(throughput, "LEARNING_STARTS", 5)
    throughput.sb3_model("sac", "Hopper-v5", bf16=True)
    assert len(seen) > 0 and all(seen)


def test_throughput_times_sb3_under_autocast_at_each_thread_count(tmp_path, monkeypatch):
    # SB3 under autocast (the like-for-like peer of precision=bf16) was timed at 2 threads only, its float32 peer at 1,
    # 2 and robo-rl's count with the faster counting; here SB3's faster count is 1 under autocast, 2 in float32
    from types import SimpleNamespace

    import benchmarks.common as common
    import benchmarks.throughput as throughput

    cfg, _ = throughput.ours_config("td3", "Hopper-v5", "gymnasium")
    monkeypatch.setattr(throughput, "ours_runner", lambda *a, **k: (SimpleNamespace(cfg=cfg, threads=4), None))
    sb3_model = throughput.sb3_model
    monkeypatch.setattr(throughput, "sb3_model", lambda *a, **k: sb3_model(*a, **k, warm=False))
    monkeypatch.setattr(throughput, "matmul_floor", lambda run, threads: {
        "gflop_per_step": 0.5, f"matmul_ms_per_step_{threads[0]}thread": 1.0})
    rates = {"robo_rl": 200, "sb3_1thread": 100, "sb3_2threads": 120, "sb3_4threads": 110,
             "robo_rl_bf16": 240, "sb3_bf16_1thread": 150, "sb3_bf16_2threads": 120, "sb3_bf16_4threads": 100}
    monkeypatch.setattr(throughput, "interleaved", lambda segments, rounds: {k: [rates[k]] * rounds for k in segments})
    out = throughput.measure("td3", "Hopper-v5", 3, "gymnasium", False, bf16=True)
    assert set(out["rates"]) == set(rates)
    assert (out["sb3_best_threads"], out["sb3_bf16_best_threads"], out["sb3_bf16_steps_per_s"]) == (2, 1, 150)
    assert out["ratio_bf16"] == pytest.approx(2.0) and out["ratio_bf16_vs_sb3_bf16"] == pytest.approx(1.6)
    # the table gives the thread count of SB3 under autocast, as of its float32 peer
    monkeypatch.setattr(throughput, "measure", lambda *a, **k: out)
    monkeypatch.setattr(throughput, "tune_malloc", lambda: None)
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["throughput.py", "--algos", "td3", "--envs", "Hopper-v5", "--bf16"])
    throughput.main()
    table = (tmp_path / "throughput.md").read_text()
    assert "| 120 (2) |" in table and "| 150 (1) |" in table


@pytest.mark.parametrize("option", [["--ppo-envs", "48"], ["--ppo-segment", "3000"], ["--algos", "gorl"]])
def test_throughput_refuses_settings_it_would_mislabel(tmp_path, option):
    # 48 envs x (2048 // 48) = 2,016 samples per update; a 3,000-step segment runs two whole updates (4,096 steps)
    # and counted 3,000; gorl would have been timed against SB3's PPO
    proc = bench(tmp_path, "benchmarks/throughput.py", *option, check=False)
    assert proc.returncode == 2 and option[0] in proc.stderr and not (tmp_path / "results").exists()


def test_generative_returns_pairs_share_one_sac_run(tmp_path):
    # gorl_sac and offpolicy both compare against SAC: one SAC run serves both (with --run-root the second
    # pair trained SAC again into the same directory, which the run refused: the study stopped there)
    bench(tmp_path, "benchmarks/generative_returns.py", "--pairs", "gorl_sac", "offpolicy", "--seeds", "0",
          "--steps", "1000", "--run-root", str(tmp_path / "runs"), "--name", "generative_returns")
    out = result(tmp_path, "generative_returns")["results"]
    assert out["gorl_sac"]["runs"]["sac"] == out["offpolicy"]["runs"]["sac"]
    assert {p.name for p in (tmp_path / "runs").iterdir()} == {"sac-0", "gorl_sac-0", "expo-0", "parl-0"}


def test_generative_returns_reuses_only_sac_from_returns_json(tmp_path):
    # returns.py's PPO runs use SB3's layout (16 envs x 128 steps), not the defaults GoRL is compared with here
    recorded = {"results": {"sac": {"budget": 1000, "robo_rl": [{"seed": 0, "return": 999.0, "wall_s": 1.0}]},
                            "ppo": {"budget": 2048, "robo_rl": [{"seed": 0, "return": 12345.0, "wall_s": 1.0}]}}}
    (tmp_path / "returns.json").write_text(json.dumps(recorded))
    bench(tmp_path, "benchmarks/generative_returns.py", "--pairs", "onpolicy", "--seeds", "0", "--steps", "2048",
          "--reuse", str(tmp_path / "returns.json"), "--name", "generative_returns")
    runs = result(tmp_path, "generative_returns")["results"]["onpolicy"]["runs"]
    assert runs["ppo"][0]["return"] != 12345.0 and "reused_from" not in runs["ppo"][0]  # trained, at the defaults
    assert runs["gorl"][0]["seed"] == 0


@pytest.mark.parametrize("seeding", [None, "step"])
def test_generative_returns_reuses_only_runs_evaluated_on_the_same_episodes(tmp_path, seeding):
    # a run recorded before evaluations were seeded by their step was scored on other episodes: trained again
    run = {"seed": 0, "return": 999.0, "wall_s": 1.0, **({"eval_seeding": seeding} if seeding else {})}
    (tmp_path / "returns.json").write_text(json.dumps({"results": {"sac": {"budget": 600, "robo_rl": [run]}}}))
    out = bench(tmp_path, "benchmarks/generative_returns.py", "--pairs", "gorl_sac", "--seeds", "0", "--steps", "600",
                "--reuse", str(tmp_path / "returns.json"), "--name", "generative_returns")
    sac = result(tmp_path, "generative_returns")["results"]["gorl_sac"]["runs"]["sac"][0]
    assert (sac["return"] == 999.0) == (seeding == "step") and sac["eval_seeding"] == "step"
    assert ("evaluated on other episodes" in out.stdout) == (seeding is None)


@pytest.mark.parametrize("overrides, reused", [
    ([], False), (["--overrides", "policy.steps=4"], True), (["--overrides", "algo.target_samples=1"], False),
    (["--overrides", "policy.steps=4", "algo.target_samples=1"], False)])
def test_generative_returns_reuses_only_runs_trained_with_the_same_settings(tmp_path, overrides, reused):
    # a recorded EXPO run without its settings trained at the defaults of then (the TD target's max over all N samples
    # at s', a 4-step flow head): it stands for a run at those settings (policy.steps=4 today), not for one at today's
    # defaults (3 steps) nor with algo.target_samples=1; the baseline is SAC's defaults whatever the methods' overrides
    sac = {"seed": 0, "return": 999.0, "wall_s": 1.0, "eval_seeding": "step"}
    runs = {"sac": [sac], "expo": [{**sac, "return": 555.0}]}
    (tmp_path / "old.json").write_text(json.dumps({"results": {"offpolicy": {"steps": 600, "runs": runs}}}))
    out = bench(tmp_path, "benchmarks/generative_returns.py", "--pairs", "offpolicy", "--methods", "expo", "--seeds",
                "0", "--steps", "600", "--reuse", str(tmp_path / "old.json"), *overrides, "--name", "generative_returns")
    runs = result(tmp_path, "generative_returns")["results"]["offpolicy"]["runs"]
    assert runs["sac"][0]["return"] == 999.0
    assert (runs["expo"][0]["return"] == 555.0) == reused
    assert ("expo seed 0 in" in out.stdout and "trained with other settings" in out.stdout) == (not reused)
    recorded = runs["expo"][0]
    if not reused:  # trained here: its resolved settings recorded
        assert recorded["overrides"] == overrides[1:]
        assert recorded["policy"]["steps"] == (4 if "policy.steps=4" in overrides else 3)
        assert recorded["algo"]["target_samples"] == (1 if "algo.target_samples=1" in overrides else None)
        assert recorded["policy"]["name"] == "flow" and recorded["algo"]["name"] == "expo"


def test_generative_returns_reuses_a_run_recorded_at_the_settings_it_would_train_with(tmp_path):
    # a run recorded with its settings as given (before they were recorded resolved: policy.steps=3 and null keys,
    # which are EXPO's defaults) is reused at the defaults; the same record at 4 steps is not
    sac = {"seed": 0, "return": 999.0, "wall_s": 1.0, "eval_seeding": "step"}
    expo = {**sac, "return": 555.0, "algo": {"name": "expo"}, "policy": {"name": "flow", "steps": 3, "normalize_obs": None}}
    four = {**expo, "seed": 1, "policy": {"name": "flow", "steps": 4}}
    runs = {"sac": [sac, {**sac, "seed": 1}], "expo": [expo, four]}
    (tmp_path / "old.json").write_text(json.dumps({"results": {"offpolicy": {"steps": 600, "runs": runs}}}))
    bench(tmp_path, "benchmarks/generative_returns.py", "--pairs", "offpolicy", "--methods", "expo", "--seeds", "0",
          "1", "--steps", "600", "--reuse", str(tmp_path / "old.json"), "--name", "generative_returns")
    runs = result(tmp_path, "generative_returns")["results"]["offpolicy"]["runs"]
    assert [r["return"] for r in runs["sac"]] == [999.0, 999.0]
    assert runs["expo"][0]["return"] == 555.0 and runs["expo"][1]["return"] != 555.0


def test_generative_cost_records_the_settings_each_learner_ran_with():
    from benchmarks.generative_cost import METHODS, run_config

    algo, policy = run_config(METHODS["EXPO (flow)"][0])
    assert algo["name"] == "expo" and algo["target_samples"] is None and policy["steps"] == 3
    assert run_config(METHODS["EXPO (flow, policy.steps=4)"][0])[1]["steps"] == 4
    assert run_config(METHODS["PA-RL (flow)"][0])[1]["steps"] == 4


def test_generative_cost_gorl(tmp_path):
    bench(tmp_path, "benchmarks/generative_cost.py", "--only", "gorl", "--rounds", "1", "--refit-states", "1024",
          "--name", "gorl_cost")
    record = result(tmp_path, "gorl_cost")
    out = record["results"]
    gorl = out["GoRL (latent + flow decoder)"]
    assert gorl["slowdown_vs_baseline"] > 0 and gorl["slowdown_per_round"] == [gorl["slowdown_vs_baseline"]]
    assert out["PPO (gaussian)"]["slowdown_per_round"] is None
    assert f"{gorl['slowdown_vs_baseline']:.2f}x slower (rounds " in (tmp_path / "results" / "gorl_cost.md").read_text()
    assert out["GoRL, after a refit (re-centred latent)"]["slowdown_vs_baseline"] > 0
    refit = record["gorl_refit"]
    assert refit["states"] == 1024 and sorted(refit["seconds"]) == ["defaults", "refit_redraw=false", "refit_threads=1"]


def test_export_latency_gaussian_heads(tmp_path):
    bench(tmp_path, "benchmarks/export_latency.py", "--calls", "1", "--heads", "sac-gaussian", "ppo-gaussian",
          "gorl-latent-flow", "--name", "export_latency")
    rows = result(tmp_path, "export_latency")["rows"]
    assert [r["head"] for r in rows] == ["sac-gaussian", "ppo-gaussian", "gorl-latent-flow"]
    assert all(r["parity_max_abs_error"] < 1e-4 for r in rows)
    # GoRL's row is the policy a trained run exports, re-centred on its anchor
    assert [r["gorl_anchored"] for r in rows] == [False, False, True]
    assert all(r["torch_compiled_b1"]["p50"] > 0 for r in rows)  # compiled_act, timed beside the eager act
    assert "torch compiled b1 p50 ms" in (tmp_path / "results" / "export_latency.md").read_text()


def test_multimodal_with_demos(tmp_path):
    bench(tmp_path, "benchmarks/multimodal.py", "--methods", "sac", "ppo", "--seeds", "0", "--off-policy-steps", "100",
          "--on-policy-steps", "2048", "--demos", "4", "--pretrain-steps", "5", "--run-root", str(tmp_path / "runs"),
          "--out-dir", str(tmp_path / "results"))
    out = result(tmp_path, "multimodal_demos")["results"]
    assert [r["method"] for r in out] == ["sac", "ppo"]
    assert (tmp_path / "results" / "multimodal_demos_actions.png").is_file()


def test_multimodal_scores_success_and_the_goal_reached_as_documented():
    # what the study's tables count: the first episode of each of 100 copies from the start state, a success when
    # it ends at a goal (+1), the upper goal's share of the successes, for each acting mode; scripted policies with
    # known answers: the expert's detours, the mean of its two first moves (straight on, into the obstacle), and one
    # that crashes its first episode and succeeds in every later one (only the first counts)
    import torch

    from benchmarks.multimodal import evaluate
    from envs.tasks.two_goals import GOALS, STEP, WAYPOINT

    def expert(obs, deterministic):  # on the axis: the upper side, or a coin when sampling; then that side's detour
        pos = obs[:, :2].double()
        coin = torch.ones(len(obs)) if deterministic else torch.where(torch.rand(len(obs)) < 0.5, 1.0, -1.0)
        side = torch.where(obs[:, 1] == 0, coin, obs[:, 1].sign()).double()[:, None]
        flip = torch.cat([torch.ones_like(side), side], dim=1)
        target = torch.where(pos[:, 1:].abs() < 0.35, torch.tensor(WAYPOINT) * flip, torch.tensor(GOALS[0]) * flip)
        d = target - pos
        return (d / d.abs().amax(1, keepdim=True) * (d.norm(dim=1, keepdim=True) / STEP).clamp(max=1)).float()

    def mean(obs, deterministic):
        return torch.tensor([[4 / 9, 0.0]]).expand(len(obs), 2).clone()

    class Rule:
        def __init__(self, rule):
            self.rule = rule

        def act(self, obs, deterministic=False):
            return self.rule(obs, deterministic)

    class CrashFirst:  # even copies: the mean (a crash at step 4), then the expert from the start; odd: stand still
        def __init__(self):
            self.later = {}

        def act(self, obs, deterministic=False):
            key, at_start = (deterministic, len(obs)), (obs == torch.tensor([0.0, 0.0, 1.0])).all(1)
            later = self.later[key] = self.later[key] | at_start if key in self.later else torch.zeros_like(at_start)
            first = torch.where((torch.arange(len(obs)) % 2 == 0)[:, None], mean(obs, True), torch.zeros(1, 2))
            return torch.where(later[:, None], expert(obs, True), first)

    out = evaluate(Rule(expert), 0)
    assert out["success_deterministic"] == out["success_sampled"] == 1.0
    assert out["upper_goal_share_deterministic"] == 1.0 and 0.3 < out["upper_goal_share_sampled"] < 0.7
    first = torch.tensor(out["decision_actions"])  # 300 sampled first moves at the start state: both detours
    assert first.shape == (300, 2) and torch.allclose(first.abs(), torch.tensor([4 / 9, 1.0]))
    assert 0.3 < float((first[:, 1] > 0).float().mean()) < 0.7
    for policy in (Rule(mean), CrashFirst()):
        out = evaluate(policy, 0)
        assert out["success_deterministic"] == out["success_sampled"] == 0.0, out
        assert out["upper_goal_share_deterministic"] is None and out["upper_goal_share_sampled"] is None


def test_gorl_refit_fidelity(tmp_path):
    from robo_rl.train import train
    from tests.helpers import FAST, compose

    train(compose("algo=gorl", "env=pendulum", "env.num_envs=4", "algo.rollout_steps=16", "algo.minibatch_size=32",
                  "algo.epochs=1", "algo.stages=1", "algo.dataset_size=256", "policy.decoder_hidden=[32]", "steps=256",
                  "eval.episodes=2", "eval.num_envs=2", *FAST), tmp_path / "run")
    bench(tmp_path, "benchmarks/gorl_refit_fidelity.py", "--run", str(tmp_path / "run"), "--settings",
          "default:1:64:3e-4", "decayed:2:128:1e-3:cos", "--name", "fidelity")
    out = result(tmp_path, "fidelity")
    assert out["states"] == 256 and set(out["results"]) == {"default", "decayed"}
    for setting in out["results"].values():
        errors = setting["coupled_error_by_size"]
        assert list(errors) == ["0.0", "1.0", "2.0", "3.0"] and all(e >= 0 for e in errors.values())
        assert len(setting["sampled_return"]) == 2
    assert bench(tmp_path, "benchmarks/gorl_refit_fidelity.py", "--run", str(tmp_path / "run"), "--settings", "x:1",
                 check=False).returncode != 0


@pytest.mark.parametrize("args", [
    ["benchmarks/throughput.py", "--rounds", "0"], ["benchmarks/fused_offpolicy.py", "--updates", "0"],
    ["benchmarks/export_latency.py", "--calls", "0"], ["benchmarks/env_speed.py", "--sizes", "16", "0"],
    ["benchmarks/throughput.py", "--envs", "Foo-v5"]])
def test_scripts_refuse_bad_arguments_before_any_work(tmp_path, args):
    # a count of 0 ran the warm-ups (minutes in throughput.py) and then failed with a traceback (StatisticsError on no
    # rounds), and an unknown task id with a traceback too: now a usage error before anything runs
    proc = bench(tmp_path, *args, timeout=60, check=False)
    assert proc.returncode == 2 and args[1] in proc.stderr.splitlines()[-1] and "Traceback" not in proc.stderr
    assert not (tmp_path / "results").exists()


def test_generative_cost_lists_the_algos_only_takes(tmp_path):
    # the refusal listed each learner's first override ('algo=expo' four times)
    proc = bench(tmp_path, "benchmarks/generative_cost.py", "--only", "foo", timeout=60, check=False)
    listed = proc.stderr.split("choose from")[-1]
    assert proc.returncode == 2 and [a.strip(" '()\n") for a in listed.split(",")] == [
        "expo", "gorl", "gorl_sac", "parl", "ppo", "sac"]


def test_default_run_leaves_robo_rl_s_refusal_as_it_is(tmp_path):
    # robo-rl's one-line error was followed by this script's CalledProcessError traceback
    proc = bench(tmp_path, "benchmarks/default_run.py", "--envs", "foo", "--seeds", "0", timeout=60, check=False)
    assert proc.returncode == 2 and "env/foo" in proc.stderr and "Traceback" not in proc.stderr


def test_the_recorded_command_reads_back_as_run(tmp_path, monkeypatch):
    # the command was the arguments joined by spaces: `--heads expo-flow (best of 2N)` read back as four arguments, and
    # a shell refused the parentheses
    import shlex

    import benchmarks.common as common

    argv = ["benchmarks/export_latency.py", "--heads", "sac-gaussian", "expo-flow (best of 2N)", "--name", "it's"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    common.save("record", {}, "table")
    command = json.loads((tmp_path / "record.json").read_text())["command"]
    assert shlex.split(command) == ["python", *argv]
    assert f"generated by: {command} on" in (tmp_path / "record.md").read_text()
