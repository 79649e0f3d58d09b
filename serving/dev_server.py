"""A local development server that speaks TF Serving's REST and gRPC APIs, and the OpenAI
API.

    python -m serving.dev_server --model-dir models/demo [--port 8501] [--grpc-port 8500]
    python -m serving.dev_server --run runs/smollm2 [--model-dir models/smollm2]

For development and tests where Docker and TF Serving are not available; in production use
the real TF Serving (serving/Dockerfile). With --model-dir it loads every integer version
under the directory (the model's name is the directory's), answers `:predict` in row and
columnar formats, model status and metadata, and `PredictionService.Predict` over gRPC.
With --run it loads that run in process and answers the OpenAI API on the same port:
/v1/chat/completions and /v1/completions (causal LM runs; `"stream": true` sends
server-sent events as tokens are decoded), /v1/embeddings (encoder runs) and /v1/models.
It binds 127.0.0.1 unless told otherwise, caps the request body and batch size, and serves
requests concurrently.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The largest --decode-batch: its warm-up compiles every power of two up to it.
MAX_DECODE_BATCH = 1024


def build_parser():
    name = os.environ.get("TFLLM_PROG") or "python -m serving.dev_server"
    parser = argparse.ArgumentParser(prog=name, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", action="store_true",
                        help="show the native libraries' log lines (TensorFlow, LiteRT)")
    parser.add_argument("--model-dir", help="DIR/NAME holding version dirs (SavedModels, "
                        "served over TF Serving's APIs)")
    parser.add_argument("--run", help="a run directory served over the OpenAI API, in "
                        "process")
    parser.add_argument("--model-name",
                        help="the model id OpenAI clients name (default: --run's directory "
                             "name)")
    parser.add_argument("--template", help="with --run: chat template (chatml or a Jinja "
                        "file) for a causal run without its own")
    parser.add_argument("--decode-batch", type=int, default=8,
                        help="with --run: unconstrained replies decoded together in one loop; "
                             "a request arriving while it decodes joins it between two "
                             "chunks of steps (default 8; the loop compiles for each "
                             "power-of-two batch size up to it at start-up)")
    parser.add_argument("--prefill-cache", type=int, default=16,
                        help="with --run: prompts whose prefill (KV caches) is kept: the "
                             "same prompt again decodes at once, one that begins like it "
                             "computes only its new tokens (default 16, at most 256 MB; 0: "
                             "none)")
    parser.add_argument("--max-waiting", type=int, default=16,
                        help="with --run: OpenAI requests that may wait beyond a decoding "
                             "batch (--decode-batch); more get 503 at once (default 16)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8501, help="REST port (default 8501)")
    parser.add_argument("--grpc-port", type=int, default=8500,
                        help="gRPC port (default 8500; 0 disables gRPC)")
    parser.add_argument("--max-batch", type=int, default=32, help="largest batch accepted")
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20,
                        help="largest request body accepted (default 1 MiB)")
    parser.add_argument("--idle-timeout", type=float, default=15.0,
                        help="seconds a connection may stay silent, idle or mid-request, "
                             "before it is closed (default 15)")
    parser.add_argument("--max-connections", type=int, default=128,
                        help="connections served at once; more get 503 (default 128)")
    parser.add_argument("--poll-seconds", type=float, default=2.0,
                        help="how often new, replaced and removed version directories are "
                             "looked for, as TF Serving polls its base path (default 2; 0: "
                             "never)")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.model_dir and not args.run:
        parser.error("give --model-dir (SavedModels over TF Serving's APIs), --run (a run "
                     "over the OpenAI API) or both")
    for name in ("max_batch", "max_body_bytes", "max_connections", "max_waiting",
                 "decode_batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.prefill_cache < 0:
        parser.error("--prefill-cache must be 0 or more")
    if args.decode_batch > MAX_DECODE_BATCH:
        # The warm-up compiles every power of two up to it: a typo would run until OOM.
        parser.error(f"--decode-batch must be at most {MAX_DECODE_BATCH}, got "
                     f"{excerpt(args.decode_batch)}")
    for name, zero in (("port", "any free port"), ("grpc_port", "no gRPC")):
        if not 0 <= getattr(args, name) <= 65535:
            parser.error(f"--{name.replace('_', '-')} must be from 0 ({zero}) to 65535, got "
                         f"{getattr(args, name)}")
    if not 0 < args.idle_timeout < 86400:
        parser.error("--idle-timeout must be a positive number of seconds")
    if not 0 <= args.poll_seconds < 86400:
        parser.error("--poll-seconds must be a number of seconds >= 0")
    return args


if __name__ == "__main__":  # --help and bad arguments answer before TensorFlow loads
    from tfllm.logs import parse_then_quiet

    parse_then_quiet(parse_args)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402,F401  (registers the SentencePiece ops)

from tfllm.errors import TfllmError, run_main  # noqa: E402
from tfllm.untrusted import excerpt, parse_json  # noqa: E402

_PREDICT = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?(?::(predict))?$")
_METADATA = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?/metadata$")


class ServerStartError(TfllmError):
    """The server cannot start (a port in use, no model to serve)."""


class RequestError(Exception):
    """A bad request: answered with `status` and {"error": message}."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


