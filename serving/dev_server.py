"""A local development server that speaks TF Serving's REST and gRPC APIs.

    python -m serving.dev_server --model-dir models/demo [--port 8501] [--grpc-port 8500]

For development and tests where Docker and TF Serving are not available; in production use
the real TF Serving (serving/Dockerfile). It loads every integer version under
`--model-dir` (the model's name is the directory's), answers `:predict` in row and columnar
formats, model status and metadata, and `PredictionService.Predict` over gRPC. It binds
127.0.0.1 unless told otherwise, caps the request body and batch size, and serves
requests concurrently.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import signal
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402,F401  (registers the SentencePiece ops)

_PREDICT = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?(?::(predict))?$")
_METADATA = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?/metadata$")


class RequestError(Exception):
    """A bad request: answered with `status` and {"error": message}."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


class ServedModel:
    """Every version of one SavedModel directory tree (DIR/VERSION/saved_model.pb)."""

    def __init__(self, model_dir, max_batch=32):
        self.name = os.path.basename(os.path.normpath(model_dir))
        self.max_batch = max_batch
        versions = sorted(int(d) for d in os.listdir(model_dir) if d.isdigit() and
                          os.path.isfile(os.path.join(model_dir, d, "saved_model.pb")))
        if not versions:
            raise SystemExit(f"dev_server: no versions (DIR/N/saved_model.pb) in {model_dir}")
        self.versions = {v: tf.saved_model.load(os.path.join(model_dir, str(v)))
                         for v in versions}
        self.latest = versions[-1]

    def signature(self, version, name):
        if version is None:
            version = self.latest
        if version not in self.versions:
            raise RequestError(f"Servable not found for request: Specific({self.name}, "
                               f"{version})", 404)
        sigs = self.versions[version].signatures
        name = name or "serving_default"
        if name not in sigs:
            raise RequestError(f"Serving signature name: \"{name}\" not found in signature def; "
                               f"available: {sorted(sigs)}")
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
                    array = np.array([_to_bytes(v) for v in _as_list(value, key)], dtype=object)
                else:
                    array = _numeric(value, spec.dtype, key)
            except (TypeError, ValueError) as e:
                raise RequestError(f"input {key!r}: {e}") from None
            if array.ndim != len(spec.shape):
                raise RequestError(f"input {key!r} must have rank {len(spec.shape)}, "
                                   f"got shape {list(array.shape)}")
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


def _tf_error_message(error):
    """The useful line of a TF runtime error: an assertion's own message if there is one."""
    text = error.message or str(error)
    m = re.search(r"assertion failed: \[(.*?)\]", text)
    if m:
        return m.group(1).replace("\\'", "'")
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _as_list(value, key):
    if not isinstance(value, list):
        raise TypeError(f"expected a list (one value per row), got {type(value).__name__}")
    return value


def _to_bytes(v):
    if isinstance(v, bytes):  # gRPC TensorProtos carry bytes
        return v
    if isinstance(v, dict) and set(v) == {"b64"}:
        return base64.b64decode(v["b64"])
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {type(v).__name__} {v!r}")
    return v.encode("utf-8")


def _numeric(value, dtype, key):
    items = _as_list(value, key)
    for v in items:
        if isinstance(v, (bool, str, dict, list)) or v is None:
            raise TypeError(f"expected {dtype.name} numbers, got {type(v).__name__} {v!r}")
        if dtype.is_integer and float(v) != int(v):
            raise TypeError(f"expected {dtype.name}, got {v!r}")
    return np.array(items, dtype=dtype.as_numpy_dtype)


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
    version = model.latest if version is None else version
    if version not in model.versions:
        raise RequestError(f"Servable not found for request: Specific({model.name}, {version})",
                           404)
    defs = {}
    for name, fn in model.versions[version].signatures.items():
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
    versions = [version] if version is not None else sorted(model.versions, reverse=True)
    if version is not None and version not in model.versions:
        raise RequestError(f"Servable not found for request: Specific({model.name}, {version})",
                           404)
    return {"model_version_status": [
        {"version": str(v), "state": "AVAILABLE",
         "status": {"error_code": "OK", "error_message": ""}} for v in versions]}


def make_http_server(model: ServedModel, host="127.0.0.1", port=8501, max_body=1 << 20):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet unless asked
            if os.environ.get("TFLLM_DEV_SERVER_LOG"):
                super().log_message(fmt, *args)

        def _send(self, status, payload):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _model(self, name):
            if name != model.name:
                raise RequestError(f"Servable not found for request: Latest({name})", 404)

        def do_GET(self):
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

        def do_POST(self):
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > max_body:
                    self.close_connection = True  # the unread body must not be parsed
                    raise RequestError(f"request body of {length} bytes exceeds the limit of "
                                       f"{max_body}", 413)
                raw = self.rfile.read(length)
                m = _PREDICT.match(self.path)
                if not m or not m.group(3):
                    raise RequestError(f"Malformed request: POST {self.path}", 404)
                self._model(m.group(1))
                try:
                    body = json.loads(raw)
                except (ValueError, UnicodeDecodeError) as e:
                    raise RequestError(f"JSON Parse error: {e}") from None
                self._send(200, predict_json(model, _int(m.group(2)), body))
            except RequestError as e:
                self._send(e.status, {"error": str(e)})
            except Exception as e:  # a server bug must not take the server down
                self._send(500, {"error": f"{type(e).__name__}: {e}"})

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        # socketserver's default listen backlog of 5 resets bursts of concurrent clients.
        request_queue_size = 128

    return Server((host, port), Handler)


def _int(s):
    return None if s is None else int(s)


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
                columns = {k: tf.make_ndarray(v).tolist() for k, v in request.inputs.items()}
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
    server.add_insecure_port(f"{host}:{port}")
    return server


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m serving.dev_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="DIR/NAME holding version dirs")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8501, help="REST port (default 8501)")
    parser.add_argument("--grpc-port", type=int, default=8500,
                        help="gRPC port (default 8500; 0 disables gRPC)")
    parser.add_argument("--max-batch", type=int, default=32, help="largest batch accepted")
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20,
                        help="largest request body accepted (default 1 MiB)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.model_dir):
        print(f"dev_server: error: {args.model_dir} is not a directory", file=sys.stderr)
        return 2
    model = ServedModel(args.model_dir, args.max_batch)
    http = make_http_server(model, args.host, args.port, args.max_body_bytes)
    grpc_server = None
    if args.grpc_port:
        grpc_server = make_grpc_server(model, args.host, args.grpc_port, args.max_body_bytes)
        grpc_server.start()
    print(f"serving {model.name} versions {sorted(model.versions)} on "
          f"http://{args.host}:{args.port}"
          + (f" and grpc {args.host}:{args.grpc_port}" if grpc_server else ""), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
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
