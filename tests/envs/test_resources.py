"""Memory free now under a cgroup limit: the limit less what the container holds, its reclaimable page cache not
counted (kubelet's and docker stats' working set); the CPUs a process may use under an affinity mask and a cgroup
CPU quota; read from fake /proc and /sys trees."""

import pytest

import envs.resources as resources
from envs.resources import check_envs_fit, host_memory, usable_cpus

GIB = 2**30
HOST = {"MemTotal": 64 * GIB, "MemAvailable": 60 * GIB, "SwapFree": 0}  # a big host around the container


def fake_root(tmp_path, files, meminfo=HOST, cgroup="0::/\n"):
    """A file system with /proc/meminfo, /proc/self/cgroup and the given /sys/fs/cgroup files."""
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/meminfo").write_text("".join(f"{k}: {v // 1024} kB\n" for k, v in meminfo.items()))
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    for path, text in files.items():
        (tmp_path / "sys/fs/cgroup" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "sys/fs/cgroup" / path).write_text(text)
    return tmp_path


def v2(limit, usage, inactive, active=0, under=""):
    stat = f"anon {usage - inactive - active}\nfile {inactive + active}\nactive_file {active}\ninactive_file {inactive}\n"
    return {f"{under}memory.max": f"{limit}\n", f"{under}memory.current": f"{usage}\n", f"{under}memory.stat": stat}


def v1(limit, usage, inactive, under=""):
    # the cgroup's own inactive_file (its processes' pages) beside total_inactive_file (its whole subtree)
    stat = (f"cache {inactive}\ninactive_file 4096\nactive_file 0\ntotal_cache {inactive}\ntotal_inactive_file {inactive}\n"
            "total_active_file 0\n")
    return {f"memory/{under}memory.limit_in_bytes": f"{limit}\n", f"memory/{under}memory.usage_in_bytes": f"{usage}\n",
            f"memory/{under}memory.stat": stat}


def test_v2_free_memory_is_the_limit_less_what_the_container_holds(tmp_path, monkeypatch):
    # 4 GiB limit, 3 GiB used of which 1 GiB is inactive page cache and 0.5 GiB active: 2.5 GiB free (the host's
    # 60 GiB capped at the limit said 4)
    root = fake_root(tmp_path, v2(4 * GIB, 3 * GIB, 1 * GIB, active=GIB // 2))
    assert host_memory(root) == (4 * GIB, 5 * GIB // 2)
    monkeypatch.setattr(resources, "ROOT", root)  # what make_env checks against
    with pytest.raises(MemoryError, match=r"num_envs=3 needs at least 3\.0 GiB .* more than the 2\.5 GiB of memory "
                                          r"free now; even at that floor at most 2 envs could fit, and an env uses several times it"):
        check_envs_fit("Hopper-v5", 3, GIB)
    check_envs_fit("Hopper-v5", 2, GIB)


def test_page_cache_the_kernel_can_drop_is_not_counted_as_used(tmp_path):
    # 3.9 of 4 GiB charged, 3.5 GiB of it inactive file cache (files the run read): 3.6 GiB free, not 0.1
    root = fake_root(tmp_path, v2(4 * GIB, int(3.9 * GIB), int(3.5 * GIB)))
    assert host_memory(root)[1] == 4 * GIB - (int(3.9 * GIB) - int(3.5 * GIB))


def test_v1_free_memory_reads_the_subtree_s_inactive_cache(tmp_path):
    root = fake_root(tmp_path, v1(8 * GIB, 7 * GIB, 2 * GIB), cgroup="4:memory:/\n0::/\n")
    assert host_memory(root) == (8 * GIB, 3 * GIB)


def test_the_host_s_free_memory_bounds_the_container_s(tmp_path):
    # a container allowed more than the host has free gets the host's figure
    root = fake_root(tmp_path, v2(32 * GIB, GIB, 0), meminfo={"MemTotal": 16 * GIB, "MemAvailable": 5 * GIB,
                                                             "SwapFree": GIB})
    assert host_memory(root) == (17 * GIB, 6 * GIB)


def test_a_charge_past_the_limit_leaves_nothing_free(tmp_path):
    assert host_memory(fake_root(tmp_path, v2(GIB, 2 * GIB, 0)))[1] == 0


@pytest.mark.parametrize("files", [
    {"memory.max": "max\n", "memory.current": f"{3 * GIB}\n", "memory.stat": "inactive_file 0\n"},  # v2, no limit
    {"memory/memory.limit_in_bytes": "9223372036854771712\n", "memory/memory.usage_in_bytes": f"{3 * GIB}\n",
     "memory/memory.stat": "total_inactive_file 0\n"},  # v1 writes a huge number for "no limit"
    {},  # no cgroup memory files at all
], ids=["v2-max", "v1-unlimited", "none"])
def test_without_a_limit_the_host_numbers_stand(tmp_path, files):
    assert host_memory(fake_root(tmp_path, files, cgroup="4:memory:/\n0::/\n")) == (64 * GIB, 60 * GIB)


@pytest.mark.parametrize("missing", ["memory.current", "memory.stat"])
def test_a_limit_whose_use_cannot_be_read_caps_the_host_numbers(tmp_path, missing):
    files = v2(4 * GIB, 3 * GIB, GIB)
    del files[missing]
    assert host_memory(fake_root(tmp_path, files)) == (4 * GIB, 4 * GIB)  # as before: the limit, the host's free
    files = {"memory.max": f"{4 * GIB}\n", "memory.current": f"{3 * GIB}\n", "memory.stat": "anon 1\n"}  # no field
    assert host_memory(fake_root(tmp_path / "b", files)) == (4 * GIB, 4 * GIB)


def test_the_process_s_own_nested_cgroup_limit_counts(tmp_path):
    # a Slurm job (v1): the mount's root is unlimited, the job's cgroup is not, and its parent is tighter still
    job = "slurm/uid_1000/job_42/"
    files = {**v1(2**63 - 4096, 20 * GIB, 0), **v1(6 * GIB, 5 * GIB, GIB, under=job),
             **v1(12 * GIB, 11 * GIB, 4 * GIB, under="slurm/uid_1000/")}
    root = fake_root(tmp_path, files, cgroup="9:cpu:/\n4:memory:/slurm/uid_1000/job_42\n0::/\n")
    assert host_memory(root) == (6 * GIB, 2 * GIB)  # the job leaves 2 GiB, its user's cgroup 5 GiB: the tighter
    # a systemd service (v2)
    root = fake_root(tmp_path / "b", v2(3 * GIB, 2 * GIB, GIB, under="system.slice/train.service/"),
                     cgroup="0::/system.slice/train.service\n")
    assert host_memory(root) == (3 * GIB, 2 * GIB)


def test_a_cgroup_path_the_mount_does_not_hold_reads_the_mount_s_own_files(tmp_path):
    # a container without a cgroup namespace: /proc/self/cgroup names the host's path, the mount is its own cgroup
    root = fake_root(tmp_path, v1(4 * GIB, 3 * GIB, GIB), cgroup="4:memory:/docker/0123abcd\n0::/\n")
    assert host_memory(root) == (4 * GIB, 2 * GIB)


@pytest.fixture
def host_of_64(monkeypatch):
    """A 64-CPU host whose affinity mask allows all of them."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr("os.cpu_count", lambda: 64)


@pytest.mark.parametrize("cpu_max, cpus", [("max 100000\n", 64), ("200000 100000\n", 2), ("150000 100000\n", 1),
                                           ("50000 100000\n", 1), ("1600000 100000\n", 16)])
def test_a_v2_cpu_quota_caps_the_cpus_rounded_down(tmp_path, host_of_64, cpu_max, cpus):
    # docker --cpus=2 or a Kubernetes limit of 2 CPUs: cpu.max "200000 100000"; a quota below one CPU still gets one
    assert usable_cpus(fake_root(tmp_path, {"cpu.max": cpu_max})) == cpus


def test_the_tightest_v1_quota_on_the_process_s_cgroups_counts(tmp_path, host_of_64):
    # a Slurm job (v1): no quota at the mount's root (-1), 4 CPUs on the job, 8 on its user's cgroup
    files = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n",
             "cpu/slurm/uid_1000/job_42/cpu.cfs_quota_us": "400000\n",
             "cpu/slurm/uid_1000/job_42/cpu.cfs_period_us": "100000\n",
             "cpu/slurm/uid_1000/cpu.cfs_quota_us": "800000\n", "cpu/slurm/uid_1000/cpu.cfs_period_us": "100000\n"}
    root = fake_root(tmp_path, files, cgroup="9:cpu,cpuacct:/slurm/uid_1000/job_42\n4:memory:/\n0::/\n")
    assert usable_cpus(root) == 4
    assert usable_cpus(fake_root(tmp_path / "none", {})) == 64  # no cgroup files at all: the affinity mask


def test_the_affinity_mask_counts_not_the_host_s_cpus(tmp_path, monkeypatch):
    # taskset -c 0-2, a cpuset, Slurm's binding: os.cpu_count() still says 64
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2})
    assert usable_cpus(fake_root(tmp_path, {})) == 3
    assert usable_cpus(fake_root(tmp_path / "q", {"cpu.max": "200000 100000\n"})) == 2  # and a quota below it


def test_the_mujoco_backend_and_torch_default_to_the_usable_cpus(monkeypatch, tmp_path):
    import torch

    from envs import make_env
    from robo_rl.train import train
    from tests.helpers import compose

    monkeypatch.setattr("envs.mujoco.backend.usable_cpus", lambda: 3)
    env = make_env("Hopper-v5", num_envs=8, backend="mujoco")
    try:
        assert env.batch.nthread == 3
    finally:
        env.close()
    # threads=null (SAC's default): torch's own default, capped at the usable CPUs; the caller's count is back after
    monkeypatch.setattr("robo_rl.train.usable_cpus", lambda: 1)
    seen = []
    monkeypatch.setattr("robo_rl.train.seed_everything", lambda seed: seen.append(torch.get_num_threads()))
    monkeypatch.setattr("robo_rl.train.build_env_checked", lambda cfg: (_ for _ in ()).throw(RuntimeError("stop here")))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(RuntimeError, match="stop here"):
            train(compose("algo=sac", "env=pendulum", "steps=10"), tmp_path / "run")
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