class ServedModel:
    """The versions of one SavedModel directory tree (DIR/VERSION/saved_model.pb), served
    as TF Serving serves them: the newest version that loads answers unversioned requests;
    a version that fails to load is listed with its error (state END) and the others keep
    serving; `refresh` (polled every `--poll-seconds`) loads new versions, reloads replaced
    ones and drops removed ones without a restart. A version appears only once complete:
    tfllm's exporter publishes it with one rename, and a directory without saved_model.pb
    is not a version yet."""

    def __init__(self, model_dir, max_batch=32):
        self.model_dir = model_dir
        self.name = os.path.basename(os.path.normpath(model_dir))
        self.max_batch = max_batch
        self.versions, self.failed, self._seen = {}, {}, {}
        self._lock = threading.Lock()
        self.refresh()
        if not self.versions:
            reasons = "; ".join(f"version {v}: {e}" for v, e in sorted(self.failed.items()))
            raise ServerStartError(f"no version of {model_dir} loads"
                                   + (f" ({reasons})" if reasons else
                                      " (no DIR/N/saved_model.pb)"))

    @property
    def latest(self):
        return max(self.versions)

    def _on_disk(self):
        found = {}
        try:
            names = os.listdir(self.model_dir)
        except OSError:
            return found
        for d in names:
            path = os.path.join(self.model_dir, d)
            if d.isdigit() and os.path.isfile(os.path.join(path, "saved_model.pb")):
                st = os.stat(path)
                found[int(d)] = (st.st_ino, st.st_mtime_ns)
        return found

    def refresh(self) -> list[str]:
        """Load new and replaced versions, drop removed ones; returns what changed."""
        on_disk = self._on_disk()
        changes = []
        for version, stamp in sorted(on_disk.items()):
            if self._seen.get(version) == stamp:
                continue
            path = os.path.join(self.model_dir, str(version))
            try:
                loaded, error = _load(path), None
            except ServerStartError as e:
                loaded, error = None, str(e)
            with self._lock:
                self._seen[version] = stamp
                if loaded is None:
                    self.versions.pop(version, None)
                    self.failed[version] = error
                    changes.append(f"version {version} failed to load: {error}")
                else:
                    self.versions[version] = loaded
                    self.failed.pop(version, None)
                    changes.append(f"version {version} loaded")
        with self._lock:
            for version in sorted(set(self._seen) - set(on_disk)):
                del self._seen[version]
                self.failed.pop(version, None)
                if self.versions.pop(version, None) is not None:
                    changes.append(f"version {version} removed")
        return changes

    def signature(self, version, name):
        with self._lock:
            if not self.versions:
                raise RequestError(f"Servable not found for request: Latest({self.name})", 404)
            if version is None:
                version = self.latest
            if version not in self.versions:
                raise RequestError(f"Servable not found for request: Specific({self.name}, "
                                   f"{version})", 404)
            sigs = self.versions[version].signatures
        if name is None or name == "":  # absent (REST) or empty (a gRPC default)
            name = "serving_default"
        if not isinstance(name, str):
            raise RequestError(f"signature_name must be a string, got {type(name).__name__}")
        if name not in sigs:
            raise RequestError(f"Serving signature name: \"{name[:100]}\" not found in "
                               f"signature def; available: {sorted(sigs)}")
        return sigs[name]

    def run(self, fn, columns: dict):
        """Validate and convert named input columns, run `fn`, return numpy outputs."""
        specs = fn.structured_input_signature[1]
        missing = sorted(set(specs) - set(columns))
        extra = sorted(set(columns) - set(specs))
        if missing or extra:
            raise RequestError(f"inputs do not match the signature: missing {missing}, "
                               f"unexpected {extra}; expected {sorted(specs)}")
        tensors, batch = {}, None
        for key, spec in specs.items():
            value = columns[key]
            try:
                if spec.dtype == tf.string:
                    array = np.array(_strings(value, len(spec.shape)), dtype=object)
                else:
                    array = _numeric(value, spec.dtype, key)
            except (TypeError, ValueError, OverflowError, binascii.Error) as e:
                raise RequestError(f"input {key!r}: {e}") from None
            if array.ndim != len(spec.shape):
                raise RequestError(f"input {key!r} must have rank {len(spec.shape)} (rows "
                                   f"of equal length), got shape {list(array.shape)}")
            batch = len(array) if batch is None else batch
            if len(array) != batch:
                raise RequestError("every input must have the same batch size")
            tensors[key] = tf.constant(array, dtype=spec.dtype)
        if batch is None or batch == 0:
            raise RequestError("empty batch")
        if batch > self.max_batch:
            raise RequestError(f"batch of {batch} exceeds this server's limit of "
                               f"{self.max_batch}")
        try:
            out = fn(**tensors)
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as e:
            raise RequestError(_tf_error_message(e)) from None
        return {k: v.numpy() for k, v in out.items()}


