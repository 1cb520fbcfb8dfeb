"""Run outputs: metric rows to CSV and TensorBoard, progress lines on the console, the curve PNG."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import secrets
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

from robo_rl.runners.stopping import Interrupted

log = logging.getLogger("robo_rl")


WARNING_PREFIX = "robo-rl: warning: "
ERROR_PREFIX = "robo-rl: error: "  # as the CLI prints an error


class LogFormatter(logging.Formatter):
    """The robo_rl logger's lines (console and train.log): a warning starts with ``robo-rl: warning:``, an error with
    ``robo-rl: error:``, as README's and the CLI's lines on stderr do, whether or not its message says so itself
    ("skipping step_X: ..." from checkpoint reading, "could not draw the learning curve", a bf16 note, train.log's
    "stopped: ..." and a sweep's "N of M job(s) failed" came bare, not recognisable as warnings or errors)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        prefix = (ERROR_PREFIX if record.levelno >= logging.ERROR else WARNING_PREFIX if record.levelno == logging.WARNING
                  else "")
        if prefix and not record.message.startswith(prefix):
            record = logging.makeLogRecord({**record.__dict__, "message": prefix + record.message})
        return super().formatMessage(record)


class OnceEach(logging.Filter):
    """A handler's filter that lets each warning through once, word for word (for one run: train.py): the evaluation
    envs, built from the training envs' config, repeated the notes their build gives (MuJoCo Warp's solver,
    HumanoidStandup's uph_cost_weight) on the console and in train.log.

    It remembers the latest ``remember`` distinct warnings, not all: one that names its step ("2 simulation(s) diverged
    at step 41,000 ...") never repeats, and a run whose simulations often diverged kept each for its whole length."""

    def __init__(self, remember: int = 1000) -> None:
        super().__init__()
        self.remember = remember
        self.seen: OrderedDict[tuple[str, str], None] = OrderedDict()  # oldest first

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        key = (record.name, record.getMessage())
        if key in self.seen:
            self.seen.move_to_end(key)
            return False
        self.seen[key] = None
        if len(self.seen) > self.remember:
            self.seen.popitem(last=False)
        return True


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever ``sys.stderr`` is when a line is written, not the one it was made with: the handler
    outlives a call (``console_handler`` adds it once per process), and a notebook cell's capture or a redirect that
    was current at the first call and closed since got every later call's lines ("Logging error ... I/O operation on
    closed file"), while the later caller's own stderr got none."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # (StreamHandler.__init__ and setStream assign it: always sys.stderr)
        pass


def console_handler() -> logging.Handler:
    """The robo_rl logger's handler of plain `message` lines on stderr (the current ``sys.stderr`` at each line),
    added once; the logger then stops propagating to the root logger (whose handlers would print each line again).
    The logger's level is left as it is."""
    for handler in log.handlers:
        if getattr(handler, "_robo_rl", False):
            return handler
    handler = _StderrHandler()
    handler.setFormatter(LogFormatter("%(message)s"))
    handler._robo_rl = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.propagate = False
    return handler


def setup_console_logging(level: int = logging.INFO) -> None:
    """Plain `message` lines on stderr for the robo_rl logger, at ``level`` (idempotent)."""
    console_handler()
    log.setLevel(level)


