"""A run folder's OS lock, its stale temp files, and the overwrite transaction.

* :class:`RunLock` is an ``fcntl.flock`` on ``DIR/.gdx.lock``, held by the one process
  that writes the folder for the whole run; the kernel releases it on any exit, kill
  included. A second writer gets :class:`~gdx.errors.RunLockedError` naming the holder's
  pid (written into the lock file).
* :func:`remove_stale_temps` removes ``.NAME.PID.XXXX.tmp`` files whose maker is gone;
  it is called only by the lock holder, so no live writer's file is ever removed.
* An overwrite never touches the old run until the new one is finished. The new run is
  made in ``DIR/.gdx-next/`` (its checkpoints, results and finally its ``run.json``).
  ``DIR/.gdx-next/run.json`` is the commit point; :func:`settle` then moves the old
  entries into ``DIR/.gdx-old-partial/``, renames that to ``DIR/.gdx-old/`` (the old
  run is out), moves the new entries in, renames the new ``run.json`` into place and
  removes both staging folders. Every step is a rename, so :func:`settle` run again
  after a kill at any instruction finishes the same swap; until the commit point the
  old run is what ``DIR`` holds, after it the new run is (readers settle first).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import time
from pathlib import Path
from types import TracebackType

from gdx.errors import RunFolderError, RunLockedError
from gdx.results import temp_owner, write_point

LOCK_FILE = ".gdx.lock"
NEXT_DIR = ".gdx-next"
OLD_DIR = ".gdx-old"
OLD_PARTIAL_DIR = ".gdx-old-partial"
_OWN = frozenset({LOCK_FILE, NEXT_DIR, OLD_DIR, OLD_PARTIAL_DIR})
_KEEP_IN_NEXT = frozenset({"run.json", "checkpoint"})


class RunLock:
    """An exclusive, non-blocking OS lock on a run folder (a context manager)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, *, wait: float = 0.0) -> None:
        """Take the lock, waiting up to ``wait`` seconds; a clear error names the holder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = _read_pid(fd)
                    os.close(fd)
                    raise RunLockedError(
                        f"{self.folder} is being written by gdx process {holder or '(unknown pid)'} "
                        f"(it holds {self.path}); wait for it to finish, or choose another `out` folder."
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: Path) -> int:
    """Remove temp files under ``folder`` whose maker is no longer running (call with the lock held)."""
    removed = 0
    for tmp in folder.rglob(".*.tmp"):
        owner = temp_owner(tmp)
        if owner == os.getpid():
            continue  # ours: the write that made it removes it
        if owner is None or not _alive(owner):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def swap_pending(folder: Path) -> bool:
    """Whether a finished overwrite waits to be moved into place (``.gdx-next/run.json`` exists)."""
    return (folder / NEXT_DIR / "run.json").is_file()


def settle(folder: Path) -> None:
    """Finish (or clean up after) an overwrite at any point it was stopped. Call with the lock held."""
    folder = Path(folder)
    nxt, old, partial = folder / NEXT_DIR, folder / OLD_DIR, folder / OLD_PARTIAL_DIR
    if swap_pending(folder):
        if not old.exists():
            partial.mkdir(exist_ok=True)
            for entry in sorted(folder.iterdir()):
                if entry.name not in _OWN:
                    os.rename(entry, partial / entry.name)
                    write_point()
            os.rename(partial, old)
            write_point()
        for entry in sorted(nxt.iterdir()):
            if entry.name not in _KEEP_IN_NEXT:
                os.rename(entry, folder / entry.name)
                write_point()
        os.rename(nxt / "run.json", folder / "run.json")
        write_point()
    if old.exists():  # the swap is done: the new run is in place
        shutil.rmtree(nxt, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    if (folder / "run.json").is_file() and (folder / "checkpoint").exists():
        shutil.rmtree(folder / "checkpoint", ignore_errors=True)  # killed right after run.json


def settle_for_reading(folder: Path, *, wait: float = 30.0) -> None:
    """Before reading a run folder: finish a committed overwrite so no mixed state is ever read.

    While ``.gdx-next/run.json`` exists the writer is swapping right now (it holds the
    lock: this waits for it) or was killed doing so (this finishes the swap). A finished
    run's leftover checkpoint (a kill right after run.json) is removed too, when the folder
    is writable and no one holds its lock.
    """
    if not swap_pending(folder):
        untidy = (folder / "run.json").is_file() and (folder / "checkpoint").is_dir()
        if untidy or (folder / OLD_DIR).is_dir():
            lock = RunLock(folder)
            try:
                lock.acquire()
            except (RunLockedError, OSError):
                return  # a writer is busy here, or the folder is read-only: nothing to tidy
            try:
                settle(folder)
            except OSError:
                pass
            finally:
                lock.release()
        return
    lock = RunLock(folder)
    try:
        lock.acquire(wait=wait)
    except RunLockedError:
        raise
    except OSError as exc:
        raise RunFolderError(
            f"{folder} holds a finished overwrite that was not yet moved into place, and this process "
            f"cannot lock the folder to finish it ({exc.strerror}); run any gdx command on it with write access."
        ) from None
    try:
        settle(folder)
    finally:
        lock.release()