def _load(path):
    try:
        return tf.saved_model.load(path)
    except Exception as e:  # a damaged SavedModel fails with protobuf, OS and TF errors
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ServerStartError(f"cannot load the SavedModel in {path} ({first[:200]}); "
                               "export it again") from None


def _tf_error_message(error):
    """The useful line of a TF runtime error: an assertion's own message if there is one."""
    text = error.message or str(error)
    m = re.search(r"assertion failed: \[(.*)\]", text)
    if m:
        return m.group(1).replace("\\'", "'")
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _as_list(value, key):
    if not isinstance(value, list):
        raise TypeError(f"expected a list (one value per row), got {type(value).__name__}")
    return value


def _strings(value, rank):
    """Lists nested `rank` deep (one per row first) of strings or {"b64": ...} as bytes."""
    if rank == 0:
        return _to_bytes(value)
    return [_strings(v, rank - 1) for v in _as_list(value, None)]


def _to_bytes(v):
    if isinstance(v, bytes):  # gRPC TensorProtos carry bytes
        return v
    if isinstance(v, dict) and set(v) == {"b64"}:
        return base64.b64decode(v["b64"], validate=True)
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {type(v).__name__} {v!r}")
    return v.encode("utf-8")


def _numeric(value, dtype, key):
    items = _as_list(value, key)
    info = np.iinfo(dtype.as_numpy_dtype) if dtype.is_integer else None
    for v in items:
        if isinstance(v, (bool, str, dict, list)) or v is None:
            raise TypeError(f"expected {dtype.name} numbers, got {type(v).__name__} "
                            f"{_short(v)}")
        if info is None:
            continue
        if isinstance(v, float) and (not math.isfinite(v) or not v.is_integer()):
            raise TypeError(f"expected {dtype.name}, got {_short(v)}")
        if not info.min <= int(v) <= info.max:
            raise ValueError(f"{_short(v)} is outside the {dtype.name} range "
                             f"[{info.min}, {info.max}]")
    return np.array(items, dtype=dtype.as_numpy_dtype)


def _short(v, limit=40):
    """A value for an error message; huge integers by size (repr of one over 4,300 digits
    raises)."""
    if isinstance(v, int) and abs(v) >= 10 ** limit:
        return f"an integer of {v.bit_length()} bits"
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


