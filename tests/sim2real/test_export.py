"""Export round trips: every head (and EXPO/PA-RL's critic choice) matches torch in onnxruntime within 1e-5."""

import json
import warnings

import numpy as np
import onnx
import pytest
import torch

from policies import build_head
from robo_rl.learners.candidates import CriticSelectPolicy
from robo_rl.learners.critics import QEnsemble
from robo_rl.learners.expo import EditPolicy
from sim2real.export import export_policy, sha256_of
from tests.sim2real.conftest import make_export

OBS_DIM, LOW, HIGH = 5, np.array([-1.0, -2.0, 0.0]), np.array([1.0, 2.0, 0.5])
SMALL = {"hidden_sizes": [32, 32]}
HEADS = [
    ("gaussian", {}),
    ("gaussian", {"state_dependent_std": True}),
    ("deterministic", {}),
    ("mixture", {"components": 3}),
    ("flow", {"steps": 4}),
    ("flow", {"steps": 3, "solver": "midpoint"}),
    ("diffusion", {"scheduler": "ddim", "train_steps": 50, "inference_steps": 10}),
    ("diffusion", {"scheduler": "ddpm", "train_steps": 20, "inference_steps": 5}),
    ("flow", {"steps": 2, "chunk": 4, "execute": 2}),
    ("latent", {"decoder": "flow", "decoder_steps": 4, "decoder_hidden": [32, 32]}),
    ("latent", {"decoder": "flow", "decoder_steps": 2, "decoder_hidden": [32, 32], "squash": True,  # gorl_sac
                "state_dependent_std": True}),
]


def _head(name, options, normalize=True):
    head = build_head(name, OBS_DIM, LOW, HIGH, normalize_obs=normalize, **{**SMALL, **options})
    if normalize:  # non-trivial statistics, so a missing normalizer in the graph would show
        head.obs_norm.update(torch.randn(500, OBS_DIM) * 3.0 + 2.0)
    return head


