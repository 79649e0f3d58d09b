"""Reading what a download brings (config.json, tokenizer files, GGUF metadata): JSON within
size and depth limits, values checked for type, finiteness and range before anything is
allocated, and error messages that quote at most a short excerpt of a value. Requests to
the servers and command-line texts are untrusted too: `parse_json` and `utf8_argument`
refuse text that no tokenizer can encode.

Example:
    >>> fields = Fields("config.json", {"hidden_size": 64, "rms_norm_eps": 1e-6}, ValueError)
    >>> fields.integer("hidden_size", high=65536), fields.number("rms_norm_eps", low=0)
    (64, 1e-06)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re

from tfllm.config import TfllmError

# Larger than any file of its kind (Gemma's tokenizer.json is ~33 MB); past it, a file is
# refused before it is read.
MAX_JSON_BYTES = 256 << 20
_MISSING = object()


def excerpt(value, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters (a value in a message is never huge)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** limit:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, (list, dict, str)) and len(value) > 4 * limit:
        value = value[:4 * limit] if not isinstance(value, dict) else dict(
            list(value.items())[:8])
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def in_range(value, low=None, high=None, low_open: bool = False) -> bool:
    """True for a finite number (not a bool) from `low` (excluded with `low_open`) to
    `high`."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    return ok and (high is None or value <= high)


# A JSON escape of a UTF-16 surrogate: `\ud83d\ude00` (a pair) is an emoji, a lone one is
# valid JSON syntax but no Unicode text.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def parse_json(text: str | bytes):
    r"""`json.loads(text)`, refusing also strings that hold a lone UTF-16 surrogate: JSON's
    syntax admits `"\ud800"`, but such a string cannot be encoded as UTF-8, so a tokenizer
    (or TensorFlow's string tensors) would fail on it deep inside; here it is a ValueError
    like any other malformed JSON. A surrogate pair is one character, as JSON means it.

    Example:
        >>> parse_json(r'"\ud83d\ude00"') == "\U0001F600"
        True
    """
    value = json.loads(text)
    raw = text.decode("utf-8", "replace") if isinstance(text, (bytes, bytearray)) else text
    if _SURROGATE_ESCAPE.search(raw):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            escape = f"\\u{ord(e.object[e.start]):04x}"
            at = next((m.start() for m in _SURROGATE_ESCAPE.finditer(raw)
                       if m.group(0).lower() == escape), 0)
            # JSONDecodeError, so callers' handlers of malformed JSON take it as they are.
            raise json.JSONDecodeError(f"a string holds the lone UTF-16 surrogate {escape}, "
                                       "which is not Unicode text", raw, at) from None
    return value


def utf8_problem(text: str) -> str | None:
    r"""Where `text` cannot be encoded as UTF-8, e.g. "byte 0xe9 at character 3", or None.
    Bytes that were not UTF-8 reach Python as lone surrogates (`surrogateescape`: argv, a
    C locale's stdin), which no tokenizer can encode.

    Example:
        >>> utf8_problem("caf\udce9"), utf8_problem("caf\u00e9")
        ('byte 0xe9 at character 3', None)
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = ord(e.object[e.start])
        what = f"byte 0x{bad - 0xDC00:02x}" if 0xDC80 <= bad <= 0xDCFF else f"U+{bad:04X}"
        return f"{what} at character {e.start}"
    return None


def utf8_argument(text: str) -> str:
    """An argparse type for a text option (a prompt, a message): `text`, unless it is not
    UTF-8 (`utf8_problem`)."""
    problem = utf8_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"not UTF-8 text ({problem}); give UTF-8 text")
    return text


def read_json(path: str, error=TfllmError, max_bytes: int = MAX_JSON_BYTES):
    """The parsed JSON file `path`; `error` (an exception type) names the file when it is
    missing, larger than `max_bytes`, not UTF-8, not JSON or nested too deeply."""
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise error(f"{path} is {size:,} bytes, more than the {max_bytes:,} such a file "
                        "may have")
        with open(path, "rb") as f:
            return parse_json(f.read().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise error(f"{path} is JSON nested too deeply") from None
    except ValueError as e:
        raise error(f"{path} is not valid JSON: {excerpt(str(e), 120)}") from None
    except OSError as e:
        raise error(f"{path} cannot be read: {e.strerror or e}") from None


def read_json_object(path: str, error=TfllmError, max_bytes: int = MAX_JSON_BYTES) -> dict:
    """`read_json` of a file that must hold a JSON object."""
    value = read_json(path, error, max_bytes)
    if not isinstance(value, dict):
        raise error(f"{path} must hold a JSON object, not {type(value).__name__}")
    return value


class Fields:
    """Typed access to the fields of a parsed JSON object (or metadata mapping) from `path`;
    a missing, mistyped, non-finite or out-of-range value raises `error` naming the file,
    the field and (an excerpt of) the value.

    Args:
        path: the file, for messages.
        data: the parsed mapping.
        error: the exception type to raise.
        prefix: prepended to field names in messages (GGUF's `llama.`).
    """

    def __init__(self, path: str, data: dict, error=TfllmError, prefix: str = ""):
        self.path, self.data, self.error, self.prefix = path, data, error, prefix

    def _get(self, key, default):
        if key in self.data and self.data[key] is not None:
            return self.data[key]
        if default is _MISSING:
            raise self.error(f"{self.path} lacks the field {self.prefix}{key}")
        return default

    def _bad(self, key, value, what):
        return self.error(f"{self.path}: {self.prefix}{key}={excerpt(value)} must be {what}")

    def has(self, key) -> bool:
        return self.data.get(key) is not None

    def require(self, keys, what: str) -> None:
        """Raise `error` naming every one of `keys` that is missing, at once."""
        missing = [k for k in keys if not self.has(k)]
        if missing:
            raise self.error(f"{self.path} lacks the field(s) {', '.join(missing)} that {what} "
                             "has; is it complete?")

    def integer(self, key, default=_MISSING, low: int = 1, high: int | None = None) -> int:
        """An integer from `low` to `high` (a float with no fraction, as JSON writers
        sometimes give, counts)."""
        value = self._get(key, default)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < low or \
                (high is not None and value > high):
            span = f"from {low:,} to {high:,}" if high is not None else f">= {low:,}"
            raise self._bad(key, value, f"an integer {span}")
        return value

    def number(self, key, default=_MISSING, low: float | None = None,
               high: float | None = None, low_open: bool = True) -> float:
        """A finite number above `low` (or at it, without `low_open`) and at most `high`."""
        value = self._get(key, default)
        if not in_range(value, low, high, low_open):
            span = "" if low is None else f" {'>' if low_open else '>='} {low:g}"
            span += "" if high is None else f" and <= {high:g}"
            raise self._bad(key, value, f"a finite number{span}")
        return float(value)

    def boolean(self, key, default=_MISSING) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self._bad(key, value, "true or false")
        return value

    def text(self, key, default=_MISSING, choices=None) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or len(value) > 256:
            raise self._bad(key, value, "a short string")
        if choices is not None and value not in choices:
            raise self.error(f"{self.path}: {self.prefix}{key} {excerpt(value)} is not "
                             f"supported; supported: {', '.join(sorted(choices))}")
        return value

    def mapping(self, key, default=None) -> dict | None:
        value = self._get(key, default)
        if value is not None and not isinstance(value, dict):
            raise self._bad(key, value, "an object")
        return value