def _json_value(x):
    if isinstance(x, np.ndarray):
        return [_json_value(v) for v in x]
    if isinstance(x, bytes):
        try:
            return x.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(x).decode()}
    if isinstance(x, np.generic):
        return x.item()
    return x


def predict_json(model: ServedModel, version, body: dict) -> dict:
    """The REST :predict logic (row and columnar formats) on a parsed JSON body."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    fn = model.signature(version, body.get("signature_name"))
    specs = fn.structured_input_signature[1]
    if "instances" in body and "inputs" in body:
        raise RequestError("give either 'instances' (row format) or 'inputs' (columnar)")
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list):
            raise RequestError("'instances' must be a list")
        if len(rows) > model.max_batch:
            raise RequestError(f"batch of {len(rows)} exceeds this server's limit of "
                               f"{model.max_batch}")
        if len(specs) == 1 and rows and not isinstance(rows[0], dict):
            columns = {next(iter(specs)): rows}
        else:
            if not all(isinstance(r, dict) for r in rows):
                raise RequestError("each instance must be an object of named inputs")
            keys = set().union(*rows) if rows else set()
            columns = {k: [r.get(k) for r in rows] for k in keys}
            for k, col in columns.items():
                if any(v is None for v in col):
                    raise RequestError(f"input {k!r} is missing from some instances")
        out = model.run(fn, columns)
        n = len(next(iter(out.values())))
        return {"predictions": [{k: _json_value(v[i]) for k, v in out.items()}
                                for i in range(n)]}
    if "inputs" in body:
        inputs = body["inputs"]
        if not isinstance(inputs, dict):
            if len(specs) != 1:
                raise RequestError("columnar 'inputs' must name each input")
            inputs = {next(iter(specs)): inputs}
        out = model.run(fn, inputs)
        return {"outputs": {k: _json_value(v) for k, v in out.items()}}
    raise RequestError("the body needs 'instances' (row format) or 'inputs' (columnar)")


def metadata_json(model: ServedModel, version) -> dict:
    with model._lock:
        version = (model.latest if model.versions else None) if version is None else version
        loaded = model.versions.get(version)
    if loaded is None:
        raise RequestError(f"Servable not found for request: Specific({model.name}, {version})",
                           404)
    defs = {}
    for name, fn in loaded.signatures.items():
        def spec_json(specs):
            return {k: {"dtype": "DT_" + v.dtype.name.upper(), "name": k,
                        "tensor_shape": {"dim": [{"size": str(d if d is not None else -1)}
                                                 for d in v.shape.as_list()]}}
                    for k, v in specs.items()}
        defs[name] = {"inputs": spec_json(fn.structured_input_signature[1]),
                      "outputs": spec_json(fn.structured_outputs),
                      "method_name": "tensorflow/serving/predict"}
    return {"model_spec": {"name": model.name, "signature_name": "", "version": str(version)},
            "metadata": {"signature_def": {"signature_def": defs}}}


def status_json(model: ServedModel, version) -> dict:
    """TF Serving's model status: loaded versions AVAILABLE, failed ones END with their
    error."""
    with model._lock:
        states = {v: ("AVAILABLE", "OK", "") for v in model.versions}
        states.update({v: ("END", "UNKNOWN", e) for v, e in model.failed.items()})
    if version is not None:
        if version not in states:
            raise RequestError(f"Servable not found for request: Specific({model.name}, "
                               f"{version})", 404)
        states = {version: states[version]}
    return {"model_version_status": [
        {"version": str(v), "state": state,
         "status": {"error_code": code, "error_message": message}}
        for v, (state, code, message) in sorted(states.items(), reverse=True)]}


def make_http_server(model: ServedModel | None, host="127.0.0.1", port=8501, max_body=1 << 20,
                     idle_timeout=15.0, max_connections=128, api=None):
    """The REST server: TF Serving's REST API for `model` (a ServedModel, or None), and the
    OpenAI API for `api` (a `serving.openai_api.OpenAIService`, or None). Framing is
    checked before a body is read: a missing, negative or malformed Content-Length, chunked
    bodies and bodies over `max_body` get a 4xx and a closed connection. A connection silent for `idle_timeout` seconds (idle keep-alive,
    or a client that stops sending mid-request) is closed; at most `max_connections` are
    served at once, later ones get 503 until one ends."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = idle_timeout  # socket timeout for every read: bounds idle and slow clients

        def log_message(self, fmt, *args):  # quiet unless asked
            if os.environ.get("TFLLM_DEV_SERVER_LOG"):
                super().log_message(fmt, *args)

        def _send(self, status, payload, close=False):
            data = json.dumps(payload).encode()
            if close:
                self.close_connection = True
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if close:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def __getattr__(self, name):
            # Any other method (PUT, DELETE, BREW...) is the client's error: 405, not the
            # 501 http.server answers by default.
            if name.startswith("do_"):
                return self._not_allowed
            raise AttributeError(name)

        def _not_allowed(self):
            self.send_response(405)
            self.send_header("Allow", "GET, POST")
            self.send_header("Content-Type", "application/json")
            data = json.dumps({"error": f"method {self.command} is not allowed"}).encode()
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _linger(self, seconds=1.0, limit=16 << 20):
            """Half-close, then read and drop what the client still sends (bounded in time
            and bytes): closing with unread data makes the kernel answer with a reset,
            which can destroy the error response before the client reads it."""
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_WR)
                self.connection.settimeout(seconds)
                deadline, seen = time.monotonic() + seconds, 0
                while seen < limit and time.monotonic() < deadline:
                    chunk = self.connection.recv(65536)
                    if not chunk:
                        break
                    seen += len(chunk)
            except OSError:
                pass

        def _model(self, name):
            if model is None or name != model.name:
                raise RequestError(f"Servable not found for request: Latest({name})", 404)

        def _openai_path(self):
            """The OpenAI endpoint this request's path names, or None (TF Serving's REST
            paths share /v1/models/NAME: a SavedModel's name there is TF Serving's)."""
            if api is None:
                return None
            path = self.path.split("?", 1)[0].rstrip("/")
            if path in ("/v1/models", "/v1/chat/completions", "/v1/completions",
                        "/v1/embeddings"):
                return path
            if path == f"/v1/models/{api.name}" and (model is None or model.name != api.name):
                return path
            return None

        def _stream(self, chunks):
            """Server-sent events, one HTTP chunk each, ending with `data: [DONE]`."""
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

                def event(text):
                    data = f"data: {text}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()

                try:
                    for chunk in chunks:
                        event(json.dumps(chunk, ensure_ascii=False))
                except (ConnectionError, TimeoutError):
                    raise
                except Exception as e:  # after the headers: an error event ends the stream
                    event(json.dumps(_openai_error(e)))
                event("[DONE]")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            finally:
                getattr(chunks, "close", lambda: None)()

        def _openai(self, path, raw):
            from .openai_api import ApiError

            try:
                if raw is None:
                    if path == "/v1/models":
                        return self._send(200, api.models())
                    if path.startswith("/v1/models/"):
                        return self._send(200, api.model_object())
                    raise ApiError(f"use POST for {path}", status=405)
                if path.startswith("/v1/models"):
                    raise ApiError(f"use GET for {path}", status=405)
                try:
                    body = parse_json(raw)
                except (ValueError, UnicodeDecodeError, RecursionError) as e:
                    raise ApiError(f"We could not parse the JSON body of your request ({e})"
                                   ) from None
                endpoint = {"/v1/chat/completions": api.chat_completions,
                            "/v1/completions": api.completions,
                            "/v1/embeddings": api.embeddings}[path]
                result = endpoint(body)
                if isinstance(result, dict):
                    return self._send(200, result)
                self._stream(result)
            except (ConnectionError, TimeoutError):
                self.close_connection = True
            except Exception as e:
                error = _openai_error(e)
                self._send(error["error"].pop("status"), error)

        def do_GET(self):
            path = self._openai_path()
            if path:
                return self._openai(path, None)
            try:
                m = _METADATA.match(self.path)
                if m:
                    self._model(m.group(1))
                    return self._send(200, metadata_json(model, _int(m.group(2))))
                m = _PREDICT.match(self.path)
                if m and not m.group(3):
                    self._model(m.group(1))
                    return self._send(200, status_json(model, _int(m.group(2))))
                raise RequestError(f"Malformed request: GET {self.path}", 404)
            except RequestError as e:
                self._send(e.status, {"error": str(e)})

        def _read_body(self):
            """The request body, or RequestError (the connection is then closed: what
            follows an unread or half-read body cannot be parsed as a request)."""
            if self.headers.get("Transfer-Encoding"):
                raise RequestError("chunked request bodies are not accepted; send "
                                   "Content-Length", 411)
            raw_length = self.headers.get("Content-Length")
            if raw_length is None:
                raise RequestError("a POST needs a Content-Length header", 411)
            raw_length = raw_length.strip()
            if not raw_length.isdigit() or len(raw_length) > 18:
                raise RequestError(f"invalid Content-Length {raw_length[:40]!r}")
            length = int(raw_length)
            if length > max_body:
                raise RequestError(f"request body of {length} bytes exceeds the limit of "
                                   f"{max_body}", 413)
            try:
                raw = self.rfile.read(length)
            except (TimeoutError, OSError):
                raise RequestError(f"the request body did not arrive within "
                                   f"{idle_timeout:g} s", 408) from None
            if len(raw) < length:
                raise RequestError(f"the request body ended after {len(raw)} of {length} "
                                   "bytes")
            return raw

        def do_POST(self):
            openai_path = self._openai_path()
            try:
                try:
                    raw = self._read_body()
                except RequestError as e:
                    payload = {"error": str(e)}
                    if openai_path:
                        payload = {"error": {"message": str(e), "type":
                                             "invalid_request_error", "param": None,
                                             "code": None}}
                    self._send(e.status, payload, close=True)
                    return self._linger()
                if openai_path:
                    return self._openai(openai_path, raw)
                m = _PREDICT.match(self.path)
                if not m or not m.group(3):
                    raise RequestError(f"Malformed request: POST {self.path}", 404)
                self._model(m.group(1))
                try:
                    body = parse_json(raw)
                except (ValueError, UnicodeDecodeError) as e:
                    raise RequestError(f"JSON Parse error: {e}") from None
                except RecursionError:
                    raise RequestError("JSON Parse error: nested too deeply") from None
                self._send(200, predict_json(model, _int(m.group(2)), body))
            except RequestError as e:
                self._send(e.status, {"error": str(e)})
            except (ConnectionError, TimeoutError):
                self.close_connection = True  # the client went away: nothing to answer
            except Exception as e:  # a server bug must not take the server down
                self._send(500, {"error": f"{type(e).__name__}: {e}"})

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        # socketserver's default listen backlog of 5 resets bursts of concurrent clients.
        request_queue_size = 128
        slots = threading.BoundedSemaphore(max_connections)

        def process_request(self, request, client_address):
            if not self.slots.acquire(blocking=False):
                try:
                    request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
                                    b"application/json\r\nContent-Length: 41\r\n"
                                    b"Connection: close\r\n\r\n"
                                    b'{"error": "too many connections; retry"}\n')
                except OSError:
                    pass
                self.shutdown_request(request)
                return
            super().process_request(request, client_address)

        def process_request_thread(self, request, client_address):
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.slots.release()

        def handle_error(self, request, client_address):
            # A client that resets its connection before its request line (a probe, a
            # client giving up under load) is no server error: no traceback in the log.
            if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
                return
            super().handle_error(request, client_address)

    try:
        return Server((host, port), Handler)
    except OSError as e:
        raise ServerStartError(f"cannot listen on {host}:{port} ({e.strerror or e}); is "
                               "another server using the port? Pass --port") from None


