"""Load an exported policy and run it: onnxruntime + numpy only.

This module is what a robot computer installs, so it never imports torch (nor ``robo_rl``,
``policies`` or ``envs``). ``PolicyRuntime`` loads an export directory (``policy.onnx`` +
``policy.json``), refuses a model whose checksum or input/output signature does not match its
sidecar, and maps observations to actions with strict shape / dtype / finiteness checks on both
sides. An export of a head that predicts action chunks returns H actions per query; ``ChunkExecutor``
runs the sidecar's ``chunk.execute`` of them before querying again, as robo-rl's evaluation does.
The fixed-rate, watched control loop around it is ``sim2real.loop``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sim2real.export import FORMAT, FORMAT_VERSION, sha256_of

SIDECAR = "policy.json"


class ExportError(ValueError):
    """The export directory is unusable: bad sidecar, wrong checksum, or a model that does not match."""


class NonFiniteObservation(ValueError):
    """The observation holds NaN or inf; the control loop answers with the fallback command."""


class BadAction(ValueError):
    """The policy produced an action that must not be sent."""


class NonFiniteAction(BadAction):
    pass


class ActionOutOfBounds(BadAction):
    pass


def onnx_session(path: str | Path, threads: int = 1):  # -> onnxruntime.InferenceSession
    """A CPU session with a fixed thread count and sequential execution.

    One thread is the default on purpose: a control loop wants the same latency every tick, and a
    thread pool competing with the robot's other processes adds jitter for tiny MLPs.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads={threads!r}: the inference threads, an integer >= 1 (1 keeps latency steady)")
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = int(threads)
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's InvalidProtobuf / InvalidGraph / Fail ...: the file, not the caller
        raise ExportError(f"{path} is not a valid ONNX model: {_ort_message(exc)} "
                          "(the file is damaged or not ONNX: export it again with `robo-rl export`)") from None


def _ort_message(exc: Exception) -> str:
    """onnxruntime's reason without its "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from ... failed:" prefix."""
    text = " ".join(str(exc).split())
    return text.rsplit(" failed:", 1)[-1].strip() or type(exc).__name__


