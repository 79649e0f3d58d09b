"""Keep native libraries' log lines off the user's terminal.

TensorFlow, XLA, LiteRT, XNNPACK, SentencePiece and the LiteRT-LM runtime write their own
log lines straight to file descriptor 2 from C++, many before any setting is read (absl's
"before absl::InitializeLog()" lines ignore TF_CPP_MIN_LOG_LEVEL), some at error level for
things that are not errors here (`failed call to cuInit` on every CPU machine). Filtering
them by level would still show those, so an entry point moves fd 2 into a log file and
keeps Python's own `sys.stderr` (our messages, tracebacks, progress bars) on the terminal.
When a command fails, `native_log_tail()` is what the error report appends.

`TFLLM_LOG_LEVEL`: `error` (default: native lines to the file, Python's deprecation and
future warnings hidden), `warning` (native lines to the file, Python warnings shown),
`info` (or a command's `--verbose`: fd 2 left alone, TensorFlow's own logging at INFO).
"""

from __future__ import annotations

import atexit
import faulthandler
import glob
import logging
import os
import sys
import tempfile
import warnings

LEVELS = ("error", "warning", "info")
_state: dict = {}


def log_level(verbose: bool = False) -> str:
    """The effective level: `--verbose` means info; else $TFLLM_LOG_LEVEL (default error)."""
    if verbose:
        return "info"
    level = os.environ.get("TFLLM_LOG_LEVEL", "error").strip().lower()
    return level if level in LEVELS else "error"


def quiet_native(verbose: bool = False) -> None:
    """Send native log lines to a file (idempotent); keep Python's stderr on the terminal.

    Call it at the start of an entry point, before TensorFlow is imported. Child processes
    inherit the redirected fd 2 as well. At info level nothing is redirected.

    Example:
        >>> quiet_native()  # doctest: +SKIP
    """
    level = log_level(verbose)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", {"error": "2", "warning": "1"}.get(level, "0"))
    if level == "info" or _state:
        return
    _remove_stale_logs()
    try:
        terminal = os.dup(2)
        fd, path = tempfile.mkstemp(prefix=f"tfllm-native-{os.getpid()}-", suffix=".log")
        os.dup2(fd, 2)
        os.close(fd)
    except OSError:  # no fd 2 to move (a daemon): nothing to quiet
        return
    sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding="utf-8", errors="replace")
    # A crash in native code still prints where Python was, on the terminal.
    faulthandler.enable(file=sys.stderr)
    _state.update(path=path)
    atexit.register(_remove_log)
    # Python-side library chatter at warning level (absl, TF's logger, TFDS).
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if level == "error":
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)


def parse_then_quiet(parse_args):
    """For `if __name__ == "__main__":` at the top of an entry point, before TensorFlow is
    imported: `parse_args()` (so --help and argument errors answer at once), then
    `quiet_native`. Returns the parsed arguments."""
    args = parse_args()
    quiet_native(getattr(args, "verbose", False))
    return args


def native_log_tail(lines: int = 20) -> str:
    """The last lines native libraries wrote since `quiet_native` (empty if not quieted)."""
    path = _state.get("path")
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _remove_stale_logs():
    """Logs left by processes that were killed (SIGKILL skips atexit)."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), "tfllm-native-*-*.log")):
        pid = os.path.basename(path).split("-")[2]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            try:
                os.remove(path)
            except OSError:
                pass
        except OSError:
            pass


def _remove_log():
    try:
        os.remove(_state["path"])
    except OSError:
        pass