def _int(s):
    return None if s is None else int(s)


def _openai_error(error) -> dict:
    """An OpenAI error object (with the HTTP status under "status") for an exception: ours
    as they are, a request our library refuses (TfllmError) as 400, anything else 500
    without a traceback."""
    from .openai_api import ApiError

    if isinstance(error, ApiError):
        body = error.body()
        body["error"]["status"] = error.status
        return body
    if isinstance(error, TfllmError):
        return {"error": {"message": str(error), "type": "invalid_request_error",
                          "param": None, "code": None, "status": 400}}
    return {"error": {"message": f"internal error: {type(error).__name__}: "
                                 f"{str(error)[:200]}", "type": "server_error",
                      "param": None, "code": None, "status": 500}}


def make_grpc_server(model: ServedModel, host="127.0.0.1", port=8500, max_body=1 << 20,
                     workers=8):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            try:
                if request.model_spec.name != model.name:
                    raise RequestError(f"Servable not found for request: "
                                       f"Latest({request.model_spec.name})", 404)
                version = (request.model_spec.version.value
                           if request.model_spec.HasField("version") else None)
                fn = model.signature(version, request.model_spec.signature_name)
                try:
                    columns = {k: tf.make_ndarray(v).tolist()
                               for k, v in request.inputs.items()}
                except (TypeError, ValueError, OverflowError) as e:
                    raise RequestError(f"an input tensor cannot be read: {e}") from None
                out = model.run(fn, columns)
            except RequestError as e:
                code = grpc.StatusCode.NOT_FOUND if e.status == 404 else \
                    grpc.StatusCode.INVALID_ARGUMENT
                context.abort(code, str(e))
            response = predict_pb2.PredictResponse()
            response.model_spec.name = model.name
            response.model_spec.signature_name = request.model_spec.signature_name or \
                "serving_default"
            for k, v in out.items():
                response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         options=[("grpc.max_receive_message_length", max_body)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise ServerStartError(f"cannot listen on {host}:{port} for gRPC; is another server "
                               "using the port? Pass --grpc-port (0 turns gRPC off)")
    return server


def main(argv=None):
    return run_main(os.environ.get("TFLLM_PROG") or "dev_server", _serve, parse_args(argv))


def _serve(args):
    model = api = None
    if args.model_dir:
        if not os.path.isdir(args.model_dir):
            raise ServerStartError(f"{args.model_dir} is not a directory")
        model = ServedModel(args.model_dir, args.max_batch)
    if args.run:
        from tfllm import runs
        from tfllm.tokenizers.chat_template import read_template_arg
        from .openai_api import OpenAIService

        if not runs.is_run_dir(args.run):
            raise ServerStartError(f"{args.run} is not a run directory (no config.json)")
        template = read_template_arg(args.template) if args.template else None
        api = OpenAIService(args.run, args.model_name, template, args.max_waiting,
                            args.decode_batch, args.prefill_cache)
        started = time.perf_counter()
        # Progress on stderr: stdout's first line says the server is serving.
        api.warm_up(lambda line: print(f"warming up: {line}", file=sys.stderr, flush=True))
        print(f"warmed up in {time.perf_counter() - started:.1f} s", file=sys.stderr,
              flush=True)
    http = make_http_server(model, args.host, args.port, args.max_body_bytes,
                            args.idle_timeout, args.max_connections, api)
    port = http.server_address[1]  # --port 0: the free port the system gave
    grpc_server = None
    if args.grpc_port and model is not None:
        grpc_server = make_grpc_server(model, args.host, args.grpc_port, args.max_body_bytes)
        grpc_server.start()
    if model is not None:
        failed = "".join(f"; version {v} failed to load: {e}"
                         for v, e in sorted(model.failed.items()))
        print(f"serving {model.name} versions {sorted(model.versions)} on "
              f"http://{args.host}:{port}"
              + (f" and grpc {args.host}:{args.grpc_port}" if grpc_server else "") + failed,
              flush=True)
    if api is not None:
        print(f"serving {args.run} as model {api.name!r} over the OpenAI API at "
              f"http://{args.host}:{port}/v1", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    if args.poll_seconds and model is not None:
        def poll():
            while not stop.wait(args.poll_seconds):
                for change in model.refresh():
                    print(f"{model.name}: {change}", flush=True)

        threading.Thread(target=poll, daemon=True).start()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    http.shutdown()
    if grpc_server:
        grpc_server.stop(grace=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
