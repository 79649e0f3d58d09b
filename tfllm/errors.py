"""Exception types tfllm owns, and how entry points turn failures into one line.

The CLI, the exporters and the dev server print any `TfllmError` as one line and exit 2;
`error_line` also gives one line for failures a user can act on that come from below
(files, encodings, memory, TensorFlow's runtime errors). Anything else is a bug in tfllm
and keeps its traceback.
"""

import sys

from tfllm.config import ConfigError, TfllmError


class DataError(TfllmError, ValueError):
    """A data source is missing, empty, unknown or too short."""


class RunDirError(TfllmError):
    """A run directory is missing, incomplete or would be overwritten."""


class TokenizerError(TfllmError, ValueError):
    """A tokenizer cannot be trained or loaded."""


def error_line(error: BaseException) -> str | None:
    """One line describing `error` for a user, or None when it is a bug (keep the traceback)."""
    if isinstance(error, TfllmError):
        return str(error)
    if isinstance(error, UnicodeDecodeError):
        return (f"the input is not valid UTF-8 ({error.reason} at byte {error.start}); "
                "save it as UTF-8")
    if isinstance(error, UnicodeEncodeError) and error.encoding in ("utf-8", "utf8"):
        # Text that came in undecodable (argv, a file name) reached an encoder as surrogates.
        from tfllm.untrusted import utf8_problem

        return (f"the input holds text that is not UTF-8 ({utf8_problem(error.object)}); "
                "give UTF-8 text")
    if isinstance(error, MemoryError):
        return "out of memory; use a smaller batch, model or input"
    if isinstance(error, OSError):
        what = error.strerror or str(error)
        where = f": {error.filename}" if getattr(error, "filename", None) else ""
        return f"{what}{where}"
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(error, tf.errors.OpError):
        lines = [line for line in (error.message or "").splitlines() if line.strip()]
        first = lines[0].strip() if lines else type(error).__name__
        if isinstance(error, tf.errors.ResourceExhaustedError):
            return f"out of memory ({first}); use a smaller batch, model or input"
        return f"TensorFlow failed: {first}"
    return None


def run_main(prog: str, fn, *args) -> int:
    """Run an entry point's `fn(*args)`; failures become one line on stderr and status 2.

    `fn` may return an exit status (None means 0). Bugs (errors `error_line` does not
    know) keep their traceback.
    """
    try:
        status = fn(*args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        line = error_line(e)
        if line is None:
            raise
        print(f"{prog}: error: {line}", file=sys.stderr)
        if not isinstance(e, (TfllmError, UnicodeError)):  # input, not the native side
            from tfllm.logs import native_log_tail

            tail = native_log_tail()
            if tail:
                print(f"{prog}: the native libraries' last log lines:\n{tail}", file=sys.stderr)
        return 2
    return int(status or 0)


__all__ = ["TfllmError", "ConfigError", "DataError", "RunDirError", "TokenizerError",
           "error_line", "run_main"]
