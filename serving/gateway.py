"""An OpenAI API gateway in front of TF Serving.

    tfllm gateway --tf-serving http://localhost:8501 --model smollm2 [--port 8080]

A small stateless process: it answers OpenAI's `/v1/chat/completions`, `/v1/completions`,
`/v1/embeddings` and `/v1/models` by calling TF Serving's REST Predict on the signatures
`tfllm export saved-model` writes (`chat`, `chat_with_system` for one user message,
`conversation` for any other conversation, `chat_NAME` / `conversation_NAME` for a
`--json-schema NAME=FILE`, `generate`, `embed`), so N TF Serving replicas behind a load
balancer serve OpenAI clients; run as many gateways as you like. It holds no model and
imports no TensorFlow.

Built on aiohttp (one well-kept package for the asyncio HTTP server and the client to TF
Serving): each request is a coroutine, so thousands of open connections cost no threads;
at most --max-concurrency Predict calls are in flight, --max-waiting more wait, later ones
get 503 at once; every Predict call has a --timeout (504 past it); bodies are capped at
--max-body-bytes (413). GET /healthz (the process answers) and GET /readyz (TF Serving has
the model AVAILABLE) are for Kubernetes' liveness and readiness probes.

Streaming: TF Serving answers a Predict call with one response, so a `"stream": true`
request gets the whole reply as one content chunk (server-sent events in OpenAI's format,
ending with `data: [DONE]`): clients that stream work unchanged, but the first token
arrives with the last. For token-by-token streams use `tfllm serve --run` (in process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import time
import uuid


def build_parser():
    name = os.environ.get("TFLLM_PROG") or "python -m serving.gateway"
    parser = argparse.ArgumentParser(prog=name, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", action="store_true", help="log every request")
    parser.add_argument("--tf-serving", required=True, metavar="URL",
                        help="TF Serving's REST address, e.g. http://localhost:8501")
    parser.add_argument("--model", required=True,
                        help="the model's name in TF Serving (its model_config name)")
    parser.add_argument("--model-id", help="the model id OpenAI clients name (default: "
                        "--model)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default "
                        "127.0.0.1; 0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument("--max-concurrency", type=int, default=32,
                        help="Predict calls in flight to TF Serving (default 32)")
    parser.add_argument("--max-waiting", type=int, default=256,
                        help="requests that may wait for a call slot; more get 503 "
                             "(default 256)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds a Predict call may take before the request gets 504 "
                             "(default 120)")
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20,
                        help="largest request body accepted (default 1 MiB)")
    parser.add_argument("--default-max-tokens", type=int, default=256,
                        help="reply budget when a request gives no max_tokens (default 256)")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for key in ("port", "max_concurrency", "max_waiting", "max_body_bytes",
                "default_max_tokens"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be positive")
    if args.port > 65535:
        parser.error(f"--port must be from 1 to 65535, got {args.port}")
    if not 0 < args.timeout < 86400:
        parser.error("--timeout must be a positive number of seconds")
    if not args.tf_serving.startswith(("http://", "https://")):
        parser.error(f"--tf-serving must be an http:// or https:// URL, got "
                     f"{args.tf_serving[:80]!r}")
    return args


if __name__ == "__main__":  # --help and bad arguments answer before aiohttp loads
    parse_args()

try:
    from aiohttp import ClientError, ClientSession, ClientTimeout, web  # noqa: E402
except ImportError:  # pragma: no cover - an install without the extra
    sys.exit(f"{os.environ.get('TFLLM_PROG') or 'gateway'}: error: the gateway needs "
             "aiohttp: pip install 'tfllm[gateway]'")

from tfllm.errors import TfllmError, run_main  # noqa: E402
from tfllm.untrusted import parse_json  # noqa: E402

from .openai_requests import (ApiError, check_model, read_conversation, read_prompts,  # noqa: E402
                              read_response_format, read_sampling, read_texts, usage)


class GatewayStartError(TfllmError):
    """The gateway cannot start (a port in use)."""


class Gateway:
    """The OpenAI endpoints over one TF Serving model.

    Args:
        upstream: TF Serving's REST address (`http://host:8501`).
        model: the model's name in TF Serving.
        model_id: the id clients name (default `model`).
        max_concurrency, max_waiting, timeout, default_max_tokens: as the options.
    """

    def __init__(self, upstream, model, model_id=None, max_concurrency=32, max_waiting=256,
                 timeout=120.0, default_max_tokens=256):
        self.upstream = upstream.rstrip("/")
        self.model, self.model_id = model, model_id or model
        self.timeout, self.default_max_tokens = timeout, default_max_tokens
        self.max_waiting = max_waiting
        self._slots = asyncio.Semaphore(max_concurrency)
        self._waiting = 0
        self._session = None
        self._signatures, self._signatures_at = None, 0.0
        self.created = int(time.time())

    # -- TF Serving ----------------------------------------------------------------------
    async def start(self, _app=None):
        self._session = ClientSession(timeout=ClientTimeout(total=self.timeout))

    async def stop(self, _app=None):
        if self._session is not None:
            await self._session.close()

    async def _call(self, method, path, payload=None):
        """(status, JSON body) of a call to TF Serving, holding a call slot."""
        if self._waiting >= self.max_waiting:
            raise ApiError("the gateway is busy: too many requests waiting; retry shortly",
                           status=503, type_="server_error", code="overloaded")
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            async with self._session.request(method, self.upstream + path,
                                             json=payload) as r:
                try:
                    body = await r.json(content_type=None)
                except ValueError:
                    body = {"error": (await r.text())[:300]}
                return r.status, body
        except asyncio.TimeoutError:
            raise ApiError(f"TF Serving did not answer within {self.timeout:g} s",
                           status=504, type_="server_error", code="timeout") from None
        except ClientError as e:
            raise ApiError(f"TF Serving at {self.upstream} cannot be reached ({e})",
                           status=503, type_="server_error",
                           code="upstream_unavailable") from None
        finally:
            self._slots.release()

    async def signatures(self) -> dict:
        """{signature name: input names} of the served version (cached for 30 s)."""
        if self._signatures is None or time.monotonic() - self._signatures_at > 30:
            status, body = await self._call("GET", f"/v1/models/{self.model}/metadata")
            if status != 200:
                raise ApiError(f"TF Serving does not serve {self.model!r}: "
                               f"{str(body.get('error', body))[:200]}", status=503,
                               type_="server_error", code="upstream_unavailable")
            defs = body["metadata"]["signature_def"]["signature_def"]
            self._signatures = {name: set(d.get("inputs", {})) for name, d in defs.items()}
            self._signatures_at = time.monotonic()
        return self._signatures

    async def predict(self, signature, instances, param=None) -> list:
        status, body = await self._call(
            "POST", f"/v1/models/{self.model}:predict",
            {"signature_name": signature, "instances": instances})
        if status == 200:
            return body["predictions"]
        message = str(body.get("error", body))[:500]
        if status == 400:  # the signature refused a value (INVALID_ARGUMENT)
            raise ApiError(message, param)
        raise ApiError(f"TF Serving answered {status}: {message}", status=502,
                       type_="server_error", code="upstream_error")

    async def ready(self) -> bool:
        try:
            status, body = await self._call("GET", f"/v1/models/{self.model}")
        except ApiError:
            return False
        return status == 200 and any(v.get("state") == "AVAILABLE"
                                     for v in body.get("model_version_status", []))

    # -- the OpenAI API ------------------------------------------------------------------
    def _check_model(self, body):
        check_model(body, self.model_id, "gateway")

    def _seeds(self, common):
        # A request without a seed samples with fresh ones (the signature needs a value).
        return [s if s is not None else secrets.randbelow(1 << 31) for s in common["seeds"]]

    async def chat_completions(self, body):
        self._check_model(body)
        common = read_sampling(body, default_max=self.default_max_tokens)
        if common["stop"]:
            raise ApiError("stop strings are not applied through TF Serving (the chat "
                           "signature ends a reply at the template's end of turn); drop "
                           "stop, or use tfllm serve --run", "stop")
        if body.get("tools"):
            raise ApiError("tools are not offered through the gateway yet; use tfllm serve "
                           "--run", "tools")
        turns, system = read_conversation(body.get("messages"))
        if any(t["role"] == "tool" or t.get("tool_calls") for t in turns):
            raise ApiError("tool calls and results are not passed through the gateway yet; "
                           "use tfllm serve --run", "messages")
        schema = read_response_format(body.get("response_format"))
        # One user message (after a system one) goes to the chat signatures, any other
        # conversation to `conversation`, which renders whole conversations in the graph.
        single = len(turns) == 1
        name = "conversation" if not single else "chat" if system is None else \
            "chat_with_system"
        if not single and name not in await self.signatures():
            raise ApiError("this SavedModel has no conversation signature (exported before "
                           "it existed, or its template does not decompose into turns: the "
                           "export said why); send one user message, or use tfllm serve "
                           "--run", "messages")
        if schema is not None:
            spec = (body.get("response_format") or {}).get("json_schema") or {}
            suffix = spec.get("name") if isinstance(spec, dict) else None
            name = f"{name}_{suffix}"
            if not isinstance(suffix, str) or name not in await self.signatures():
                raise ApiError(f"response_format: the SavedModel has no {name} signature; "
                               "export it with --json-schema NAME=FILE and name that NAME "
                               "in json_schema.name", "response_format")
        elif name not in await self.signatures():
            raise ApiError(f"the SavedModel has no {name} signature: export a run with a "
                           "chat template", "messages")
        row = {"max_new_tokens": common["max_new"], "temperature": common["temperature"],
               "top_k": 0, "top_p": common["top_p"] or 1.0}
        if not single:
            every = ([] if system is None else [{"role": "system", "content": system}]) + turns
            row.update(roles=[t["role"] for t in every], contents=[t["content"] for t in every])
        else:
            row["message"] = turns[0]["content"]
            if system is not None:
                row["system"] = system
        rows = [dict(row, seed=seed) for seed in self._seeds(common)]
        out = await self.predict(name, rows, common["max_param"])
        meta = {"id": "chatcmpl-" + uuid.uuid4().hex, "created": int(time.time()),
                "model": self.model_id}
        choices = [{"index": i, "message": {"role": "assistant", "content": p["text"]},
                    "finish_reason": _finish(p, common["max_new"]), "logprobs": None}
                   for i, p in enumerate(out)]
        counts = usage(sum(p.get("num_prompt_tokens", 0) for p in out),
                       sum(_reply_tokens(p) for p in out))
        if not common["stream"]:
            return dict(meta, object="chat.completion", choices=choices, usage=counts)

        def stream():
            for c in choices:
                delta = {"index": c["index"], "logprobs": None, "finish_reason": None}
                for d in ({"role": "assistant", "content": ""},
                          {"content": c["message"]["content"]}):
                    yield dict(meta, object="chat.completion.chunk",
                               choices=[dict(delta, delta=d)])
                yield dict(meta, object="chat.completion.chunk", choices=[
                    dict(delta, delta={}, finish_reason=c["finish_reason"])])
            if common["include_usage"]:
                yield dict(meta, object="chat.completion.chunk", choices=[], usage=counts)

        return stream()

    async def completions(self, body):
        self._check_model(body)
        common = read_sampling(body, default_max=16)
        if common["stop"]:
            raise ApiError("stop strings are not applied through TF Serving; drop stop, or "
                           "use tfllm serve --run", "stop")
        prompts, echo = read_prompts(body, len(common["seeds"]))
        rows = [{"prompt": p, "max_new_tokens": common["max_new"],
                 "temperature": common["temperature"], "top_k": 0,
                 "top_p": common["top_p"] or 1.0, "seed": seed}
                for p in prompts for seed in self._seeds(common)]
        out = await self.predict("generate", rows, common["max_param"])
        meta = {"id": "cmpl-" + uuid.uuid4().hex, "created": int(time.time()),
                "model": self.model_id}
        choices = [{"index": i, "text": (r["prompt"] if echo else "") + p["text"],
                    "finish_reason": _finish(p, common["max_new"]), "logprobs": None}
                   for i, (r, p) in enumerate(zip(rows, out))]
        counts = usage(sum(p.get("num_prompt_tokens", 0) for p in out),
                       sum(_reply_tokens(p) for p in out))
        if not common["stream"]:
            return dict(meta, object="text_completion", choices=choices, usage=counts)

        def stream():
            for c in choices:
                yield dict(meta, object="text_completion", choices=[dict(c, finish_reason=None)])
                yield dict(meta, object="text_completion", choices=[dict(c, text="")])
            if common["include_usage"]:
                yield dict(meta, object="text_completion", choices=[], usage=counts)

        return stream()

    async def embeddings(self, body):
        import base64
        import struct

        self._check_model(body)
        texts = read_texts(body.get("input"), "input")
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise ApiError(f"encoding_format must be float or base64, got {fmt!r}",
                           "encoding_format")
        if "embed" not in await self.signatures():
            raise ApiError(f"`{self.model_id}` has no embed signature: embeddings come from "
                           "encoder runs' SavedModels", "model")
        out = await self.predict("embed", [{"text": t} for t in texts], "input")
        dims = body.get("dimensions")
        if dims is not None and out and dims != len(out[0]["embedding"]):
            raise ApiError(f"this model's embeddings have {len(out[0]['embedding'])} "
                           f"dimensions; dimensions={dims!r} cannot be given", "dimensions")
        data = []
        for i, p in enumerate(out):
            v = p["embedding"]
            if fmt == "base64":
                v = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
            data.append({"object": "embedding", "index": i, "embedding": v})
        tokens = sum(p.get("num_tokens", 0) for p in out)
        return {"object": "list", "data": data, "model": self.model_id,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    def model_object(self):
        return {"id": self.model_id, "object": "model", "created": self.created,
                "owned_by": "tfllm"}


def _finish(prediction, max_new):
    """A row stopped at its end token or end of turn ("stop") or used its budget."""
    if prediction.get("finished") is not None:
        return "stop" if prediction["finished"] else "length"
    return "length" if prediction.get("num_generated", 0) >= max_new else "stop"


def _reply_tokens(prediction):
    """The reply's tokens, its end token not counted (as `tfllm serve --run` counts)."""
    n = int(prediction.get("num_generated", 0))
    return n - 1 if prediction.get("finished") and n else n