class AtLeast(logging.Filter):
    """Passes records at ``level`` or above (a handler's own level would outlast the run, or be the caller's)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


class RunLogFile(logging.FileHandler):
    """A run's ``train.log``: robo-rl's lines with time stamps, each warning once. A write that fails (a full disk)
    ends the file's lines with one warning on the console, where logging printed a traceback for every line after it
    (thousands, the run's one-line error lost among them); closing it never raises over the error that ends a run."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.setFormatter(LogFormatter("%(asctime)s %(message)s"))
        self.addFilter(OnceEach())
        self.failed: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed is None:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # called inside emit, with the error being handled
        if self.failed is not None:
            return
        self.failed = error = sys.exc_info()[1]
        log.warning(f"{self.baseFilename} could not be written ({getattr(error, 'strerror', None) or error}): the run's "
                    "lines from here on are on the console only")

    def stopped(self, exc: BaseException) -> None:
        """Record why the run stopped (the console has it from the CLI's error line), with the traceback of its cause
        when the error asks for it (``log_cause_traceback``: a task's own error, which the console gives in one line)."""
        cause = exc.__cause__ if getattr(exc, "log_cause_traceback", False) else None
        exc_info = (type(cause), cause, cause.__traceback__) if cause is not None else None
        self.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, f"stopped: {type(exc).__name__}: {exc}",
                                   None, exc_info))

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # its buffered lines could not be flushed: the failure is the run's to report
            pass


@contextlib.contextmanager
def run_logging(run_dir: Path) -> Iterator[None]:
    """For a run that ``runner.train()`` starts itself (``build_runner(...).train()``), what ``robo_rl.train.train``
    sets up for its runs: the progress lines and warnings on the console (a caller's level above INFO kept there and
    in its own handlers), each warning once, and every line in the run's ``train.log``; the logger's level as it was
    afterwards. Such a run printed nothing but Python's bare last-resort warnings, and wrote no train.log. Nothing is
    done when ``train()`` has set them up (its handler for this run's train.log is attached)."""
    path = (Path(run_dir) / "train.log").resolve()
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename).resolve() == path for h in log.handlers):
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    caller_level = log.level
    console_handler()
    log.setLevel(logging.INFO)
    quiet = [(h, AtLeast(caller_level)) for h in log.handlers] if caller_level > logging.INFO else []
    once = [(h, OnceEach()) for h in log.handlers if getattr(h, "_robo_rl", False)]
    file_handler = RunLogFile(path)
    for handler, each in [*once, *quiet]:
        handler.addFilter(each)
    log.addHandler(file_handler)
    try:
        yield
    except BaseException as exc:  # train.log records why the run stopped, as train()'s does
        if not isinstance(exc, Interrupted):
            file_handler.stopped(exc)
        raise
    finally:
        log.removeHandler(file_handler)
        file_handler.close()
        for handler, each in [*once, *quiet]:
            handler.removeFilter(each)
        log.setLevel(caller_level)


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def return_decimals(*values: float | None, minimum: int = 1) -> int:
    """Decimals that show the largest of ``values`` to 3 significant digits, never fewer than ``minimum``: at a fixed
    one decimal, tasks whose returns are ~1 or less (TwoGoals, ContactMaze) read as "-0.0 ± 0.0"."""
    scale = max((abs(v) for v in values if v is not None and math.isfinite(v)), default=0.0)
    if scale == 0.0:
        return minimum
    return max(minimum, min(6, 2 - math.floor(math.log10(scale))))


def format_return(mean: float, std: float | None = None) -> str:
    """``mean`` (or ``mean ± std``, both to the same decimals) as a progress line or table shows a return."""
    d = return_decimals(mean, std)
    return f"{mean:.{d}f}" + (f" ± {std:.{d}f}" if std is not None else "")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a hidden file renamed over it, so a reader (``robo-rl compare``, a resume) sees
    the old file or the new one, never a cut one: a full disk or a kill mid-write left summary.json and eval.json cut
    (the earlier, good one lost). The hidden file is removed if the write fails.

    The hidden file is this write's own (``.<name>.<random>.tmp``, created exclusively): two writers of one file at
    once (two ``robo-rl eval`` of a run) shared a fixed ``.<name>.tmp``, so one renamed the other's half-written text
    into place (eval.json read as cut or mixed JSON) and the other failed, its file renamed away."""
    try:
        tmp = new_hidden_file(path)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    try:
        tmp.write_text(text, encoding="utf-8", newline="")  # the text's own line ends (csv writes \r\n)
        tmp.replace(path)
    except OSError as exc:  # named by the file it was for, not the hidden one
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_figure_atomic(fig: Any, path: Path, **kwargs: Any) -> None:
    """``fig.savefig(path, **kwargs)`` through a hidden file renamed over it, as ``write_text_atomic``: a save that
    fails (a full disk) left a cut PNG (compare.png, learning_curve.png) in place of the earlier, whole one."""
    tmp = new_hidden_file(path)
    try:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)  # (the hidden name's suffix is .tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def new_hidden_file(path: Path) -> Path:
    """A new empty file ``.<path's name>.<random>.tmp`` beside ``path`` that no other writer has (``O_EXCL``), with
    the permissions a plain write would give it (``tempfile.mkstemp`` makes it owner-only)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # another writer's: draw another name
            continue