def _sidecar_path(export: str | Path) -> Path:
    path = Path(export)
    return path / SIDECAR if path.is_dir() else path


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_sidecar(export: str | Path) -> dict[str, Any]:
    """Read and validate the JSON sidecar of an export (a directory or the .json file itself).

    Every key the runtime and the control loop read is checked for its type here, so a damaged or
    hand-edited sidecar fails at load with an ExportError naming the file and the key.
    """
    path = _sidecar_path(export)
    if not path.is_file():
        inside = path.parent / "export" / SIDECAR  # a run directory given for its export (robo-rl export's default out_dir)
        hint = f" (its export/ holds one: export={inside.parent})" if inside.is_file() else ""
        raise ExportError(f"{path} not found: pass an export directory holding {SIDECAR} (from `robo-rl export`){hint}")
    if path.suffix.lower() != ".json":  # e.g. the model file: "not valid JSON (utf-8 codec ...)" said nothing useful
        beside = (path.parent / SIDECAR).is_file()  # (a file elsewhere: "pass the export directory (.)" named the cwd)
        raise ExportError(f"{path} is not an export's sidecar ({SIDECAR}): pass "
                          + (f"the export directory ({path.parent}), which holds the model file and {SIDECAR}" if beside
                             else f"an export directory, which holds the model file and {SIDECAR} (from `robo-rl export`)"))
    try:
        sidecar = json.loads(path.read_text())
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ExportError(f"{path} is not valid JSON ({exc})") from exc

    def bad(message: str) -> ExportError:
        return ExportError(f"{path}: {message}")

    def mapping(key: str, value: Any, optional: bool = False) -> dict[str, Any]:
        if optional and value is None:
            return {}
        if not isinstance(value, dict):
            raise bad(f"{key} is {value!r:.60}, expected a mapping")
        return value

    def positive_int(key: str, value: Any) -> int:
        if not _is_int(value) or value < 1:
            raise bad(f"{key}={value!r:.60}: expected a positive integer")
        return value

    def numbers(key: str, value: Any, n: int) -> np.ndarray:
        if not isinstance(value, list) or len(value) != n or not all(_is_number(v) for v in value):
            raise bad(f"{key}={value!r:.60}: expected a list of {n} numbers")
        return np.asarray(value, np.float64)

    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        raise bad(f"format is {sidecar.get('format') if isinstance(sidecar, dict) else None!r}, expected {FORMAT!r}")
    if sidecar.get("version") != FORMAT_VERSION:
        raise bad(f"version {sidecar.get('version')!r} is not supported (this runtime reads version {FORMAT_VERSION}); "
                  "re-export with this robo-rl version")
    for key in ("model_file", "model_format", "sha256", "observation", "action", "inputs", "outputs", "control"):
        if key not in sidecar:
            raise bad(f"missing key {key!r}")
    for key in ("model_file", "model_format", "sha256"):
        if not isinstance(sidecar[key], str) or not sidecar[key]:
            raise bad(f"{key}={sidecar[key]!r:.60}: expected a string")
    name = sidecar["model_file"]  # the export writes the model beside its sidecar: a path elsewhere is not its model
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise bad(f"model_file={name!r:.60}: expected the model's file name in the export directory (e.g. "
                  "'policy.onnx'), not a path")
    if sidecar.get("task") is not None and not isinstance(sidecar["task"], str):
        raise bad(f"task={sidecar['task']!r:.60}: expected a task id or null")
    mapping("task_kwargs", sidecar.get("task_kwargs"), optional=True)
    if sidecar.get("max_episode_steps") is not None:  # the run's own time limit (deploy ends episodes there)
        positive_int("max_episode_steps", sidecar["max_episode_steps"])
    if "cost_key" in sidecar and (not isinstance(sidecar["cost_key"], str) or not sidecar["cost_key"]):
        raise bad(f"cost_key={sidecar['cost_key']!r:.60}: expected the step info key of the task's cost")
    obs, act = mapping("observation", sidecar["observation"]), mapping("action", sidecar["action"])
    obs_dim = positive_int("observation.dim", obs.get("dim"))
    act_dim = positive_int("action.dim", act.get("dim"))
    low, high = numbers("action.low", act.get("low"), act_dim), numbers("action.high", act.get("high"), act_dim)
    if not (np.isfinite(low).all() and np.isfinite(high).all() and (low <= high).all()):
        raise bad("action.low/high must be finite with low <= high")
    noise = sidecar.get("noise")
    k = 0
    if noise is not None:
        noise = mapping("noise", noise)
        k = positive_int("noise.dim", noise.get("dim"))
        default = noise.get("default", "zeros")
        if default != "zeros":
            numbers("noise.default", default, k)
    chunk = mapping("chunk", sidecar.get("chunk"), optional=True)  # absent: one action per query
    length = positive_int("chunk.length", chunk.get("length")) if chunk else 1
    if chunk and not (_is_int(chunk.get("execute")) and 1 <= chunk["execute"] <= length):
        raise bad(f"chunk.execute={chunk.get('execute')!r:.60}: expected a whole number between 1 and chunk.length={length}")
    expected_in = [("obs", obs_dim)] + ([("noise", k)] if k else [])
    for what, entries, expected in (("inputs", sidecar["inputs"], expected_in),
                                    ("outputs", sidecar["outputs"], [("action", act_dim)])):
        if not isinstance(entries, list):
            raise bad(f"{what} is {entries!r:.60}, expected a list of {{name, shape}} entries")
        for i, e in enumerate(entries):
            if not (isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("shape"), list)
                    and e["shape"] and _is_int(e["shape"][-1])):
                raise bad(f"{what}[{i}] is {e!r:.80}, expected {{'name': str, 'shape': ['batch', int], ...}}")
        got = [(e["name"], e["shape"][-1]) for e in entries]
        if got != expected:
            raise bad(f"{what} {got} (name, size) do not match observation/action/noise dims {expected}")
    action_shape = sidecar["outputs"][0]["shape"]
    if chunk and action_shape[1:] != [length, act_dim]:
        raise bad(f"outputs[0] shape {action_shape!r:.60} does not match chunk.length={length} and action.dim={act_dim} "
                  f"(expected ['batch', {length}, {act_dim}])")
    control = mapping("control", sidecar["control"])
    for key in ("dt", "rate_hz"):
        value = control.get(key)
        if value is not None and not (_is_number(value) and np.isfinite(value) and value > 0):
            raise bad(f"control.{key}={value!r:.60}: expected a positive number or null")
    if control.get("dt") is not None and control.get("rate_hz") is not None \
            and not np.isclose(control["dt"] * control["rate_hz"], 1.0, rtol=0, atol=1e-6):
        # the loop runs at rate_hz, deploy's simulator steps dt per command: they must be one control period
        raise bad(f"control.dt={control['dt']!r} s and control.rate_hz={control['rate_hz']!r} Hz are not one control "
                  "period (dt * rate_hz must be 1); re-export with `robo-rl export`")
    # every export writes its chain ({"filters": []} for none): a sidecar that lost it would deploy the policy unfiltered
    safety = sidecar.get("safety")
    if not isinstance(safety, dict) or "filters" not in safety:
        found = f"safety is {safety!r:.60}" if "safety" in sidecar else "missing key 'safety'"
        raise bad(f"{found} (the export's safety-filter chain, {{\"filters\": []}} for none): the policy would run "
                  "without the filters it was exported with; re-export with `robo-rl export`")
    if not isinstance(safety["filters"], list):  # null too: the export writes [] for none
        raise bad(f"safety.filters={safety['filters']!r:.60}: expected a list of filter entries ([] for none): the "
                  "policy would run without the filters it was exported with; re-export with `robo-rl export`")
    from sim2real.filters.chain import filter_class

    for i, entry in enumerate(safety["filters"]):  # (a filter of one's own, module:Class, must import here)
        try:
            filter_class(entry.get("type") if isinstance(entry, dict) else None, f"safety.filters[{i}]")
        except ValueError as exc:  # the loop would fail to build the chain later: the policy never runs without it
            raise bad(str(exc)) from None
    return sidecar


