"""How much memory this process can use, and whether ``num_envs`` simulations can fit in it.

A batch of simulations is allocated up front (MuJoCo's state for every env, a random generator and
observation rows per env): a ``num_envs`` far beyond the machine used to end in ``std::bad_alloc``
from MuJoCo, or, when the allocation succeeded on overcommitted memory, in minutes of building envs
followed by the kernel's out-of-memory killer. Each backend states a floor on its bytes per env, and
``check_envs_fit`` refuses a batch whose floor alone exceeds the memory free now.
"""

from __future__ import annotations

import os
from pathlib import Path

# Every backend keeps at least a seeded random generator (~0.9 KiB in numpy) and a few numbers per env.
MIN_BYTES_PER_ENV = 1024


def _cgroup_limit() -> int | None:
    """The container's memory limit (cgroup v2, then v1), if one is set."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # v1 writes a huge number for "no limit"
            return int(text)
    return None


def host_memory() -> tuple[int | None, int | None]:
    """(total, available) bytes of memory this process can use, None where it cannot be read."""
    total = available = None
    try:
        fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
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
    limit = _cgroup_limit()
    if limit is not None:
        total = min(total, limit) if total is not None else limit
        available = min(available, limit) if available is not None else None
    return total, available


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
                          f"({bytes_per_env:,} bytes per env), more than the {gib(room)} of memory {of}; "
                          f"at most {max(room // bytes_per_env, 1):,} envs could fit")


def gib(n: int) -> str:
    """``n`` bytes for a message: GiB from a tenth of one, MiB below."""
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.1f} MiB"
