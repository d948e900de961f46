"""Where a run may write, and who may write there: inputs are never written, one writer per folder.

- :func:`check_outputs` refuses an output path (file or folder) that is, or lies inside, an input
  file or folder, resolved through ``..`` and symlinks. Every command that writes uses it.
- :class:`OutputLock` holds ``<folder>/.label-mae.lock`` (the owner's pid, host, rank) while a run
  writes there: a second run on the same folder is refused with the owner named; a lock whose owner
  died (``kill -9``) is stale and taken over. Runs check, break and take locks one at a time (an
  ``flock`` on the folder). Ranks of one sharded run each hold their own lock.
  Taking the lock is also the first write into the folder, so a read-only or full disk is found
  before any work is done.
- :func:`remove_stale_temp_files` removes the temp files that :func:`torch_label_mae.io.atomic_write`
  leaves when its process is killed (``.<name>.<pid>.<random>.tmp``), only those of dead processes.
- :class:`RunReport` is what a run over a folder did: the base of the ``complete`` and ``audit`` reports.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "OutputLock",
    "OutputLockedError",
    "OutputWriteError",
    "RunReport",
    "check_outputs",
    "remove_stale_temp_files",
]

LOCK_PREFIX = ".label-mae"


@dataclass(kw_only=True)
class RunReport:
    """What a run over a folder did (``complete_dataset``, ``audit_dataset``): labels ``done``,
    ``skipped`` (valid outputs there already) and ``failed`` (``(file, reason)`` pairs) of ``total``, in
    ``seconds``; ``finished`` (False: interrupted); where its report and outputs went."""

    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    total: int = 0
    seconds: float = 0.0
    finished: bool = False
    report_path: str | None = None
    out_dir: str | None = None
    labels_dir: str | None = None

    @property
    def ok(self) -> bool:
        """True when the run finished and no file failed."""
        return self.finished and not self.failed

    def empty_note(self) -> list[str]:
        """The summary's line for a run that found no labels (a wrong folder, most likely), else none;
        it names the labels folder's subfolders that hold PNGs (labels are read from the folder itself)."""
        if self.total:
            return []
        note = "  nothing to do: no label PNG (<id>.png) in the labels folder"
        try:  # no labels folder recorded: nothing to look in (not the working folder)
            subs = sorted(d.name for d in Path(self.labels_dir).iterdir() if d.is_dir() and any(d.glob("*.png")))
        except (OSError, TypeError):
            subs = []
        if subs:
            shown = ", ".join(f"{d}/" for d in subs[:5]) + (f" and {len(subs) - 5} more" if len(subs) > 5 else "")
            note += f"; its subfolders {shown} hold some: labels are read from the folder itself, give one of those"
        return [note]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["failed"] = [{"file": f, "reason": r} for f, r in self.failed]
        return d


class OutputWriteError(RuntimeError):
    """An output folder or file cannot be written (read-only, full, no permission). ``report``: what
    the run had done when it stopped, when there was a run."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class OutputLockedError(RuntimeError):
    """Another live run holds the lock of an output folder."""


def _resolved(path) -> Path:
    return Path(path).expanduser().resolve()


def check_outputs(
    outputs: Iterable[tuple[str, str | os.PathLike | None]],
    inputs: Iterable[tuple[str, str | os.PathLike | None]],
    allow: Iterable[tuple[str, str]] = (),
) -> None:
    """Raise ``ValueError`` when an output path is an input path or lies inside an input folder.

    ``outputs`` / ``inputs``: ``(what, path)`` pairs (``what`` names the argument in the message;
    ``None`` paths are ignored). Paths are compared after resolving ``..`` and symlinks. ``allow``:
    ``(output what, input what)`` pairs let through on purpose (e.g. writing into the labels folder
    in place).
    """
    inputs = [(w, _resolved(p)) for w, p in inputs if p is not None]
    allowed = set(allow)
    for what, path in outputs:
        if path is None:
            continue
        out = _resolved(path)
        for in_what, inp in inputs:
            if (what, in_what) in allowed:
                continue
            if out == inp:
                raise ValueError(f"{what} {out} is the {in_what} itself; outputs must not replace inputs")
            if inp in out.parents and inp.is_dir():
                raise ValueError(
                    f"{what} {out} is inside the {in_what} {inp}; outputs there could replace or mix with "
                    f"the inputs. Choose a path outside it"
                )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except (OverflowError, ValueError):
        return False
    return True


def _owner_alive(info: dict) -> bool:
    """True unless the lock's owner surely died: same host and no such process."""
    if info.get("host") != socket.gethostname():
        return True  # another machine on a shared disk: cannot tell, so assume it lives
    return _pid_alive(int(info.get("pid", -1)))


