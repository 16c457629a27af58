"""Outputs that appear whole or not at all: a hidden partial folder (or file) renamed into place when complete.

A partial is named ``.NAME.partial-PID-HOST-XXXX`` beside its target, so a later run can tell one left by a
killed process (SIGKILL, power loss) from one still being written, and remove only the former. SIGTERM and
Ctrl-C unwind through the same cleanup as any error. Operating-system errors become one
:class:`CheckpointError` that names the path and says what to do.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from typing import Callable, Iterator

from checkpoints_convert.writer import fsync_dir
from jaxgen.errors import CheckpointError

_ADVICE = {
    errno.ENOSPC: "the disk is full; free some space or choose an output path on another disk",
    errno.EDQUOT: "the disk quota is exceeded; free some space or choose an output path on another disk",
    errno.EROFS: "the file system is read-only; choose an output path on a writable one",
    errno.EACCES: "choose an output path in a folder you may write to, or fix that folder's permissions",
    errno.EPERM: "choose an output path in a folder you may write to, or fix that folder's permissions",
    errno.ENOTDIR: "part of the path is a file, not a folder; choose another output path",
    errno.ENOENT: "a folder on the path does not exist and could not be created; create it or choose another "
                  "output path",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter output path",
}


class Terminated(SystemExit):
    """SIGTERM arrived during a conversion. A :class:`SystemExit` (status 143), so code that does not catch it
    exits quietly once the cleanup has run, as the signal alone would have made it exit."""

    def __init__(self):
        super().__init__(128 + signal.SIGTERM)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread; the old handler is restored after.

    Elsewhere than the main thread, Python cannot install handlers; the block then runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum, frame):
        nonlocal fired
        if fired:  # a second SIGTERM must not interrupt the cleanup that the first one started
            return
        fired = True
        raise Terminated()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        # None means a handler installed from C that Python cannot reinstall; the default is the closest.
        signal.signal(signal.SIGTERM, signal.SIG_DFL if old is None else old)


def current_umask() -> int:
    """The process's umask. Read from /proc on Linux: ``os.umask`` can only read it by setting it, and the
    moment it is changed would race with other threads creating files."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(folder: str) -> None:
    """Give ``folder`` and everything in it the modes a plain ``mkdir`` / ``open`` would have (temporary folders
    are created 0700, and a rename keeps that), so others on a shared file system can read the result."""
    mask = current_umask()
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)
        for name in dirs:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o777 & ~mask)
    os.chmod(folder, 0o777 & ~mask)


def _host_tag() -> str:
    # A pid means something only on its own machine: on a shared file system, never judge another host's partial.
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def partial_prefix(name: str) -> str:
    """The start of the names this process gives partials of target ``name`` (a base name)."""
    return f".{name}.partial-{os.getpid()}-{_host_tag()}-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):  # PermissionError: another user's live process
        return True
    return True  # alive, or a reused pid: keeping a stale folder is the safe mistake


def remove_stale_partials(parent: str, name: str) -> list[str]:
    """Remove partials of target ``name`` in ``parent`` whose writer (on this host) has ended; return their paths."""
    pattern = re.compile(rf"\.{re.escape(name)}\.partial-(\d{{1,10}})-([0-9a-f]{{8}})-.+")
    try:
        entries = os.listdir(parent)
    except OSError:
        return []
    removed = []
    for entry in sorted(entries):
        m = pattern.fullmatch(entry)
        path = os.path.join(parent, entry)
        if not m or m.group(2) != _host_tag() or _pid_alive(int(m.group(1))) or os.path.islink(path):
            continue
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(path)
        if not os.path.lexists(path):
            removed.append(path)
    return removed


def _make_parents(parent: str) -> list[str]:
    """Create ``parent`` and its missing ancestors; return those created, deepest first (to undo on failure)."""
    created = []
    path = parent
    while not os.path.isdir(path):
        if os.path.lexists(path):
            raise CheckpointError(f"{path}: exists but is not a folder, so nothing can be written inside it; "
                                  "choose another output path.")
        created.append(path)
        path = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    return created


def _remove_created(created: list[str]) -> None:
    for folder in created:
        try:
            os.rmdir(folder)
        except FileNotFoundError:  # makedirs failed before reaching it
            continue
        except OSError:
            break


def describe_os_error(e: OSError, target: str, what: str) -> str:
    """One line: which path failed and why (a partial's paths shown as the target's), and what to do."""
    where = os.fspath(e.filename) if e.filename is not None else ""
    where = where.decode(errors="replace") if isinstance(where, bytes) else str(where)
    parent, name = os.path.split(target)
    where = re.sub(rf"^{re.escape(os.path.join(parent, f'.{name}.partial-'))}[^/]*", lambda _: target, where)
    detail = (e.strerror or str(e)) + (f": {where}" if where and where != target else "")
    advice = _ADVICE.get(e.errno, "check the path, or choose another output path")
    return f"{target}: cannot write {what} ({detail}); {advice}. Nothing was written."


@contextlib.contextmanager
def atomic_folder(out_dir: str, log: Callable[[str], None] | None = None) -> Iterator[str]:
    """Yield a new, private partial folder beside ``out_dir`` to fill.

    When the block completes, the folder gets umask modes, is fsynced and renamed to ``out_dir``. On any failure
    (KeyboardInterrupt and :class:`Terminated` included) it is removed, as are the parents created for it.
    ``out_dir`` must not exist. Before starting, stale partials of the same target (see module doc) are removed.
    """
    out_dir = os.path.abspath(out_dir)
    parent, name = os.path.split(out_dir)
    created: list[str] = []
    tmp = None
    try:
        created = _make_parents(parent)
        for path in remove_stale_partials(parent, name):
            if log:
                log(f"removed {path}, left by a conversion that ended before finishing")
        tmp = tempfile.mkdtemp(prefix=partial_prefix(name), dir=parent)
        yield tmp
        apply_umask(tmp)
        fsync_dir(tmp)
        if os.path.lexists(out_dir):  # appeared meanwhile; os.rename would replace an empty folder
            raise CheckpointError(f"{out_dir}: was created while converting; remove it or choose another path.")
        os.rename(tmp, out_dir)
        tmp = None
        fsync_dir(parent)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(created)
        if isinstance(e, OSError):
            raise CheckpointError(describe_os_error(e, out_dir, "the converted checkpoint")) from e
        raise


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[str]:
    """Yield a partial file name beside ``path``; when the block completes it replaces ``path`` (umask modes, as
    ``open`` gives); on failure it is removed and ``path`` is left as it was. Stale partials of ``path`` go first."""
    path = os.path.abspath(path)
    parent, name = os.path.split(path)
    tmp = None
    try:
        remove_stale_partials(parent, name)
        # mkstemp creates the file 0600 (private while written); it gets the umask modes before replacing `path`.
        fd, tmp = tempfile.mkstemp(prefix=partial_prefix(name), dir=parent)
        os.close(fd)
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(parent)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        if isinstance(e, OSError):
            raise CheckpointError(describe_os_error(e, path, "the file")) from e
        raise