class PolicyRuntime:
    """An exported policy, checked against its sidecar, as a numpy function obs -> action."""

    def __init__(self, export: str | Path, threads: int = 1, verify: bool = True) -> None:
        self.sidecar_path = _sidecar_path(export)
        self.sidecar = load_sidecar(self.sidecar_path)
        self.model_path = self.sidecar_path.parent / self.sidecar["model_file"]
        if self.sidecar["model_format"] != "onnx":
            raise ExportError(f"{self.model_path.name} is a {self.sidecar['model_format']} export; this runtime "
                              "runs ONNX only (no torch): load it with torch.jit.load, or re-export with format=onnx")
        if not self.model_path.is_file():
            raise ExportError(f"{self.model_path} not found (named by {self.sidecar_path})")
        if verify and sha256_of(self.model_path) != self.sidecar["sha256"]:
            raise ExportError(f"{self.model_path.name} does not match the checksum in {self.sidecar_path.name} "
                              f"(file changed or wrong sidecar): {self.model_path}; export it again from its run "
                              "(robo-rl export run_dir=<run>) rather than deploy a model no export vouches for")
        self.obs_dim = int(self.sidecar["observation"]["dim"])
        self.act_dim = int(self.sidecar["action"]["dim"])
        self.action_low = np.asarray(self.sidecar["action"]["low"], np.float32)
        self.action_high = np.asarray(self.sidecar["action"]["high"], np.float32)
        # the export clips in float32; allow that rounding, refuse anything a real bug would produce
        self._bound_tol = 1e-5 * (self.action_high - self.action_low) + 1e-6
        control = self.sidecar["control"]
        self.dt: float | None = control.get("dt")
        self.rate_hz: float | None = control.get("rate_hz") or (1.0 / self.dt if self.dt else None)
        self.task: str | None = self.sidecar.get("task")
        self.task_kwargs: dict = dict(self.sidecar.get("task_kwargs") or {})  # the task's keyword arguments in training
        noise = self.sidecar.get("noise")
        self.noise_dim = int(noise["dim"]) if noise else 0
        default = noise.get("default", "zeros") if noise else "zeros"
        self.default_noise = np.zeros(self.noise_dim, np.float32) if default == "zeros" else np.asarray(default, np.float32)
        chunk = self.sidecar.get("chunk") or {}
        #: actions the graph returns per query (H) and how many of them run before the next query (ChunkExecutor)
        self.chunk: int = int(chunk.get("length", 1))
        self.execute: int = int(chunk.get("execute", 1))
        self.session = onnx_session(self.model_path, threads)
        self._fixed_batch = self._check_signature()
        self._warm_up()

    def _warm_up(self) -> None:
        """One inference at load: onnxruntime allocates on its first run, which would otherwise land
        on the robot's first control tick (and trip the inference-time watchdog)."""
        batch = self._fixed_batch or 1
        feeds = {"obs": np.zeros((batch, self.obs_dim), np.float32)}
        if self.noise_dim:
            feeds["noise"] = self._noise(None, batch)
        try:
            self.session.run(["action"], feeds)
        except Exception as exc:  # a graph that loads but cannot run (e.g. inner shapes that do not fit)
            raise ExportError(f"{self.model_path} is not a valid ONNX model: running it once on zeros failed: "
                              f"{_ort_message(exc)} (export it again with `robo-rl export`)") from None

    def _check_signature(self) -> int | None:
        """The graph's inputs/outputs must be the sidecar's: names, rank, feature sizes, float32."""
        fixed: set[int] = set()
        for what, declared, actual in (("inputs", self.sidecar["inputs"], self.session.get_inputs()),
                                       ("outputs", self.sidecar["outputs"], self.session.get_outputs())):
            want = {e["name"]: int(e["shape"][-1]) for e in declared}
            got = {a.name: a for a in actual}
            if set(want) != set(got):
                raise ExportError(f"{self.model_path.name} has {what} {sorted(got)} but {self.sidecar_path.name} "
                                  f"declares {sorted(want)}")
            for name, size in want.items():
                shape, dtype = list(got[name].shape), got[name].type
                features = [self.chunk, size] if name == "action" and self.chunk > 1 else [size]  # a chunk [batch, H, A]
                if shape[1:] != features or dtype != "tensor(float)":
                    raise ExportError(f"{self.model_path.name}: {what[:-1]} {name!r} is {dtype} {shape}, but "
                                      f"{self.sidecar_path.name} declares float32 {['batch', *features]}")
                if isinstance(shape[0], int):
                    fixed.add(shape[0])
        return fixed.pop() if len(fixed) == 1 else None

    def check_observation(self, obs: Any) -> np.ndarray:
        """obs [O] or [B, O], any float dtype -> float32, same shape; raises on wrong shape/dtype/NaN."""
        obs = np.asarray(obs)
        if obs.dtype.kind != "f":
            raise ValueError(f"observation dtype {obs.dtype}: expected float32 (float64 is cast)")
        if obs.ndim not in (1, 2) or obs.shape[-1] != self.obs_dim or (obs.ndim == 2 and obs.shape[0] < 1):
            raise ValueError(f"observation shape {tuple(obs.shape)}: expected ({self.obs_dim},) or (batch, {self.obs_dim})")
        given = obs
        with np.errstate(over="ignore"):
            obs = obs.astype(np.float32, copy=False)
        if not np.isfinite(obs).all():
            rows = obs.reshape(-1, self.obs_dim)
            where = np.flatnonzero((~np.isfinite(rows)).any(axis=0)).tolist()  # every index bad in any row
            beyond = np.isfinite(given.reshape(-1, self.obs_dim)).all()  # finite as given: float32 overflowed
            raise NonFiniteObservation(f"observation has NaN/inf at indices {where}" if not beyond else
                                       f"observation at indices {where} is beyond float32's range (|x| > 3.4e38)")
        return obs

    def __call__(self, obs: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """Action [A] for obs [O], or [B, A] for [B, O], in env units within the action bounds (a chunk
        export: the chunk's first action; ``ChunkExecutor`` runs ``execute`` of each chunk, as robo-rl evaluates)."""
        return self.act_chunk(obs, noise)[..., 0, :]

    def act_chunk(self, obs: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """Actions [H, A] for obs [O], or [B, H, A] for [B, O] (H = ``chunk``, 1 for a policy that predicts one
        action per query), in env units within the action bounds; a NaN/inf anywhere in a chunk is refused."""
        obs = self.check_observation(obs)
        single = obs.ndim == 1
        batch = obs.reshape(-1, self.obs_dim)
        if self._fixed_batch is not None and batch.shape[0] != self._fixed_batch:
            raise ValueError(f"{self.model_path.name} was exported for batch size {self._fixed_batch}, got {batch.shape[0]}")
        feeds = {"obs": batch}
        if self.noise_dim:
            feeds["noise"] = self._noise(noise, batch.shape[0])
        elif noise is not None:
            raise ValueError("this policy takes no noise input (sidecar noise is null)")
        action = self.session.run(["action"], feeds)[0]
        expected = (batch.shape[0], *((self.chunk,) if self.chunk > 1 else ()), self.act_dim)
        if action.shape != expected:
            raise ExportError(f"{self.model_path.name} returned an action of shape {action.shape}, expected {expected}")
        action = action.reshape(batch.shape[0], self.chunk, self.act_dim)
        if not np.isfinite(action).all():
            raise NonFiniteAction("the policy returned a NaN/inf action")
        over = np.maximum(self.action_low - action, action - self.action_high)
        if (over > self._bound_tol).any():
            raise ActionOutOfBounds(f"the policy returned an action {float(over.max()):.3g} outside the sidecar's "
                                    "action bounds (the model and its sidecar disagree)")
        action = np.clip(action, self.action_low, self.action_high)
        return action[0] if single else action

    def _noise(self, noise: np.ndarray | None, batch: int) -> np.ndarray:
        if noise is None:
            return np.broadcast_to(self.default_noise, (batch, self.noise_dim)).astype(np.float32)
        if np.asarray(noise).dtype.kind not in "fiu":
            raise ValueError(f"noise must be real numbers, got an array of {np.asarray(noise).dtype}")
        noise = np.asarray(noise, np.float32)
        if noise.shape not in ((self.noise_dim,), (batch, self.noise_dim)):
            raise ValueError(f"noise shape {tuple(noise.shape)}: expected ({self.noise_dim},) or ({batch}, {self.noise_dim})")
        if not np.isfinite(noise).all():
            raise ValueError("noise has NaN/inf values")
        return np.ascontiguousarray(np.broadcast_to(noise, (batch, self.noise_dim)))


class ChunkExecutor:
    """Runs ``execute`` actions of each chunk an export predicts before querying it again (a receding
    horizon), for one robot: the numpy twin of ``policies.heads.ChunkExecutor``, which robo-rl's
    evaluation runs. ``reset()`` when an episode starts (a new episode starts a new chunk) and when a
    command other than the queued one was sent (the rest of the chunk was planned for a robot that
    followed it). For an export without chunks every call queries the policy."""

    def __init__(self, runtime: PolicyRuntime) -> None:
        self.runtime = runtime
        self.execute = int(getattr(runtime, "execute", 1))
        self.reset()

    def reset(self) -> None:
        self._chunk: np.ndarray | None = None
        self._next = 0

    @property
    def due(self) -> bool:
        """Whether the next call queries the policy (else it returns the next queued action)."""
        return self._chunk is None or self._next >= self.execute

    def __call__(self, obs: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """Action [A] for obs [O]: the next action of the current chunk, after a new query when it is due.

        A query's errors (a bad observation, a NaN/inf in the chunk) propagate and leave nothing queued."""
        if np.ndim(obs) != 1:
            raise ValueError(f"ChunkExecutor runs one robot: obs [{self.runtime.obs_dim}], got shape {np.shape(obs)} "
                             "(for a batch, call PolicyRuntime.act_chunk)")
        if self.due:
            self.reset()
            given = (obs,) if noise is None else (obs, noise)  # a runtime-like object may take obs alone
            self._chunk = self.runtime.act_chunk(*given) if self.execute > 1 else self.runtime(*given)[None]
        action = self._chunk[self._next]
        self._next += 1
        return action