def read_json_object(path: str | Path, max_bytes: int | None = None) -> dict | None:
    """The JSON object in ``path``; None when there is no such file, it cannot be read or parsed, is not
    an object, or is larger than ``max_bytes``. For files a run wrote itself and reads back if it can."""
    path = Path(path)
    try:
        if max_bytes is not None and path.stat().st_size > max_bytes:
            return None
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # none there, half-written, not JSON, or nested too deep
        return None
    return obj if isinstance(obj, dict) else None


def _write_new(path: Path, text: str) -> None:
    """Create ``path`` (``FileExistsError`` when it exists) and write ``text``; removed again on failure."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError:
        path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _guard(folder: Path):
    """Hold an exclusive ``flock`` on ``folder`` itself (no file is left behind, and the kernel releases it
    when the holder dies, ``kill -9`` included): the runs taking or breaking locks in one folder do it one
    at a time. Where ``flock`` is unavailable (Windows; a file system that refuses it), unguarded."""
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


class OutputLock:
    """``with OutputLock(folder, rank, world_size):`` one writer per output folder.

    The lock file is ``.label-mae.lock`` for a single process and ``.label-mae.rank<k>.lock`` for
    rank ``k`` of a sharded run. Taking it fails with :class:`OutputLockedError` when a live process
    holds the same lock, or any lock of a run sharded differently (another ``world_size``), and with
    :class:`OutputWriteError` when the folder cannot be written.
    """

    def __init__(self, folder: str | os.PathLike, rank: int = 0, world_size: int = 1):
        self.folder, self.rank, self.world_size = Path(folder), rank, world_size
        name = f"{LOCK_PREFIX}.lock" if world_size == 1 else f"{LOCK_PREFIX}.rank{rank}.lock"
        self.path = self.folder / name

    def _check_others(self) -> None:
        for p in sorted(self.folder.glob(f"{LOCK_PREFIX}*.lock")):
            info = read_json_object(p)
            if info is None or not _owner_alive(info):  # stale: its owner died (or was killed taking it)
                p.unlink(missing_ok=True)
                continue
            if p == self.path or int(info.get("world_size", 1)) != self.world_size:
                raise OutputLockedError(
                    f"{self.folder}: another label-mae run writes here (pid {info.get('pid')} on "
                    f"{info.get('host')}, started {info.get('started')}, lock {p}); wait for it to finish "
                    f"or stop it. If no such run exists, delete {p}"
                )

    def __enter__(self) -> OutputLock:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "rank": self.rank,
            "world_size": self.world_size,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a file in the way (FileExistsError too), no permission, a read-only disk
            raise OutputWriteError(f"{self.folder}: cannot make this folder ({e.strerror or e})") from None
        try:
            with _guard(self.folder):  # the check and the creation, one run at a time
                self._check_others()
                _write_new(self.path, json.dumps(info))
        except FileExistsError:  # unguarded, another run took it between the check and now
            raise OutputLockedError(f"{self.folder}: another label-mae run took the lock {self.path}") from None
        except OSError as e:
            raise OutputWriteError(f"{self.folder}: cannot write here ({e.strerror or e})") from None
        return self

    def __exit__(self, *exc) -> None:
        info = read_json_object(self.path)
        if info is not None and info.get("pid") == os.getpid():
            with contextlib.suppress(OSError):  # a folder that turned read-only: the lock goes stale
                self.path.unlink(missing_ok=True)


def remove_stale_temp_files(folder: str | os.PathLike, names: set[str]) -> int:
    """Remove ``folder/.<name>.<pid>.<random>.tmp`` for ``names`` whose process is dead (a run killed
    mid-write); live runs' temp files are left alone. Returns how many were removed."""
    folder, removed = Path(folder), 0
    if not folder.is_dir():
        return 0
    for p in folder.iterdir():
        n = p.name
        if not (n.startswith(".") and n.endswith(".tmp")):
            continue
        stem, pid = n[1:-4].rpartition(".")[0], None  # drop the random part
        head, _, tail = stem.rpartition(".")
        if tail.isdigit() and head in names:  # .<name>.<pid>.<random>.tmp
            stem, pid = head, int(tail)
        if stem in names and (pid is None or (pid != os.getpid() and not _pid_alive(pid))):
            try:
                p.unlink(missing_ok=True)
                removed += 1
            except OSError as e:
                if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise
    return removed