def _ort(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name, options", HEADS, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in HEADS])
def test_every_head_exports_and_matches_torch(tmp_path, name, options):
    head = _head(name, options)
    sidecar = export_policy(head, tmp_path, "onnx", control_dt=0.02, task="test")
    chunk = options.get("chunk", 1)
    shape = (chunk, 3) if chunk > 1 else (3,)  # a chunk head's graph returns the whole chunk [batch, H, A]
    path = tmp_path / sidecar["model_file"]
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert sidecar["sha256"] == sha256_of(path) and sidecar["checked"]["max_abs_error"] <= 1e-5
    assert json.loads((tmp_path / "policy.json").read_text()) == sidecar
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.json", "policy.onnx"]  # no exporter side files
    session = _ort(path)
    obs = np.random.default_rng(1).normal(2.0, 3.0, (7, OBS_DIM)).astype(np.float32)
    obs[0] *= 100.0  # far outside the data: the normalizer's clip must be in the graph too
    k = sidecar["noise"]["dim"] if sidecar["noise"] else 0
    with torch.no_grad():
        if k:
            noise = np.random.default_rng(2).standard_normal((7, k)).astype(np.float32)
            export_path = head.forward_chunk if chunk > 1 else head
            want = head.clip_action(export_path(torch.from_numpy(obs), torch.from_numpy(noise))).numpy()
            got = session.run(None, {"obs": obs, "noise": noise})[0]
        else:
            want = head.act(torch.from_numpy(obs), deterministic=True).numpy()
            got = session.run(None, {"obs": obs})[0]
    assert got.shape == (7, *shape) and np.abs(got - want).max() <= 1e-5
    assert sidecar["outputs"][0]["shape"] == ["batch", *shape]
    assert (got >= LOW - 1e-6).all() and (got <= HIGH + 1e-6).all()
    if name in ("flow", "diffusion"):
        assert k > 0 and sidecar["sampling"]  # sampling steps unrolled, noise is an explicit input
        if name == "diffusion":  # the schedule the unrolled chain follows is on record
            assert {"train_steps", "beta_schedule", "scheduler_kind", "inference_steps"} <= set(sidecar["sampling"])
        # a chunk head: the runtime runs `execute` of each chunk per query, as robo-rl's evaluation does
        assert sidecar.get("chunk") == ({"length": chunk, "execute": options["execute"]} if chunk > 1 else None)
        # zeros (the sidecar's default) reproduce the head's deterministic action (chunk)
        zeros = np.zeros((7, k), np.float32)
        with torch.no_grad():
            act = head.act_chunk if chunk > 1 else head.act
            deterministic = act(torch.from_numpy(obs), deterministic=True).numpy()
        assert np.abs(session.run(None, {"obs": obs, "noise": zeros})[0] - deterministic).max() <= 1e-5


@pytest.mark.parametrize("recentered, past_limit", [(False, False), (True, False), (True, True)])
def test_gorl_export_reads_the_latent_through_its_scale(tmp_path, recentered, past_limit):
    # after a refit that kept the latent's std (algo.keep_latent_std), the decoder reads u / latent_scale; after a
    # recentering reset (algo.recenter_latent, the default), (u - anchor mean(s)) / latent_scale. past_limit: the
    # latent's mean has moved past latent_limit (3) since the recentring; only z is clipped, as in training's rollouts
    head = _head("latent", {"decoder": "flow", "decoder_steps": 2, "decoder_hidden": [32, 32]})
    torch.manual_seed(0)
    with torch.no_grad():
        for p in head.decoder.parameters():  # a decoder that is not the identity, a latent mean away from 0
            p.add_(0.3 * torch.randn_like(p))
        [m for m in head.latent.net if isinstance(m, torch.nn.Linear)][-1].bias.copy_(torch.tensor([0.4, -0.3, 0.2]))
        head.latent_scale.copy_(torch.tensor([0.2, 0.5, 3.0]))
        if recentered:  # the anchor is the mean network of then; the latent policy has moved on since
            head.recenter(torch.tensor([0.2, 0.5, 3.0]))
            for p in head.latent.net.parameters():
                p.add_(0.3 * torch.randn_like(p))
            if past_limit:
                [m for m in head.latent.net if isinstance(m, torch.nn.Linear)][-1].bias.add_(3.0)
    export_policy(head, tmp_path, "onnx")
    obs = np.random.default_rng(4).normal(2.0, 3.0, (6, OBS_DIM)).astype(np.float32)
    with torch.no_grad():
        want = head.act(torch.from_numpy(obs), deterministic=True).numpy()
        mean = head.latent.distribution(torch.from_numpy(obs))[0]
        np.testing.assert_array_equal(want, head.decode(torch.from_numpy(obs), mean).numpy())  # the rollouts' decoding
        assert (mean.abs().max() > head.latent_limit) == past_limit
        u = head.latent.act(torch.from_numpy(obs), deterministic=True)
        unscaled = head.decoder.from_unit(head.decoder.generate(torch.from_numpy(obs), u))[:, 0].numpy()
    assert np.abs(want - unscaled).max() > 0.05  # the scale matters for these actions
    assert np.abs(_ort(tmp_path / "policy.onnx").run(None, {"obs": obs})[0] - want).max() <= 1e-5


def test_exporting_a_learners_head_leaves_it_training_as_it_was(tmp_path):
    # export_policy(learner.policy) put the caller's head in eval mode (a user head's dropout then stayed off for the
    # rest of training) and, from cuda, moved it to the CPU under its learner
    from robo_rl.learners.sac import SAC

    learner = SAC(_head("gaussian", {}), critic_hidden=(32, 32))
    export_policy(learner.policy, tmp_path / "export")
    assert all(m.training for m in learner.policy.modules())
    assert (tmp_path / "export" / "policy.onnx").is_file()


@pytest.mark.parametrize("base_name, edit", [("flow", True), ("diffusion", False), ("gaussian", False)])
def test_critic_select_policies_export_with_their_fixed_noise(tmp_path, base_name, edit):
    """EXPO (flow base + edit policy) and PA-RL (any base): the best of N candidates by Q, as in torch."""
    options = {"steps": 3} if base_name == "flow" else {"scheduler": "ddim", "train_steps": 20, "inference_steps": 4} if base_name == "diffusion" else {}
    base = _head(base_name, options)
    critic = QEnsemble(OBS_DIM, 3, 2, [32, 32], "relu", False)
    policy = CriticSelectPolicy(base, critic, 4, EditPolicy(base, 0.1, [32], "relu") if edit else None)
    sidecar = export_policy(policy, tmp_path, "onnx")
    session = _ort(tmp_path / "policy.onnx")
    obs = np.random.default_rng(3).normal(2.0, 3.0, (6, OBS_DIM)).astype(np.float32)
    with torch.no_grad():
        want = policy.act(torch.from_numpy(obs), deterministic=True).numpy()
    if sidecar["noise"]:
        default = np.asarray(sidecar["noise"]["default"], np.float32)[None].repeat(6, 0)
        got = session.run(None, {"obs": obs, "noise": default})[0]
        assert sidecar["sampling"]["candidates"] == (8 if edit else 4)
    else:  # a Gaussian base has no noise input: its N candidates are one action, and the sidecar says so
        got = session.run(None, {"obs": obs})[0]
        assert sidecar["sampling"]["candidates"] == (2 if edit else 1)
    assert np.abs(got - want).max() <= 1e-5


@pytest.mark.parametrize("tied", [True, False])
def test_a_critic_select_export_may_pick_another_of_tied_candidates_but_no_worse_one(tmp_path, monkeypatch, tied):
    # an argmax between candidates the critic scores alike may go either way in another runtime's rounding (an EXPO
    # TorchScript export was refused for a 7e-5 gap between two equal-scoring actions); a worse pick is still refused.
    # The stand-in runtime here always takes the last candidate, whatever torch's argmax takes
    base = _head("flow", {"steps": 3})
    critic = QEnsemble(OBS_DIM, 3, 2, [32, 32], "relu", False)
    if tied:  # a critic that scores every candidate alike
        with torch.no_grad():
            for p in critic.parameters():
                p.zero_()
    policy = CriticSelectPolicy(base, critic, 4)
    trace = torch.jit.trace

    class LastCandidate(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.policy = policy

        def forward(self, obs, noise):
            return self.policy.clip_action(self.policy.candidates(obs, deterministic=True, noise=noise)[:, -1])

    monkeypatch.setattr(torch.jit, "trace", lambda module, example, **kw: trace(LastCandidate(), example, **kw))
    if tied:
        export_policy(policy, tmp_path, "torchscript")
        assert (tmp_path / "policy.pt").is_file()
    else:
        with pytest.raises(RuntimeError, match="differs from the torch policy"):
            export_policy(policy, tmp_path, "torchscript")


@pytest.mark.parametrize("options", [{"steps": 4}, {"steps": 2, "chunk": 4, "execute": 2}], ids=["flow", "flow-chunk"])
def test_torchscript_export_matches(tmp_path, options):
    head = _head("flow", options)
    sidecar = export_policy(head, tmp_path, "torchscript")
    loaded = torch.jit.load(str(tmp_path / sidecar["model_file"]))
    obs, noise = torch.randn(4, OBS_DIM), torch.randn(4, sidecar["noise"]["dim"])
    with torch.no_grad():
        want = head.clip_action(head.forward_chunk(obs, noise) if "chunk" in options else head(obs, noise))
        assert want.shape == ((4, 4, 3) if "chunk" in options else (4, 3))
        assert torch.allclose(loaded(obs, noise), want, atol=1e-6)


def test_a_policy_with_non_finite_output_is_not_exported(tmp_path):
    head = _head("gaussian", {})
    with torch.no_grad():
        for p in head.parameters():
            p.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        export_policy(head, tmp_path, "onnx")
    assert not (tmp_path / "policy.onnx").exists() and not (tmp_path / "policy.json").exists()


def test_a_failed_parity_check_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError, match="differs from the torch policy"):
        export_policy(_head("flow", {}), tmp_path, "onnx", tolerance=-1.0)  # no error passes a negative tolerance
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fails", ["parity", "non-finite"])
def test_a_failed_export_leaves_no_directory_it_made(tmp_path, fails):
    # the export directory (and its missing parents) used to be created before the checks and left there empty
    head = _head("gaussian", {})
    if fails == "non-finite":
        with torch.no_grad():
            for p in head.parameters():
                p.fill_(float("nan"))
    with pytest.raises((RuntimeError, ValueError)):
        export_policy(head, tmp_path / "deploy" / "maze", "onnx", tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="onnx, torchscript"):
        export_policy(_head("gaussian", {}), tmp_path, "tflite")


@pytest.mark.parametrize("kwargs, match", [
    ({"control_dt": 0.0}, "control_dt=0.0"),  # the runtime refused the written sidecar (control.dt must be > 0)
    ({"control_dt": float("nan")}, "control_dt=nan"),
    ({"control_dt": -0.02}, "control_dt=-0.02"),
    # a chain that cannot run on this policy (3 actions): the deployment loop refused it only at start-up
    ({"safety": {"filters": [{"type": "box", "low": [-1, -1], "high": [1, 1]}]}}, r"safety.filters\[0\] \(box\)"),
    ({"safety": {"filters": [{"type": "boxx"}]}}, "unknown filter type 'boxx'"),
    ({"observation_low": np.zeros(4)}, "observation_low has 4 values, but the policy observes 5"),
    ({"check_obs": np.zeros((4, 4))}, r"check_obs of shape \[4, 4\]"),
    ({"metadata": {"step": np.int64(3)}}, "metadata"),  # the sidecar is JSON
], ids=["dt-zero", "dt-nan", "dt-negative", "safety-dims", "safety-type", "obs-bounds", "check-obs", "metadata"])
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        export_policy(_head("deterministic", {}), tmp_path / "out", "onnx", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_numpy_values_in_the_control_period_and_the_filters_are_written_as_json(tmp_path):
    # a numpy float control period or numpy bounds in a filter raised TypeError while writing the sidecar, after
    # the graph was checked, and left the temporary model file behind
    from sim2real.runtime import PolicyRuntime

    box = {"type": "box", "low": np.full(3, -0.5), "high": np.float32(0.5)}
    sidecar = export_policy(_head("deterministic", {}), tmp_path, "onnx", control_dt=np.float32(0.25),
                            safety={"filters": [box]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.json", "policy.onnx"]
    assert sidecar["control"] == {"dt": 0.25, "rate_hz": 4.0}
    assert sidecar["safety"] == {"filters": [{"type": "box", "low": [-0.5] * 3, "high": 0.5}]}
    runtime = PolicyRuntime(tmp_path)
    assert runtime.dt == 0.25 and runtime.sidecar["safety"] == sidecar["safety"]


def test_export_fsyncs_both_files_before_renaming_and_a_crash_between_renames_is_refused(tmp_path, monkeypatch):
    """Model and sidecar are written under temporary names and fsynced before either is renamed; a crash
    after the model's rename leaves the new model next to the old sidecar, which the runtime refuses."""
    import pathlib

    import sim2real.export as export
    from sim2real.runtime import ExportError, PolicyRuntime

    export_policy(_head("deterministic", {}), tmp_path, "onnx", control_dt=0.02, task="test")  # the previous export
    synced, renames, real_replace = [], [], pathlib.Path.replace
    real_fsync = export._fsync
    monkeypatch.setattr(export, "_fsync", lambda p: (synced.append(pathlib.Path(p).name), real_fsync(p))[1])

    def replace(self, target):
        renames.append((self.name, sorted(synced), any(tmp_path.glob(".policy.json.*.tmp"))))
        if len(renames) == 2:
            raise KeyboardInterrupt("killed between the two renames")
        return real_replace(self, target)

    monkeypatch.setattr(pathlib.Path, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        export_policy(_head("deterministic", {}), tmp_path, "onnx", control_dt=0.02, task="test")
    monkeypatch.undo()
    name, synced_then, sidecar_written = renames[0]
    assert name.startswith(".policy.onnx.") and name.endswith(".tmp") and sidecar_written
    assert name in synced_then and any(n.startswith(".policy.json.") and n.endswith(".tmp") for n in synced_then)
    with pytest.raises(ExportError, match="does not match the checksum"):
        PolicyRuntime(tmp_path)  # new model, old sidecar: refused, never run


def test_an_export_started_while_another_writes_the_same_directory_keeps_its_own_temporary_file(tmp_path, monkeypatch):
    """Two exports into one out_dir at once (two `robo-rl export` runs): each writes its own temporary files. Under
    the fixed name .policy.onnx.tmp the second took the first's file (published it as its own policy.onnx) and the
    first failed checking a file that was gone, or published the other's model under its own sidecar."""
    import sim2real.export as export
    from sim2real.runtime import PolicyRuntime

    real, second = export._session, {}

    def session(path):  # the second export runs while the first checks its written graph
        if not second:
            second["started"] = True
            second["sidecar"] = export_policy(_head("gaussian", {"hidden_sizes": [16, 16]}), tmp_path, "onnx",
                                              task="second")
        return real(path)

    monkeypatch.setattr(export, "_session", session)
    first = export_policy(_head("deterministic", {}), tmp_path, "onnx", task="first")
    assert second["sidecar"]["task"] == "second" and second["sidecar"]["sha256"] != first["sha256"]
    assert json.loads((tmp_path / "policy.json").read_text()) == first  # published last: its pair, whole
    assert sha256_of(tmp_path / "policy.onnx") == first["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.json", "policy.onnx"]  # no temporary file left
    PolicyRuntime(tmp_path)  # a consistent pair


def test_two_exports_publishing_into_one_directory_at_once_leave_one_whole_pair(tmp_path, monkeypatch):
    """The renames of two exports' model and sidecar do not interleave (a lock on the directory): model A, model B,
    sidecar B, sidecar A left B's model under A's sidecar, which the runtime refuses, though both exports succeeded."""
    import pathlib
    import threading

    import sim2real.export as export
    from sim2real.runtime import PolicyRuntime

    exports = [make_export(tmp_path / name, seed=seed) for name, seed in (("a", 0), ("b", 1))]
    out = tmp_path / "out"
    out.mkdir()
    a_renamed_model, b_done = threading.Event(), threading.Event()
    real_replace = pathlib.Path.replace

    def replace(self, target):
        result = real_replace(self, target)
        if threading.current_thread().name == "A" and pathlib.Path(target).name == "policy.onnx":
            a_renamed_model.set()
            b_done.wait(2.0)  # without the lock B publishes now, between A's two renames; with it, B waits for A
        return result

    monkeypatch.setattr(pathlib.Path, "replace", replace)

    def publish(src, name):
        tmp = export._temporary(out, ".policy.onnx.")
        tmp.write_bytes((src / "policy.onnx").read_bytes())
        export._publish(tmp, out / "policy.onnx", json.loads((src / "policy.json").read_text()))
        if name == "B":
            b_done.set()

    a = threading.Thread(target=publish, args=(exports[0], "A"), name="A")
    a.start()
    assert a_renamed_model.wait(10.0)
    b = threading.Thread(target=publish, args=(exports[1], "B"), name="B")
    b.start()
    a.join()
    b.join()
    monkeypatch.undo()
    sidecar = json.loads((out / "policy.json").read_text())
    assert sidecar == json.loads((exports[1] / "policy.json").read_text())  # B published after A, both files
    assert sha256_of(out / "policy.onnx") == sidecar["sha256"]
    assert sorted(p.name for p in out.iterdir()) == ["policy.json", "policy.onnx"]
    PolicyRuntime(out)


def test_large_action_bounds_export_within_a_tolerance_scaled_by_the_half_range(tmp_path):
    """float32 rounding in the head's unit space grows with the action scale: a +-100 flow head (e.g. joint torques
    in Nm) was refused at 1.5e-5 > 1e-5; the tolerance is per dimension, times the half-range where it exceeds 1."""
    torch.manual_seed(0)
    low, high = np.array([-100.0, -100.0, 0.0, -0.5]), np.array([100.0, 100.0, 400.0, 0.5])
    head = build_head("flow", OBS_DIM, low, high, normalize_obs=True, hidden_sizes=[64, 64, 64], steps=10)
    head.obs_norm.update(torch.randn(500, OBS_DIM) * 3.0 + 2.0)
    sidecar = export_policy(head, tmp_path, "onnx")
    assert sidecar["checked"]["tolerance_per_dimension"] == pytest.approx([1e-3, 1e-3, 2e-3, 1e-5])
    obs = np.random.default_rng(4).normal(2.0, 3.0, (5, OBS_DIM)).astype(np.float32)
    with torch.no_grad():
        want = head.act(torch.from_numpy(obs), deterministic=True).numpy()
    zeros = np.zeros((5, sidecar["noise"]["dim"]), np.float32)
    got = _ort(tmp_path / "policy.onnx").run(None, {"obs": obs, "noise": zeros})[0]
    assert (np.abs(got - want) <= 1e-5 * np.maximum((high - low) / 2, 1.0)).all()


def test_a_perturbed_onnx_file_fails_the_parity_check(tmp_path, monkeypatch):
    """The tolerance guards: one weight of the written graph moved by 1e-3 and the export is refused, nothing written."""
    import sim2real.export as export

    real = export._export_onnx

    def perturbed(module, example, path, input_names):
        exporter = real(module, example, path, input_names)
        model = onnx.load(str(path))
        weight = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        values = onnx.numpy_helper.to_array(weight).copy()
        values.flat[0] += 1e-3
        weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
        onnx.save(model, str(path))
        return exporter

    monkeypatch.setattr(export, "_export_onnx", perturbed)
    with pytest.raises(RuntimeError, match="differs from the torch policy"):
        export_policy(_head("gaussian", {}), tmp_path, "onnx")
    assert list(tmp_path.iterdir()) == []


def test_an_export_path_that_differs_from_the_acting_policy_is_refused(tmp_path):
    """The file is checked against the module it is made from, and that module against the policy's own
    deterministic ``act``: an export path that leaves out the normalizer is refused, not written."""
    head = _head("gaussian", {})
    head.forward = lambda obs: head.from_unit(torch.tanh(head.net(obs)[:, :3]))  # no obs_norm
    with pytest.raises(RuntimeError, match="does not compute what it acts with"):
        export_policy(head, tmp_path, "onnx")
    assert not (tmp_path / "policy.onnx").exists() and not (tmp_path / "policy.json").exists()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_graph_that_loses_the_batch_axis_at_batch_1_is_refused(tmp_path, monkeypatch, fmt):
    """A robot calls with batch 1, the graph is traced at batch 2: the check runs batch 1 too."""
    import sim2real.export as export

    real = export.export_module

    class Squeezed(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, obs):
            return self.module(obs).squeeze()  # [1, A] -> [A] at batch 1 only

    monkeypatch.setattr(export, "export_module", lambda policy: Squeezed(real(policy)))
    with pytest.raises(RuntimeError, match=r"\[3\] for one, expected .* and \[1, 3\]"):
        export_policy(_head("deterministic", {}), tmp_path, fmt)
    assert not (tmp_path / "policy.json").exists()


def test_torchscript_export_of_a_critic_select_policy_is_quiet_and_exact(tmp_path):
    """Tracing warned "the trace might not generalize to other inputs" (the acting path's NaN check, the
    ensemble's size test) on every EXPO/PA-RL torchscript export; parity is checked at other batch sizes."""
    base = _head("gaussian", {})
    policy = CriticSelectPolicy(base, QEnsemble(OBS_DIM, 3, 2, [32, 32], "relu", False), 4,
                                EditPolicy(base, 0.1, [32], "relu"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_policy(policy, tmp_path, "torchscript")
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    loaded = torch.jit.load(str(tmp_path / "policy.pt"))
    obs = torch.randn(1, OBS_DIM) * 3.0 + 2.0
    with torch.no_grad():
        assert torch.allclose(loaded(obs), policy.act(obs, deterministic=True), atol=1e-6)


@pytest.mark.parametrize("first, second", [("onnx", "torchscript"), ("torchscript", "onnx")])
def test_re_export_in_the_other_format_removes_the_stale_model(tmp_path, first, second):
    """An export over one in the other format left the old model beside a sidecar that no longer described it
    (torch.jit.load("policy.pt") then ran the previous policy); files the export did not write stay."""
    export_policy(_head("deterministic", {}), tmp_path, first)
    (tmp_path / "notes.txt").write_text("mine")
    sidecar = export_policy(_head("gaussian", {}), tmp_path, second)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["notes.txt", "policy.json", sidecar["model_file"]])


def test_an_export_over_a_named_pipe_sidecar_replaces_it_without_waiting_on_it(tmp_path):
    """The export already in out_dir is read from its policy.json (for a model file to remove): a named pipe there
    waited for a writer, under the directory's lock."""
    import os

    from tests.helpers import without_waiting_on

    os.mkfifo(tmp_path / "policy.json")
    head = _head("deterministic", {})
    sidecar = without_waiting_on(tmp_path / "policy.json", lambda: export_policy(head, tmp_path, "onnx"))
    assert json.loads((tmp_path / "policy.json").read_text())["model_file"] == sidecar["model_file"] == "policy.onnx"


@pytest.mark.parametrize("name, options", HEADS, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in HEADS])
def test_onnx_export_falls_back_on_a_torch_whose_export_has_no_dynamo_argument(tmp_path, monkeypatch, recwarn, name,
                                                                                options):
    """pyproject allows torch>=2.4, whose torch.onnx.export has no ``dynamo=`` (added in 2.5): the first call
    (dynamo=True) fails there, and the TorchScript-based fallback must not pass ``dynamo=False`` either. Every
    head exports through the fallback (flow heads' chains used aten::addr, which it cannot export), and our code
    gives the tracer nothing to warn about (Mish's size test compared a traced tensor)."""
    real = torch.onnx.export

    def export_of_torch_2_4(model, args, f, export_params=True, verbose=False, training=None, input_names=None,
                            output_names=None, operator_export_type=None, opset_version=None,
                            do_constant_folding=True, dynamic_axes=None):
        return real(model, args, f, input_names=input_names, output_names=output_names,
                    opset_version=opset_version, dynamic_axes=dynamic_axes, dynamo=False)

    monkeypatch.setattr(torch.onnx, "export", export_of_torch_2_4)
    export_policy(_head(name, options), tmp_path, "onnx")  # parity with torch is checked inside
    sidecar = json.loads((tmp_path / "policy.json").read_text())
    assert sidecar["exporter"] == "torchscript-based"
    ours = [f"{w.filename}:{w.lineno}" for w in recwarn if issubclass(w.category, torch.jit.TracerWarning)
            and "site-packages" not in w.filename]
    assert not ours


@pytest.mark.parametrize("chunk, execute", [(4, 3), (3, 1)])
def test_deploying_a_chunk_head_sends_the_actions_robo_rl_s_evaluation_takes(tmp_path, monkeypatch, chunk, execute):
    """Export + ``robo-rl deploy`` run a chunk head as ``robo_rl.evaluation.evaluate`` does: ``execute`` actions of
    each chunk per query, a new chunk for a new episode (5-step episodes: the second starts mid-chunk)."""
    from envs import make_env
    from robo_rl.evaluation import evaluate
    from sim2real.deploy import deploy
    from sim2real.robots import MujocoSim2SimRobot

    torch.manual_seed(0)
    head = build_head("flow", 3, np.array([-2.0]), np.array([2.0]), steps=2, chunk=chunk, execute=execute, **SMALL)
    env = make_env("Pendulum-v1", 1, backend="gymnasium", max_episode_steps=5)
    try:
        evaluated = evaluate(head, env, 2, seed=0, record_transitions=True)
    finally:
        env.close()
    export_policy(head, tmp_path, "onnx", control_dt=0.05, task="Pendulum-v1", metadata={"max_episode_steps": 5})
    sent, observed = [], []
    send, read = MujocoSim2SimRobot.send_action, MujocoSim2SimRobot.get_observation
    monkeypatch.setattr(MujocoSim2SimRobot, "send_action", lambda self, a: (sent.append(np.array(a)), send(self, a))[1])
    monkeypatch.setattr(MujocoSim2SimRobot, "get_observation",
                        lambda self: (lambda o: (observed.append(o.values), o)[1])(read(self)))
    report = deploy(str(tmp_path), episodes=2, log=lambda line: None)  # sim2sim seed 0: evaluate's first episode
    assert report["episode_lengths"] == [5, 5] and report["loop"]["fallbacks"] == 0
    np.testing.assert_allclose(np.array(observed), evaluated["transitions"]["obs"].numpy(), atol=1e-4)
    # float32 rounding of the graph (the export's parity tolerance, 1e-5 times the half-range 2)
    np.testing.assert_allclose(np.array(sent), evaluated["transitions"]["actions"].numpy(), rtol=0, atol=2e-5)
    assert report["loop"]["latency"]["inference_ms"]["count"] == 2 * -(-5 // execute)  # queries per episode: ceil(5 / k)


def test_an_out_dir_that_cannot_be_made_is_named_with_the_key(tmp_path, monkeypatch):
    # out_dir=/proc/x (writable by root, yet it refuses new directories) was a bare "[Errno 2] No such file or
    # directory: '/proc/x'"; the mkdir is made to fail here, as on such a filesystem
    import errno
    from pathlib import Path

    def refuse(self, *args, **kwargs):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(ValueError, match=r"out_dir=.*export: the directory cannot be made \(No such file or directory\); "
                                         "choose another out_dir"):
        export_policy(_head("gaussian", {}), tmp_path / "export", "onnx")
    assert not (tmp_path / "export").exists()