def _quiet_tensorboard_thread_errors() -> None:
    """TensorBoard's event writer fails a write (a full disk) on its own thread, where Python printed the traceback, and
    raises the same error again at the run's next ``add_scalar`` or ``close``, which the run reports in one line: the
    thread's copy is dropped (other threads' errors print as before). Installed once per process."""
    previous = threading.excepthook
    if getattr(previous, "_robo_rl", False):
        return

    def hook(args: Any) -> None:
        if not (isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
            previous(args)

    hook._robo_rl = True  # type: ignore[attr-defined]
    threading.excepthook = hook


class MetricsWriter:
    """Appends rows of scalars to ``metrics.csv`` (and TensorBoard event files) in a run directory.

    The CSV is wide: one column per metric, empty where a row has no value. When a new metric
    appears (e.g. the first evaluation), the file is rewritten with the wider header.

    The rows are kept in the file, not in memory (``rows`` reads them back): a run of millions of steps at a small
    ``log.every`` writes tens of thousands, and holding each as a dict grew the process by ~1 KB per row.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, resume_step: int | None = None) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)  # a runner built from Python (build_runner) may name a new one
        self.path = run_dir / "metrics.csv"
        self.columns: list[str] = ["step", "wall_time"]
        if resume_step is not None and self.path.exists():
            self.columns, rows = _rows_up_to(self.path, resume_step, self.columns)
            self._rewrite(rows)
        self.tb = None
        # a resumed run without TensorBoard (log.tensorboard=false) still drops the earlier segments' events after the
        # checkpoint: they are of steps the resume trains again (the CSV no longer has them)
        if tensorboard or (resume_step is not None and (run_dir / "tb").is_dir()):
            from torch.utils.tensorboard import SummaryWriter

            _quiet_tensorboard_thread_errors()
            # events after the checkpoint's step are dropped (the CSV keeps rows up to and including it)
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=None if resume_step is None else resume_step + 1)
            if not tensorboard:  # the purge is written: nothing more
                self.tb.close()
                self.tb = None

    @property
    def rows(self) -> list[dict[str, float]]:
        """The rows written so far, read back from ``metrics.csv`` (each without its empty columns; "step" an int)."""
        if not self.path.exists():
            return []
        return _rows_up_to(self.path, math.inf, self.columns)[1]  # type: ignore[arg-type]

    def write(self, step: int, wall_time: float, scalars: dict[str, float]) -> None:
        row = {"step": int(step), "wall_time": wall_time, **scalars}  # a whole number: the CSV reads "4096", not "4096.0"
        new = [k for k in row if k not in self.columns]
        if new or not self.path.exists():
            # the earlier rows as the file holds them (their text unchanged), under the wider header
            earlier = list(csv.DictReader(complete_lines(self.path.read_text(encoding="utf-8"))[0])) \
                if self.path.exists() else []
            self.columns.extend(new)
            self._rewrite([*earlier, row])
        else:
            try:
                with open(self.path, "a", newline="") as f:
                    csv.DictWriter(f, self.columns).writerow(row)
            except OSError as exc:  # a failed flush names no file: the run's one-line error should
                raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
        if self.tb is not None:
            try:
                for key, value in scalars.items():
                    self.tb.add_scalar(key, value, step)
            except OSError as exc:  # the event writer's own error names no file
                raise OSError(exc.errno, exc.strerror, str(self.path.parent / "tb")) from exc

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, self.columns)
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(self.path, text.getvalue())

    def close(self) -> None:
        """Close the TensorBoard writer (once: a writer that failed, e.g. on a full disk, raises its error here, and the
        run's summary, written next, must not meet it again)."""
        tb, self.tb = self.tb, None
        if tb is not None:
            try:
                tb.close()
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, str(self.path.parent / "tb")) from exc


def not_a_file(path: Path) -> str | None:
    """What ``path`` is instead of a regular file to read (None: a file, or a link to one). A run's own files are
    read whole: a device in their place (a link to /dev/zero) would be read until memory ran out, and a named pipe
    would wait for a writer."""
    if path.is_file():
        return None
    if path.is_dir():
        return "a directory"
    if path.is_symlink() and not path.exists():
        return f"a broken symbolic link (to {os.readlink(path)})"
    return "not a regular file (a device, pipe or socket)" if path.exists() else "no such file"


def complete_lines(text: str) -> tuple[list[str], bool]:
    """A metrics.csv's lines without a last one cut off mid-write (no line end: the run was killed, or its disk filled,
    while writing it, or it is being written now; its numbers are cut too, "-1373.4" read as -13), and whether one was.
    A header alone is kept."""
    lines = text.splitlines(keepends=True)
    cut = len(lines) > 1 and not lines[-1].endswith(("\n", "\r"))
    return (lines[:-1] if cut else lines), cut


def _rows_up_to(path: Path, step: int, columns: list[str]) -> tuple[list[str], list[dict[str, float]]]:
    """The header and the rows up to ``step`` of a run's metrics.csv, for a resume from the checkpoint at ``step``.

    Rows after it are dropped unread: the process that wrote them may have stopped mid-row (killed, or a full
    disk), and the resumed run writes them again. A line without its newline is such a cut-off row whatever
    its step reads as ("2250.0" cut to "22"). A kept row that is not numbers is a ValueError naming the file."""
    try:
        problem = not_a_file(path)
        if problem is not None:
            raise OSError(problem)
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot be read to continue the run's metrics ({exc}); move it aside to resume "
                         "without the earlier rows") from None
    lines, _ = complete_lines(text)  # a cut row was written after the checkpoint (rows are complete before a save)
    damaged = (f"; the file was edited or damaged: repair that line, or move {path.name} aside to resume without "
               "the earlier rows")
    try:
        reader = csv.DictReader(lines)
        header = list(reader.fieldnames or columns)
        rows = []
        for line, row in enumerate(reader, start=2):  # (a row spanning lines would shift the count; none does)
            try:
                row_step = float(row.get("step") or "nan")
            except ValueError:
                row_step = math.nan
            if not math.isfinite(row_step):
                raise ValueError(f"{path}: line {line}: step is {row.get('step')!r}, not a number{damaged}")
            if row_step > step:
                break  # written after the checkpoint, as every later row (steps only grow): not read
            if None in row:
                raise ValueError(f"{path}: line {line}: more values than the header's {len(header)} columns{damaged}")
            parsed = {}
            for key, value in row.items():
                if value in ("", None):
                    continue
                try:
                    parsed[key] = int(row_step) if key == "step" and row_step.is_integer() else float(value)
                except ValueError:
                    raise ValueError(f"{path}: line {line} (step {row['step']}): {key} is {value!r}, not a "
                                     f"number{damaged}") from None
            rows.append(parsed)
    except csv.Error as exc:  # e.g. NUL bytes a crash left in the file
        raise ValueError(f"{path}: not a readable metrics file ({exc}){damaged}") from None
    return header, rows


