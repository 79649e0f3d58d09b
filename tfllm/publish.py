"""The one way every tfllm command publishes what it writes: check, stage, verify, rename.

Every output (a run, a SavedModel version, a Hugging Face checkpoint, a `.tflite`,
`.litertlm` or `.onnx` file) goes through `Output`:

1. `Output.check()` before any work: `--out` must not equal, lie inside or contain an input
   (the run, checkpoint or data it is made from); an existing output is replaced only with
   `overwrite` and only when it is provably one of ours of the same kind: a marker written
   at publish time says so (`.tfllm-output.json` inside a directory output, or beside a
   file output with the file's SHA-256), never the presence of a `config.json`.
2. `Output.staging()` gives a hidden sibling (`.NAME.tfllm-staging-PID-XXXX`) to write into;
   the caller verifies what it wrote there.
3. When the block ends without an error the staged output gets its marker, is made readable
   by other users (TF Serving and app builds may run as one) and is renamed into place; an
   old one is swapped out in the same step (Linux `renameat2(RENAME_EXCHANGE)`), so a
   reader sees the old output or the new one, never neither and never half of one.

A killed command leaves only its staging sibling, whose marker names the process that made
it; the next command writing the same output removes it (and only such siblings).

Example:
    >>> out = Output("runs/demo", "run", True, ["data/corpus.txt"])  # doctest: +SKIP
    >>> out.check()  # doctest: +SKIP
    >>> with out.staging() as tmp:  # doctest: +SKIP
    ...     write_everything(tmp)
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time

from tfllm.config import TfllmError

MARKER = ".tfllm-output.json"
# What a command can write; an output is replaced only by one of the same kind.
KINDS = ("run", "saved-model", "hf-checkpoint", "tflite", "litertlm", "onnx")
_STAGING = ".tfllm-staging-"
_MARKER_BYTES = 1 << 16  # a marker is a few hundred bytes; a huge one is not ours
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class PublishError(TfllmError):
    """An output cannot be written where it was asked for (nothing was changed)."""


def _describe(kind: str) -> str:
    return {"run": "a tfllm run", "saved-model": "a tfllm SavedModel version",
            "hf-checkpoint": "a Hugging Face checkpoint written by tfllm",
            "tflite": "a .tflite file written by tfllm",
            "litertlm": "a .litertlm bundle written by tfllm",
            "onnx": "an ONNX file written by tfllm"}[kind]


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_marker(path: str) -> dict | None:
    """The marker of the output at `path` (a directory or a file), or None when there is
    none or it is not one of ours (malformed, oversized)."""
    where = marker_path(path)
    try:
        if not os.path.isfile(where) or os.path.getsize(where) > _MARKER_BYTES:
            return None
        with open(where, encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(marker, dict) or marker.get("kind") not in KINDS:
        return None
    return marker


def marker_path(path: str) -> str:
    """Where the marker of an output lives: inside a directory, beside a file."""
    if os.path.isdir(path):
        return os.path.join(path, MARKER)
    parent, name = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{name}{MARKER}")


def is_ours(path: str, kind: str | None = None) -> bool:
    """True when `path` holds an output tfllm published (of `kind`, when given): a directory
    with our marker, or a file whose marker beside it holds its SHA-256."""
    marker = read_marker(path)
    if marker is None or (kind is not None and marker["kind"] != kind):
        return False
    if os.path.isdir(path):
        return "sha256" not in marker
    if not os.path.isfile(path):
        return False
    hashes = marker.get("sha256")
    if not isinstance(hashes, list) or marker.get("size") is None:
        return False
    return _sha256(path) in hashes


def _write_json(path: str, value: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=True)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _stamp(kind: str, command: str | None, **extra) -> dict:
    return {"kind": kind, "tool": "tfllm", "command": command,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}


def make_readable(path: str) -> None:
    """Let other users (a TF Serving process, an app build) read `path` and all below it."""
    paths = [path]
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, files in os.walk(path):
            paths += [os.path.join(root, d) for d in dirs] + [os.path.join(root, f) for f in files]
    for p in paths:
        if os.path.islink(p):
            continue
        mode = os.stat(p).st_mode
        os.chmod(p, mode | (0o755 if os.path.isdir(p) else 0o644))


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
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _staging_prefix(target: str) -> str:
    return f".{os.path.basename(os.path.normpath(target))}{_STAGING}"


def clean_stale(target: str) -> list[str]:
    """Remove the staging siblings of `target` that killed tfllm processes left; returns
    their names. A sibling counts only when its marker says it stages `target` on this
    host for a process that no longer runs, or when it is empty and named for one."""
    parent = os.path.dirname(os.path.abspath(target))
    prefix = _staging_prefix(target)
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(parent, name)
        if not name.startswith(prefix) or os.path.islink(path) or not os.path.isdir(path):
            continue
        marker = read_marker(path)
        if marker is None:
            # A process killed between creating its staging folder and marking it leaves
            # it empty but for its half-written marker (`_write_json`'s temp file): that
            # much is removed, and rmdir removes only an empty folder, so nothing anyone
            # else wrote is lost.
            pid = name[len(prefix):].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                try:
                    half = [e for e in os.listdir(path)
                            if e == f"{MARKER}.{pid}.tmp"]
                    for e in half:
                        os.remove(os.path.join(path, e))
                    os.rmdir(path)
                    removed.append(name)
                except OSError:
                    pass  # anything else in it: not ours, never removed
            continue
        staging = marker.get("staging")
        if isinstance(staging, dict):
            if staging.get("target") != _real(target) or \
                    staging.get("host") != socket.gethostname():
                continue
            pid = staging.get("pid")
        else:  # an old output swapped out by a publisher killed before it removed it
            pid = name[len(prefix):].split("-", 1)[0]
            pid = int(pid) if pid.isdigit() else None
        if isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid):
            continue  # another writer is still at work
        shutil.rmtree(path, ignore_errors=True)
        removed.append(name)
    return removed


class Output:
    """One output a command writes: checked before any work, staged, then published.

    Args:
        path: where the output goes (`--out`; a SavedModel's version directory).
        kind: one of `KINDS`; an existing output is replaced only by one of the same kind.
        overwrite: replace an existing output of ours (`--overwrite`).
        inputs: paths the command reads (runs, checkpoints, data files); `path` may not
            equal, lie inside or contain any of them.
        companions: more files published with a file output (an ONNX decoder beside its
            encoder), each with the same checks.
        option: the name of the option in messages.
        command: what wrote the output, recorded in its marker.
    """

    def __init__(self, path: str, kind: str, overwrite: bool = False, inputs=(),
                 companions=(), option: str = "--out", command: str | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown output kind {kind!r}")
        self.path, self.kind, self.overwrite = path, kind, overwrite
        self.inputs = [p for p in inputs if p]
        self.companions = list(companions)
        self.option, self.command = option, command
        self.is_file = kind in ("tflite", "litertlm", "onnx")

    # -- checks ---------------------------------------------------------------------------

    def check(self) -> bool:
        """Raise PublishError unless the output may be written; True when an existing
        output of ours will be replaced. Nothing is changed."""
        replaced = False
        for path in [self.path, *self.companions]:
            self._check_inputs(path)
            replaced = self._check_existing(path) or replaced
        return replaced

    def _check_inputs(self, path: str) -> None:
        out = _real(path)
        for given in self.inputs:
            source = _real(given)
            if _within(out, source):
                where = "is" if out == source else "lies inside"
                raise PublishError(f"{self.option} {path} {where} the input {given}; write "
                                   "the output somewhere else")
            if _within(source, out):
                raise PublishError(f"{self.option} {path} contains the input {given}; write "
                                   "the output somewhere else")

    def _check_existing(self, path: str) -> bool:
        if os.path.islink(path):
            raise PublishError(f"{self.option} {path} is a symbolic link; tfllm does not "
                               "replace it: give the real path")
        if not os.path.lexists(path):
            return False
        if self.is_file:
            if os.path.isdir(path):
                raise PublishError(f"{self.option} {path} is a directory; give a file path")
        else:
            if not os.path.isdir(path):
                raise PublishError(f"{self.option} {path} is a file, not a directory; give a "
                                   "directory path")
            if not os.listdir(path):
                return False  # an empty directory holds nothing to lose
        if is_ours(path, self.kind):
            if not self.overwrite:
                raise PublishError(f"{path} already exists; pass --overwrite to replace it")
            return True
        marker = read_marker(path)
        if marker is not None and marker["kind"] != self.kind and \
                (not self.is_file or is_ours(path)):
            raise PublishError(f"{path} holds {_describe(marker['kind'])}, not "
                               f"{_describe(self.kind)}; tfllm does not replace it, even with "
                               "--overwrite: choose another path")
        raise PublishError(f"{path} exists and is not {_describe(self.kind)} (no tfllm marker "
                           f"{MARKER}); tfllm does not replace it, even with --overwrite: "
                           "choose another path or remove it yourself")

    # -- writing --------------------------------------------------------------------------

    def _new_staging(self, target: str) -> str:
        parent = os.path.dirname(os.path.abspath(target))
        os.makedirs(parent, exist_ok=True)
        clean_stale(target)
        tmp = tempfile.mkdtemp(prefix=f"{_staging_prefix(target)}{os.getpid()}-", dir=parent)
        _write_json(os.path.join(tmp, MARKER), _stamp(
            self.kind, self.command, staging={"pid": os.getpid(), "host": socket.gethostname(),
                                              "target": _real(target)}))
        return tmp

    @contextlib.contextmanager
    def staging(self, in_place: bool = False):
        """Yield where to write the output; publish it if the block ends without an error.

        A directory output is written into the yielded directory; a file output to the
        yielded path (a file of the same name inside a hidden directory), and each
        companion to `staged(companion)`. On an exception or a kill nothing existing is
        touched.

        Args:
            in_place: for a resumable run: when nothing is to be replaced, write straight
                into `path` (marked at once, so a later `--overwrite` or `--resume` knows
                it), so a killed command can be resumed where it stopped. Replacing an
                existing run still goes through a staging sibling.
        """
        self.check()
        if in_place and not self.is_file and (not os.path.isdir(self.path) or
                                              not os.listdir(self.path)):
            os.makedirs(self.path, exist_ok=True)
            _write_json(os.path.join(self.path, MARKER), _stamp(self.kind, self.command))
            yield self.path
            make_readable(self.path)
            return
        dirs = {p: self._new_staging(p) for p in [self.path, *self.companions]}
        self._staged = {p: (d if not self.is_file else
                            os.path.join(d, os.path.basename(os.path.normpath(p))))
                        for p, d in dirs.items()}
        try:
            yield self._staged[self.path]
            self._publish(dirs)
        finally:
            for d in dirs.values():
                shutil.rmtree(d, ignore_errors=True)

    def staged(self, path: str) -> str:
        """Where a companion file is written inside `staging()`."""
        return self._staged[path]

    def _publish(self, dirs: dict[str, str]) -> None:
        self.check()  # still ours (or nothing) to replace, after the work
        for target, tmp in dirs.items():
            if self.is_file:
                self._publish_file(target, self._staged[target])
            else:
                self._publish_dir(target, tmp)

    def _publish_dir(self, target: str, tmp: str) -> None:
        _write_json(os.path.join(tmp, MARKER), _stamp(self.kind, self.command))
        make_readable(tmp)
        if not os.path.lexists(target) or (os.path.isdir(target) and not os.listdir(target)):
            os.replace(tmp, target)  # rename(2) replaces an empty directory too
            return
        if exchange(tmp, target):
            return  # `tmp` now holds the old tree under the staging name; the caller removes it
        # No atomic swap on this system: the old tree leaves for as short a time as can be.
        aside = self._new_staging(target)
        os.rename(target, os.path.join(aside, "old"))
        os.rename(tmp, target)
        shutil.rmtree(aside, ignore_errors=True)

    def _publish_file(self, target: str, staged: str) -> None:
        if not os.path.isfile(staged):
            raise PublishError(f"internal: nothing was written for {target}")
        make_readable(staged)
        new = _sha256(staged)
        marker = marker_path(target)
        old = read_marker(target) if os.path.isfile(target) else None
        old_hashes = [h for h in (old or {}).get("sha256", []) if isinstance(h, str)][:4]
        # The marker names the old file and the new one until the rename is done, so a kill
        # between the two renames leaves a file the marker still proves ours.
        _write_json(marker, _stamp(self.kind, self.command, sha256=old_hashes + [new],
                                   size=os.path.getsize(staged)))
        os.replace(staged, target)
        _write_json(marker, _stamp(self.kind, self.command, sha256=[new],
                                   size=os.path.getsize(target)))


def remove_tree(path: str) -> None:
    """Delete a directory tree tfllm owns (a finished run's resume state); a kill half-way
    leaves a hidden sibling that the next `clean_stale` of `path` removes, not half a tree."""
    if not os.path.lexists(path):
        return
    parent = os.path.dirname(os.path.abspath(path))
    aside = tempfile.mkdtemp(prefix=f"{_staging_prefix(path)}{os.getpid()}-", dir=parent)
    _write_json(os.path.join(aside, MARKER), _stamp(
        "run", "remove", staging={"pid": os.getpid(), "host": socket.gethostname(),
                                  "target": _real(path)}))
    os.rename(path, os.path.join(aside, "old"))
    shutil.rmtree(aside, ignore_errors=True)