# -- HTTP ------------------------------------------------------------------------------------
def make_app(gateway: Gateway, max_body=1 << 20, verbose=False) -> web.Application:
    """The aiohttp application: OpenAI routes, probes, and errors as OpenAI error objects."""

    @web.middleware
    async def errors(request, handler):
        try:
            return await handler(request)
        except ApiError as e:
            return web.json_response(e.body(), status=e.status)
        except web.HTTPException as e:  # aiohttp's own: 404, 405, 413 ...
            return web.json_response({"error": {"message": e.reason, "type":
                                                "invalid_request_error", "param": None,
                                                "code": None}}, status=e.status)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as e:  # a bug answers 500 without a traceback to the client
            print(f"gateway: internal error: {type(e).__name__}: {e}", file=sys.stderr,
                  flush=True)
            return web.json_response({"error": {"message": f"internal error: "
                                                f"{type(e).__name__}", "type":
                                                "server_error", "param": None,
                                                "code": None}}, status=500)

    async def read_json(request):
        try:
            return parse_json(await request.read())
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise ApiError(f"We could not parse the JSON body of your request ({e})") \
                from None

    def endpoint(method):
        async def handle(request):
            result = await method(await read_json(request))
            if isinstance(result, dict):
                return web.json_response(result)
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                                   "Cache-Control": "no-cache"})
            await response.prepare(request)
            for chunk in result:
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        return handle

    async def models(_request):
        return web.json_response({"object": "list", "data": [gateway.model_object()]})

    async def model(request):
        if request.match_info["id"] != gateway.model_id:
            raise ApiError(f"The model `{request.match_info['id'][:100]}` does not exist",
                           "model", 404, code="model_not_found")
        return web.json_response(gateway.model_object())

    async def healthz(_request):
        return web.json_response({"status": "ok"})

    async def readyz(_request):
        if await gateway.ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": f"TF Serving has no AVAILABLE version of "
                                            f"{gateway.model}"}, status=503)

    app = web.Application(client_max_size=max_body, middlewares=[errors])
    app.on_startup.append(gateway.start)
    app.on_cleanup.append(gateway.stop)
    app.add_routes([web.post("/v1/chat/completions", endpoint(gateway.chat_completions)),
                    web.post("/v1/completions", endpoint(gateway.completions)),
                    web.post("/v1/embeddings", endpoint(gateway.embeddings)),
                    web.get("/v1/models", models), web.get("/v1/models/{id}", model),
                    web.get("/healthz", healthz), web.get("/readyz", readyz)])
    return app


def main(argv=None):
    return run_main(os.environ.get("TFLLM_PROG") or "gateway", _serve, parse_args(argv))


def _serve(args):
    gateway = Gateway(args.tf_serving, args.model, args.model_id, args.max_concurrency,
                      args.max_waiting, args.timeout, args.default_max_tokens)
    app = make_app(gateway, args.max_body_bytes, args.verbose)

    def ready_line(*_):
        print(f"gateway for {args.model} at {args.tf_serving} as model "
              f"{gateway.model_id!r} on http://{args.host}:{args.port}/v1", flush=True)

    try:
        web.run_app(app, host=args.host, port=args.port, print=ready_line,
                    access_log=None if not args.verbose else web.access_logger,
                    handle_signals=True)
    except OSError as e:
        raise GatewayStartError(f"cannot listen on {args.host}:{args.port} "
                                f"({e.strerror or e}); pass --port") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
