"""What checkpointing an off-policy run's replay buffer costs at scale: time, memory and disk.

A SAC runner on Humanoid-v5 (348 observations, 17 actions, the default algo.buffer_size of 1,000,000)
gets its replay buffer filled with random rows directly (no training), then:

  save     ``Runner.save`` (replay.state_dict + robo_rl.checkpoint.save_checkpoint) of a buffer holding
           --rows rows, and of one holding a tenth of them, broken down into the replay's state_dict,
           the training state's flattening, safetensors, the replay.npz write, fsync, sha256, rename and
           pruning (each timed by wrapping the function robo_rl.checkpoint calls); peak extra resident
           memory (VmHWM reset before the call) and peak extra anonymous memory (RssAnon sampled every 2 ms)
  disk     --keep + 1 full saves with checkpoint.keep=--keep: checkpoints left, replay.npz files, bytes
  load     ``load_checkpoint(load_replay=True)`` + ``ReplayBuffer.load_state_dict`` into a fresh buffer, with
           the checkpoint's pages dropped from the page cache first (cold: posix_fadvise DONTNEED) and again
           with them cached (warm); verification (sha256 of every file) included
  eval     ``load_checkpoint(load_replay=False)`` (what evaluate/export load), cold
  training SAC's own speed (default settings, one update per env step) over --train-steps steps after
           learning_starts, and what the saves add to a default run (steps=100k, checkpoint.every=10k, the
           buffer holding step rows at each save) and to a steps=1e6 run (every 100k), from a line fitted
           through the two measured save times

    python benchmarks/checkpoint_cost.py                           # 1M rows, keep=3
    python benchmarks/checkpoint_cost.py --rows 200000 --train-steps 200 --name checkpoint_cost_small
    python benchmarks/checkpoint_cost.py --dir /mnt/ssd/tmp        # the disk the runs write to
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import markdown_table, save, whole_number  # noqa: E402

GB = 1e9


# -- memory ------------------------------------------------------------------------------------------

def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


@contextmanager
def peak_memory() -> Iterator[dict[str, float]]:
    """Peak extra RSS (VmHWM, reset on entry) and peak extra anonymous memory (sampled) inside the block."""
    out: dict[str, float] = {}
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        hwm_ok = True
    except OSError:
        hwm_ok = False
    rss0, anon0 = _status("VmRSS"), _status("RssAnon")
    peak_anon = [anon0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            peak_anon[0] = max(peak_anon[0], _status("RssAnon"))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        done.set()
        thread.join()
        peak_anon[0] = max(peak_anon[0], _status("RssAnon"))
        out["peak_extra_rss_gb"] = (_status("VmHWM") - rss0) / GB if hwm_ok else float("nan")
        out["peak_extra_anon_gb"] = (peak_anon[0] - anon0) / GB


def drop_cache(path: Path) -> None:
    """Drop ``path``'s files from the page cache (they are clean after the save's fsync)."""
    for f in path.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


# -- phase timing ------------------------------------------------------------------------------------

class Phases:
    """Wraps functions robo_rl.checkpoint calls (whichever exist in this version) and sums their time."""

    NAMES = ("recover", "flatten_state", "save_file", "_write_npz", "_fsync", "_sha256", "prune_checkpoints",
             "verify_checkpoint", "load_file", "_read_npz")
    PROXIED = {"np": ("savez", "load"), "os": ("replace",)}

    def __init__(self) -> None:
        import robo_rl.checkpoint as ckpt

        self.mod, self.totals, self.saved = ckpt, {}, {}
        for name in self.NAMES:
            if hasattr(ckpt, name):
                self.saved[name] = getattr(ckpt, name)
                setattr(ckpt, name, self._timed(name, getattr(ckpt, name)))
        for modname, attrs in self.PROXIED.items():
            real = getattr(ckpt, modname)
            self.saved[modname] = real
            proxy = _Proxy(real, {a: self._timed(f"{modname}.{a}", getattr(real, a)) for a in attrs})
            setattr(ckpt, modname, proxy)

    def _timed(self, name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t
        return wrapper

    def take(self) -> dict[str, float]:
        out, self.totals = self.totals, {}
        return out

    def restore(self) -> None:
        for name, fn in self.saved.items():
            setattr(self.mod, name, fn)


class _Proxy:
    def __init__(self, real: Any, overrides: dict[str, Any]) -> None:
        self._real, self._overrides = real, overrides

    def __getattr__(self, name: str) -> Any:
        return self._overrides[name] if name in self._overrides else getattr(self._real, name)


# -- the runner --------------------------------------------------------------------------------------

def build(run_dir: Path, keep: int, rows: int, learning_starts: int):
    from robo_rl.build import build_env, build_learner, build_policy, build_runner
    from robo_rl.train import compose_config, prepare

    overrides = ["algo=sac", "env=humanoid", "env.backend=mujoco", "seed=0", f"checkpoint.keep={keep}",
                 f"algo.buffer_size={max(rows, 1_000_000)}", f"algo.learning_starts={learning_starts}"]
    cfg, _ = prepare(compose_config(overrides), run_dir)
    env = build_env(cfg)
    eval_env = build_env(cfg, num_envs=1)
    runner = build_runner(cfg, build_learner(cfg, build_policy(cfg, env)), env, eval_env, run_dir)
    runner.threads = cfg.threads or torch.get_num_threads()
    runner.obs = env.reset(seed=0)
    return cfg, runner


def train_speed(runner: Any, learning_starts: int, steps: int) -> float:
    while runner.step < learning_starts + 50:
        runner.iterate()
    t, start = time.perf_counter(), runner.step
    while runner.step < start + steps:
        runner.iterate()
    return (runner.step - start) / (time.perf_counter() - t)


def fill(replay: Any, rows: int) -> None:
    g = torch.Generator().manual_seed(0)
    for name in replay.fields:
        t = getattr(replay, name)
        t.uniform_(-1, 1, generator=g) if name != "terminated" else t.bernoulli_(0.01, generator=g)
    replay.size, replay.pos = rows, rows % replay.capacity


def timed_save(runner: Any, phases: Phases, step: int) -> dict[str, Any]:
    real_state_dict, took = runner.replay.state_dict, {}

    def state_dict() -> Any:
        t = time.perf_counter()
        out = real_state_dict()
        took["replay.state_dict"] = time.perf_counter() - t
        return out

    runner.replay.state_dict = state_dict
    runner.step = step
    phases.take()
    try:
        with peak_memory() as mem:
            t = time.perf_counter()
            path = runner.save(0.0)
            total = time.perf_counter() - t
    finally:
        del runner.replay.state_dict
    parts = {**took, **phases.take()}
    size = sum(f.stat().st_size for f in path.iterdir())
    return {"step": step, "rows": runner.replay.size, "total_s": total, "parts_s": parts, "bytes": size, **mem}


def timed_load(path: Path, replay_factory: Any, cold: bool, phases: Phases, load_replay: bool = True) -> dict[str, Any]:
    from robo_rl.checkpoint import load_checkpoint

    buf = replay_factory() if load_replay else None
    if cold:
        drop_cache(path)
    phases.take()
    with peak_memory() as mem:
        t = time.perf_counter()
        state, replay = load_checkpoint(path, load_replay=load_replay)
        t_ckpt = time.perf_counter() - t
        if load_replay:
            buf.load_state_dict(replay)
        del state, replay
        total = time.perf_counter() - t
    parts = phases.take()
    parts["load_checkpoint"] = t_ckpt
    if load_replay:
        parts["ReplayBuffer.load_state_dict"] = total - t_ckpt
    return {"cold": cold, "load_replay": load_replay, "total_s": total, "parts_s": parts, **mem}


def fmt_parts(parts: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]) if v >= 0.005)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=whole_number(), default=1_000_000, help="rows in the full buffer (default: algo.buffer_size)")
    ap.add_argument("--keep", type=whole_number(), default=3, help="checkpoint.keep (default: the config's, 3)")
    ap.add_argument("--train-steps", type=whole_number(), default=300, help="timed SAC env steps (one update each)")
    ap.add_argument("--learning-starts", type=whole_number(0), default=1000)
    ap.add_argument("--speeds", type=float, nargs="*", default=[50.0, 100.0],
                    help="SAC env steps/s to compute a run's share of saving at, besides the measured one")
    ap.add_argument("--dir", default=None, help="where the run directory goes (default: the system's temp dir)")
    ap.add_argument("--name", default="checkpoint_cost")
    args = ap.parse_args()

    from robo_rl.storage.replay import ReplayBuffer

    if args.dir is not None:
        Path(args.dir).mkdir(parents=True, exist_ok=True)  # a scratch location the user named
    root = Path(tempfile.mkdtemp(prefix="ckpt-cost-", dir=args.dir))
    try:
        cfg, runner = build(root / "run", args.keep, args.rows, args.learning_starts)
        print(f"SAC Humanoid-v5: obs {runner.env.obs_dim}, act {runner.env.act_dim}, buffer capacity "
              f"{runner.replay.capacity:,}; run dir {root}", flush=True)
        speed = train_speed(runner, args.learning_starts, args.train_steps)
        print(f"training: {speed:.1f} env steps/s (one update per step)", flush=True)

        fill(runner.replay, args.rows)
        phases = Phases()
        saves = []
        small = max(args.rows // 10, 1)
        runner.replay.size, runner.replay.pos = small, small % runner.replay.capacity
        saves.append(timed_save(runner, phases, 10_000_000))
        runner.replay.size, runner.replay.pos = args.rows, args.rows % runner.replay.capacity
        for i in range(args.keep + 1):  # the last keep hold a full buffer each
            saves.append(timed_save(runner, phases, 20_000_000 + i))
            s = saves[-1]
            print(f"save {s['rows']:,} rows: {s['total_s']:.2f} s ({fmt_parts(s['parts_s'])}); "
                  f"+{s['peak_extra_anon_gb']:.2f} GB anon, +{s['peak_extra_rss_gb']:.2f} GB RSS", flush=True)
        ckpts = sorted(p for p in runner.ckpt_dir.iterdir() if p.name.startswith("step_"))
        disk = {"checkpoints": len(ckpts), "with_replay": sum((p / "replay.npz").exists() for p in ckpts),
                "bytes": sum(f.stat().st_size for p in ckpts for f in p.iterdir()),
                "replay_bytes": [(p / "replay.npz").stat().st_size if (p / "replay.npz").exists() else 0 for p in ckpts]}
        print(f"disk: {disk}", flush=True)

        newest = ckpts[-1]
        capacity, obs_dim, act_dim = runner.replay.capacity, runner.env.obs_dim, runner.env.act_dim
        del runner  # frees the filled buffer: the loads build a fresh one

        def factory() -> ReplayBuffer:
            return ReplayBuffer(capacity, obs_dim, act_dim)

        loads = [timed_load(newest, factory, cold=True, phases=phases), timed_load(newest, factory, cold=False, phases=phases),
                 timed_load(newest, factory, cold=True, phases=phases, load_replay=False)]
        for ld in loads:
            print(f"load ({'cold' if ld['cold'] else 'warm'}, replay={ld['load_replay']}): {ld['total_s']:.2f} s "
                  f"({fmt_parts(ld['parts_s'])}); +{ld['peak_extra_anon_gb']:.2f} GB anon, "
                  f"+{ld['peak_extra_rss_gb']:.2f} GB RSS", flush=True)
        phases.restore()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    # what the saves add to a run: t(rows) = a + b * rows through the small and the (mean) full save
    full = saves[1:]
    t_full = float(np.mean([s["total_s"] for s in full]))
    b = (t_full - saves[0]["total_s"]) / (full[0]["rows"] - saves[0]["rows"])
    a = saves[0]["total_s"] - b * saves[0]["rows"]
    runs = {}
    row_bytes = full[0]["bytes"] / full[0]["rows"]
    for label, steps, every in (("default (steps=100k, every 10k)", 100_000, 10_000), ("steps=1e6 (every 100k)", 1_000_000, 100_000)):
        rows = [min(k, capacity) for k in range(every, steps + 1, every)]
        save_s = sum(a + b * r for r in rows)
        for sps in sorted({round(speed, 1), *args.speeds}):
            train_s = steps / sps
            runs[f"{label} at {sps:g} steps/s"] = {
                "steps": steps, "every": every, "steps_per_s": sps, "saves": len(rows), "save_s": save_s,
                "train_s": train_s, "fraction": save_s / (train_s + save_s), "largest_save_s": a + b * rows[-1],
                "disk_bytes_kept": row_bytes * sum(rows[-args.keep:])}

    part_names = sorted({k for s in full for k in s["parts_s"]}, key=lambda k: -full[-1]["parts_s"].get(k, 0.0))
    rows_tbl = [["save", f"{s['rows']:,}", f"{s['total_s']:.2f}", fmt_parts(s["parts_s"]), f"{s['peak_extra_rss_gb']:.2f}",
                 f"{s['peak_extra_anon_gb']:.2f}", f"{s['bytes'] / GB:.2f}"] for s in saves]
    rows_tbl += [[f"load ({'cold' if ld['cold'] else 'warm'}{'' if ld['load_replay'] else ', no replay'})", f"{args.rows:,}",
                  f"{ld['total_s']:.2f}", fmt_parts(ld["parts_s"]), f"{ld['peak_extra_rss_gb']:.2f}",
                  f"{ld['peak_extra_anon_gb']:.2f}", ""] for ld in loads]
    table = markdown_table(["operation", "rows", "seconds", "parts (s)", "peak extra RSS (GB)", "peak extra anon (GB)",
                            "checkpoint (GB)"], rows_tbl)
    table += (f"\n\nDisk after {args.keep + 1} full saves with checkpoint.keep={args.keep}: {disk['checkpoints']} checkpoints, "
              f"{disk['with_replay']} holding a replay.npz, {disk['bytes'] / GB:.2f} GB in all.\n\n")
    table += markdown_table(
        ["SAC Humanoid-v5 run", "saves", "training (s)", "saving (s)", "share of wall time", "largest save (s)",
         "checkpoints kept at the end (GB)"],
        [[k, v["saves"], f"{v['train_s']:,.0f}", f"{v['save_s']:.1f}", f"{100 * v['fraction']:.2f} %",
          f"{v['largest_save_s']:.2f}", f"{v['disk_bytes_kept'] / GB:.2f}"] for k, v in runs.items()])
    table += f"\n\nTraining speed {speed:.1f} env steps/s (SAC defaults, one update per step); save time t(rows) = {a:.2f} s + {b * 1e6:.2f} s per 1M rows."
    save(args.name, {"rows": args.rows, "obs_dim": obs_dim, "act_dim": act_dim, "keep": args.keep, "train_steps_per_s": speed,
                     "saves": saves, "disk": disk, "loads": loads, "save_time_fit": {"a_s": a, "b_s_per_row": b},
                     "runs": runs, "part_names": part_names}, table)


if __name__ == "__main__":
    main()
