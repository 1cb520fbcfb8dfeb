"""A safety filter of one's own, named ``module:Class`` in a spec: built, described, trained with, exported and
deployed as the packaged filters are (QA, 2026-12-07: no documented route took one; ``build_chain`` failed on its
own chain's ``describe()``, and ``SafetyLayer(env, chain)`` was a bare TypeError)."""

from __future__ import annotations

import numpy as np
import pytest

from sim2real.filters import FilterChain, FilterReport, SafetyFilter, build_chain

HERE = "tests.sim2real.test_custom_filters"


class Halve(SafetyFilter):
    """Scales every action by a factor; keeps the previous output per row (restarted per row)."""

    name = "halve"
    episode_state = ("prev",)

    def __init__(self, action_dim: int, factor: float = 0.5) -> None:
        super().__init__(action_dim)
        if not 0 < float(factor) <= 1:
            raise ValueError(f"factor: must be in (0, 1], got {factor!r}")
        self.factor, self.prev = float(factor), None

    def _reset_state(self, batch: int) -> None:
        self.prev = None

    def _reset_rows(self, idx: np.ndarray) -> None:
        if self.prev is not None:
            self.prev = self.prev.copy()
            self.prev[idx] = 0.0

    def _apply(self, action, obs, dtype):
        out = np.where(np.isfinite(action), action * self.factor, 0.0).astype(dtype)
        self.prev = out.astype(np.float64)
        return out, FilterReport(np.ones(len(out), bool), ~np.isfinite(action).all(1), [])

    def describe(self):
        return {"type": self.name, "factor": self.factor}


class NoRowReset(Halve):
    """Per-episode state, but no way to restart one row of it."""

    _reset_rows = SafetyFilter._reset_rows


def test_a_filter_of_one_s_own_is_named_module_colon_class_and_its_chain_rebuilds_from_describe():
    chain = build_chain([{"type": "box", "low": -1, "high": 1}, {"type": f"{HERE}:Halve", "factor": 0.25}], 2)
    assert isinstance(chain.filters[1], Halve) and chain.filters[1].factor == 0.25
    described = chain.describe()
    assert described["filters"][1] == {"type": f"{HERE}:Halve", "factor": 0.25}
    # a chain built by hand describes itself so too (its describe() said "halve", which build_chain refused)
    by_hand = FilterChain([Halve(2, factor=0.5)])
    again = build_chain(by_hand.describe(), 2)
    assert isinstance(again.filters[0], Halve) and again.filters[0].factor == 0.5
    out, _ = again(np.array([0.8, -0.4], np.float32))
    np.testing.assert_array_equal(out, np.array([0.4, -0.2], np.float32))


@pytest.mark.parametrize("kind, said", [
    ("lowpass", r"unknown filter type 'lowpass'; choose one of box, .*or module:Class for a SafetyFilter subclass"),
    ("no_such_module_xyz:Filter", r"cannot import filter 'Filter' from 'no_such_module_xyz' .*PYTHONPATH"),
    (f"{HERE}:Missing", r"cannot import filter 'Missing'"),
    ("numpy:ndarray", r"numpy:ndarray is <class 'numpy.ndarray'>, not a sim2real.filters.SafetyFilter subclass"),
    ("sim2real.filters:FilterChain", r"sim2real.filters:FilterChain is .*, not a sim2real.filters.SafetyFilter subclass"),
])
def test_a_filter_type_that_names_no_filter_is_refused_naming_the_entry(kind, said):
    with pytest.raises(ValueError, match=rf"^safety.filters\[0\]: type: {said}"):
        build_chain([{"type": kind}], 2)


def test_training_takes_specs_and_checks_per_row_restarts_at_start_up():
    from envs import make_env
    from robo_rl.runners.safety import SafetyLayer
    from robo_rl.validation import ConfigError

    env = make_env("Pendulum-v1", num_envs=2)
    layer = SafetyLayer(env, [{"type": f"{HERE}:Halve"}])
    assert isinstance(layer.chain.filters[0], Halve)
    for built in (FilterChain([Halve(1)]), [Halve(1)]):  # a chain was "'FilterChain' object is not iterable"
        with pytest.raises(ConfigError, match=r"safety filters are given as specs, not built filters .*module:Class"):
            SafetyLayer(env, built)
    # it failed at the first episode end, mid-training
    with pytest.raises(ConfigError, match=rf"safety.filters\[0\] \({HERE}:NoRowReset\): NoRowReset keeps per-episode "
                                          r"state \('prev',\) but does not say how to restart one row of it"):
        SafetyLayer(env, [{"type": f"{HERE}:NoRowReset"}])
    env.close()


def test_the_runtime_refuses_a_sidecar_whose_filter_cannot_be_imported(tmp_path):
    # it loaded and acted; only the control loop failed, later, building the chain
    from sim2real.runtime import ExportError, PolicyRuntime
    from tests.sim2real.conftest import make_export

    ok = make_export(tmp_path / "ok", safety={"filters": [{"type": f"{HERE}:Halve", "factor": 0.5}]})
    PolicyRuntime(ok)
    bad = make_export(tmp_path / "bad", safety={"filters": [{"type": "gone_module_xyz:Halve"}]})
    with pytest.raises(ExportError, match=r"safety.filters\[0\]: type: cannot import filter 'Halve' from "
                                          r"'gone_module_xyz'"):
        PolicyRuntime(bad)


def test_a_custom_head_s_refusal_names_the_learners_its_flags_suit():
    # SAC's refusal of a deterministic head of one's own advised "diffusion/flow/mixture heads train with algo=expo"
    import torch

    from policies.heads.base import suited_learners
    from policies.heads.deterministic import DeterministicHead

    class MyDeterministic(DeterministicHead):
        name = "mydet"

    class MyFlowLike(DeterministicHead):  # stochastic, no tractable log-prob, not reparameterized
        name = "myflow"
        stochastic, reparameterized, tractable_log_prob = True, False, False

    assert suited_learners(MyDeterministic) == "algo=td3"
    assert suited_learners(MyFlowLike) == "algo=expo or algo=parl"
    from robo_rl.learners.sac import SAC
    from policies.normalizers import ObsNormalizer

    head = MyDeterministic(3, np.array([-1.0]), np.array([1.0]), ObsNormalizer(3), hidden_sizes=(8,))
    with pytest.raises(ValueError, match=r"algo=sac cannot train the 'mydet' head: .*train the mydet head with "
                                         r"algo=td3\.$"):
        SAC(head)
    assert torch.isfinite(head.act(torch.zeros(1, 3))).all()