class Progress:
    """One console line every ``every_seconds``: steps, steps/s, recent return, eval, ETA."""

    def __init__(self, label: str, total_steps: int, every_seconds: float, start_step: int = 0) -> None:
        self.label, self.total = label, total_steps
        self.every = every_seconds
        self._last_t = time.perf_counter()
        self._last_step = start_step
        self._rate: float | None = None  # smoothed steps/s of training alone, for the ETA
        self._last_paused = 0.0
        self._trained = 0.0  # seconds since the start spent training, and outside it (evaluations, checkpoints)
        self._paused = 0.0

    def maybe_print(self, step: int, recent_return: float | None, eval_return: tuple[float, float] | None, force: bool = False,
                    recent_cost: float | None = None, paused: float = 0.0) -> None:
        """``paused``: seconds spent outside training (evaluations, checkpoints) since this Progress began."""
        now = time.perf_counter()
        if not force and now - self._last_t < self.every:
            return
        if step == self._last_step:  # no step since the last line (or the start): nothing new, and "0 steps/s"
            return
        elapsed = max(now - self._last_t, 1e-9)
        pause = min(max(paused - self._last_paused, 0.0), elapsed)
        rate = (step - self._last_step) / elapsed  # what a periodic line shows: the interval's pace, pauses included
        # ETA from the training rate (pauses left out), smoothed over prints, but restarted when the pace changes
        # regime (more than 2x): an off-policy run's random-action warm-up is ~10x faster than its training, and
        # carrying that rate over gave a first ETA several times too short (an evaluation's interval, counted
        # whole, looked like such a change and sent that line's ETA up to 2.5x too long)
        train_rate = (step - self._last_step) / max(elapsed - pause, 1e-9)
        if force:  # the closing line: its interval is mostly the final evaluation and save ("12 steps/s" just
            rate = train_rate  # before "done: ... (138 steps/s)"), so it shows the training pace
        if self._rate is None or not 0.5 * self._rate <= train_rate <= 2.0 * self._rate:
            self._rate = train_rate
        else:
            self._rate = 0.7 * self._rate + 0.3 * train_rate
        self._trained += elapsed - pause
        self._paused += pause
        # the pauses to come in proportion to those so far
        eta = (self.total - step) / self._rate * (1 + self._paused / max(self._trained, 1e-9)) if self._rate > 0 else math.inf
        parts = [
            f"[{self.label}] step {step:,}/{self.total:,} ({100 * step // self.total}%)",  # 100% only when done
            f"{rate:,.0f} steps/s",
            f"return {format_return(recent_return)}" if recent_return is not None else "return -",
        ]
        if recent_cost is not None:  # a task that reports a safety cost (e.g. injected energy)
            parts.append(f"cost {recent_cost:.3g}")
        if eval_return is not None:
            parts.append(f"eval {format_return(*eval_return)}")
        parts.append(f"ETA {format_duration(eta)}")
        log.info(" | ".join(parts))
        self._last_t, self._last_step, self._last_paused = now, step, paused


def plot_learning_curve(rows: list[dict[str, float]], path: Path, title: str) -> Path | None:
    """Training-episode return and evaluation return against env steps, as a PNG."""
    # a Figure of its own, not pyplot's: matplotlib.use("Agg") switched the caller's backend (a notebook's inline
    # plots) for the rest of the process
    from matplotlib.figure import Figure

    train = [(r["step"], r["rollout/ep_return_mean"]) for r in rows if "rollout/ep_return_mean" in r]
    evals = [(r["step"], r["eval/return_mean"], r.get("eval/return_std", 0.0)) for r in rows if "eval/return_mean" in r]
    if not train and not evals:
        return None
    fig = Figure(figsize=(7, 4), dpi=120)
    ax = fig.subplots()
    if train:
        ax.plot([s for s, _ in train], [v for _, v in train], label="training episodes (recent mean)", alpha=0.8)
    if evals:
        xs = [s for s, _, _ in evals]
        ms = [m for _, m, _ in evals]
        sd = [d for _, _, d in evals]
        ax.errorbar(xs, ms, yerr=sd, fmt="o-", capsize=3, label="evaluation (mean ± std)")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    save_figure_atomic(fig, path)
    return path


def mean_of(values: Any) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None
