"""Replace directories all at once: nothing half-written is ever seen under the real name.

A new run, import or export version is written into a hidden sibling (`.NAME.partial-PID-*`)
and moved into place only when complete; an old one is swapped out in the same step
(Linux `renameat2(RENAME_EXCHANGE)`), so a reader polling the directory (TF Serving, a
user) sees either the old or the new one, never neither. Siblings left by a killed process
are removed by the next writer of the same name.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import tempfile

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2():
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                   ctypes.c_uint]
    return fn


def exchange(a: str, b: str) -> bool:
    """Swap two existing paths in one step; False where the system cannot (then nothing moved)."""
    fn = _renameat2()
    if fn is None:
        return False
    ok = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0
    return ok


def make_readable(path: str) -> None:
    """Let other users (a TF Serving process) read `path` and everything under it."""
    paths = [path]
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            paths += [os.path.join(root, d) for d in dirs] + [os.path.join(root, f) for f in files]
    for p in paths:
        mode = os.stat(p).st_mode
        extra = 0o055 if os.path.isdir(p) else 0o044
        os.chmod(p, mode | extra)


def _partial_prefix(target: str) -> str:
    return f".{os.path.basename(os.path.normpath(target))}.partial-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(target: str) -> list[str]:
    """Remove hidden siblings of `target` left by writers that no longer run; returns them."""
    parent = os.path.dirname(os.path.abspath(target))
    prefix = _partial_prefix(target)
    removed = []
    if not os.path.isdir(parent):
        return removed
    for name in os.listdir(parent):
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue  # another writer is still at work
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        removed.append(name)
    return removed


def remove_dir(path: str) -> None:
    """Delete a directory tree; a kill half-way leaves a hidden sibling, not half a tree."""
    if not os.path.lexists(path):
        return
    clean_stale(path)
    parent = os.path.dirname(os.path.abspath(path))
    aside = tempfile.mkdtemp(prefix=f"{_partial_prefix(path)}{os.getpid()}-", dir=parent)
    os.rename(path, os.path.join(aside, "old"))
    shutil.rmtree(aside, ignore_errors=True)


def publish_dir(staging: str, target: str) -> None:
    """Move the complete directory `staging` to `target`, replacing whatever is there."""
    make_readable(staging)
    if not os.path.lexists(target):
        os.rename(staging, target)
        return
    if exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # the old tree, now under the hidden name
        return
    # No atomic swap on this system: the old tree leaves first, for as short a time as can be.
    parent = os.path.dirname(os.path.abspath(target))
    aside = tempfile.mkdtemp(prefix=f"{_partial_prefix(target)}{os.getpid()}-", dir=parent)
    os.rename(target, os.path.join(aside, "old"))
    os.rename(staging, target)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def staging_dir(target: str):
    """A hidden empty directory beside `target`, published as `target` if the block succeeds.

    On an exception (or a kill) `target` is untouched; the staging directory is removed
    (after a kill, by the next `staging_dir` of the same target).

    Example:
        >>> with staging_dir("models/demo/1") as tmp:  # doctest: +SKIP
        ...     write_everything(tmp)
    """
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    clean_stale(target)
    tmp = tempfile.mkdtemp(prefix=f"{_partial_prefix(target)}{os.getpid()}-", dir=parent)
    try:
        yield tmp
        publish_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
