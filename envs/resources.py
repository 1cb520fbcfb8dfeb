"""How much memory and how many CPUs this process can use, and whether ``num_envs`` simulations can fit.

A batch of simulations is allocated up front (MuJoCo's state for every env, a random generator and
observation rows per env): a ``num_envs`` far beyond the machine used to end in ``std::bad_alloc``
from MuJoCo, or, when the allocation succeeded on overcommitted memory, in minutes of building envs
followed by the kernel's out-of-memory killer. Each backend states a floor on its bytes per env, and
``check_envs_fit`` refuses a batch whose floor alone exceeds the memory free now.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

# Every backend keeps at least a seeded random generator (~0.9 KiB in numpy) and a few numbers per env.
MIN_BYTES_PER_ENV = 1024


#: where host_memory reads /proc and /sys from (a test points it at a fake tree)
ROOT = Path("/")


def _read_int(path: Path) -> int | None:
    """The whole number a cgroup file holds; None when it is missing, unreadable or not a number ("max")."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat_field(path: Path, key: str) -> int | None:
    """A field of a cgroup ``memory.stat`` (one "key value" per line); None when missing or unreadable."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return None


def _cgroup_dirs(root: Path, controller: str) -> list[tuple[str, Path]]:
    """This process's cgroup directories for ``controller`` ("memory", "cpu"), each up to its hierarchy's root:
    (version, directory), cgroup v2 then v1 (whose hierarchy is mounted under the controller's name).

    A limit can sit on any of them: at the mount's root in a container with its own cgroup namespace, on a nested
    one where /proc/self/cgroup names the process's cgroup (a Slurm job, a systemd unit). A directory that does not
    exist (a container whose mount is its own cgroup while /proc/self/cgroup names the host's path) reads as none."""
    paths = {"v2": "/", "v1": "/"}
    try:
        for line in (root / "proc/self/cgroup").read_text().splitlines():
            number, controllers, path = line.split(":", 2)
            if number == "0" and not controllers:
                paths["v2"] = path
            elif controller in controllers.split(","):
                paths["v1"] = path
    except (OSError, ValueError):
        pass
    out = []
    for version, base in (("v2", root / "sys/fs/cgroup"), ("v1", root / "sys/fs/cgroup" / controller)):
        parts = [p for p in paths[version].split("/") if p and p not in (".", "..")]
        out += [(version, base.joinpath(*parts[:depth])) for depth in range(len(parts), -1, -1)]
    return out


def _own_cgroups(root: Path) -> list[tuple[Path, str, str, tuple[str, str]]]:
    """This process's memory cgroup directories (see ``_cgroup_dirs``): (directory, limit file, usage file, the
    memory.stat fields of its file-backed page cache), cgroup v2 then v1."""
    files = {"v2": ("memory.max", "memory.current", ("active_file", "inactive_file")),
             "v1": ("memory.limit_in_bytes", "memory.usage_in_bytes", ("total_active_file", "total_inactive_file"))}
    return [(directory, *files[version]) for version, directory in _cgroup_dirs(root, "memory")]


def _cgroup_memory(root: Path) -> tuple[int, int | None] | None:
    """(limit, free under it) of the tightest memory limit on this process's cgroups (v2, then v1), None if no
    limit is set; free is None where the cgroup's use cannot be read.

    Free under a limit is the limit less what the cgroup holds: its usage (memory.current, v1
    memory.usage_in_bytes) without its file-backed page cache (memory.stat active_file + inactive_file, v1
    total_*), which the kernel reclaims (active pages after demoting them) before it fails an allocation, the
    way the host's MemAvailable counts the page cache as available. Usage alone would count every cached file
    the run has read as taken; kubelet's "working set" keeps the active cache counted, which here would refuse
    runs the kernel would make room for (the check refuses; it does not warn). Shared memory (tmpfs) is not
    file-backed here: it stays counted."""
    limit = free = None
    for directory, limit_file, usage_file, cache_fields in _own_cgroups(root):
        cap = _read_int(directory / limit_file)
        if cap is None or cap >= 2**60:  # "max" (v2) or v1's huge number: no limit here
            continue
        usage = _read_int(directory / usage_file)
        cache = [_stat_field(directory / "memory.stat", field) for field in cache_fields]
        room = (max(cap - (usage - min(sum(cache), usage)), 0)  # type: ignore[arg-type]
                if usage is not None and None not in cache else None)
        limit = cap if limit is None else min(limit, cap)
        if room is not None:
            free = room if free is None else min(free, room)
    return None if limit is None else (limit, free)


def host_memory(root: Path | None = None) -> tuple[int | None, int | None]:
    """(total, available) bytes of memory this process can use, None where it cannot be read: the host's (RAM and
    swap, /proc/meminfo), within a cgroup memory limit the limit and what the cgroup leaves free under it.
    ``root``: the file system /proc and /sys are read from (default ``ROOT``, the real one)."""
    root = ROOT if root is None else Path(root)
    total = available = None
    try:
        fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in (root / "proc/meminfo").read_text().splitlines()
                  if line.split(":")[0] in ("MemTotal", "MemAvailable", "SwapFree")}
        total = fields.get("MemTotal")
        if "MemAvailable" in fields:
            available = fields["MemAvailable"] + fields.get("SwapFree", 0)
            total = (total or 0) + fields.get("SwapFree", 0) or None
    except (OSError, ValueError, IndexError):
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            pass
    cgroup = _cgroup_memory(root)
    if cgroup is not None:
        limit, free = cgroup
        total = min(total, limit) if total is not None else limit
        room = limit if free is None else free  # the cgroup's use unreadable: at most the limit, as the host allows
        available = min(available, room) if available is not None else free
    return total, available


def _cgroup_cpu_quota(root: Path) -> float | None:
    """The tightest CPU quota on this process's cgroups, in CPUs (quota / period: ``docker --cpus``, a Kubernetes
    CPU limit), None if none is set. cgroup v2 ``cpu.max`` ("max 100000" or "200000 100000"), v1
    ``cpu.cfs_quota_us`` (-1: none) over ``cpu.cfs_period_us``."""
    tightest = None
    for version, directory in _cgroup_dirs(root, "cpu"):
        if version == "v2":
            try:
                quota_text, period_text = (directory / "cpu.max").read_text().split()[:2]
            except (OSError, ValueError):
                continue
            quota = int(quota_text) if quota_text.isdigit() else None
            period = int(period_text) if period_text.isdigit() else None
        else:
            quota, period = _read_int(directory / "cpu.cfs_quota_us"), _read_int(directory / "cpu.cfs_period_us")
        if quota and period:
            tightest = quota / period if tightest is None else min(tightest, quota / period)
    return tightest


def usable_cpus(root: Path | None = None) -> int:
    """How many CPUs this process can keep busy: those its affinity mask allows (``taskset``, a cpuset, Slurm's
    binding), and no more than a cgroup CPU quota (``docker --cpus``, a Kubernetes CPU limit), rounded down, at
    least 1. ``os.cpu_count()`` counts the host's CPUs in both cases: a container limited to 2 CPUs on a 64-CPU
    host would start 64 simulation or torch threads, which use up a quota early in each scheduler period (100 ms
    by default) and then all wait for the next; threads that meet at every operation (OpenMP, a simulation
    batch's step) also wait for each other when fewer CPUs than threads are free. ``root`` as for ``host_memory``."""
    root = ROOT if root is None else Path(root)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity masks on this platform (macOS)
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(root)
    if quota is not None:
        cpus = min(cpus, math.floor(quota))
    return max(cpus, 1)


def check_envs_fit(task_id: str, num_envs: int, bytes_per_env: int) -> None:
    """Raise MemoryError naming ``num_envs`` when ``num_envs`` x ``bytes_per_env`` (a floor, not an
    estimate: the envs need at least this) exceeds the memory free now (or, where that cannot be read,
    the machine's total)."""
    total, available = host_memory()
    room = available if available is not None else total
    need = num_envs * bytes_per_env
    if room is not None and need > room:
        of = "free now" if available is not None else "in all"
        raise MemoryError(f"{task_id}: num_envs={num_envs:,} needs at least {gib(need)} "
                          f"({bytes_per_env:,} bytes per env), more than the {gib(room)} of memory {of}; even "
                          f"at that floor at most {max(room // bytes_per_env, 1):,} envs could fit, and an env "
                          "uses several times it: try far fewer")


def gib(n: int) -> str:
    """``n`` bytes for a message: GiB from a tenth of one, MiB below."""
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.1f} MiB"
