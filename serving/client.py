"""Query a tfllm model served by TF Serving (or serving.dev_server) over REST or gRPC.

    python -m serving.client --url http://localhost:8501 --model demo --prompt "ROMEO:"
    python -m serving.client --grpc localhost:8500 --model demo --prompt "ROMEO:" --temperature 0.8
    python -m serving.client --url http://localhost:8501 --model smollm2 \
        --signature generate_message --prompt "..."     (an export's --json-schema message=FILE)

Prints each completion (prompt + generated text); `--json` prints the raw outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

GENERATE_DEFAULTS = {"max_new_tokens": 32, "temperature": 0.0, "top_k": 0, "top_p": 1.0,
                     "seed": 0}


class ServingError(RuntimeError):
    """The server answered with an error (its message is kept)."""


def generate_instances(prompts, **params):
    """Row-format instances for the generate signature (every input per row)."""
    values = {**GENERATE_DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    return [{"prompt": p, **values} for p in prompts]


def predict_rest(url, model, instances=None, inputs=None, signature="serving_default",
                 version=None, timeout=600):
    """POST :predict in row (`instances`) or columnar (`inputs`) format; returns the JSON."""
    path = f"{url.rstrip('/')}/v1/models/{model}"
    if version is not None:
        path += f"/versions/{version}"
    body = {"signature_name": signature}
    if instances is not None:
        body["instances"] = instances
    else:
        body["inputs"] = inputs
    req = urllib.request.Request(f"{path}:predict", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("error", "")
        except (ValueError, AttributeError):
            message = ""
        raise ServingError(f"HTTP {e.code}: {message or e.reason}") from e
    except urllib.error.URLError as e:
        raise ServingError(f"cannot reach {url}: {e.reason}") from e


def generate_rest(url, model, prompts, version=None, signature="generate", **params):
    """Generate over REST; returns a list of {"text", "token_ids", "num_generated"}."""
    result = predict_rest(url, model, instances=generate_instances(prompts, **params),
                          signature=signature, version=version)
    return result["predictions"]


def generate_grpc(target, model, prompts, version=None, signature="generate", timeout=600,
                  **params):
    """Generate over gRPC (PredictionService.Predict); same result shape as REST."""
    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    values = {**GENERATE_DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    n = len(prompts)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    request.inputs["prompt"].CopyFrom(tf.make_tensor_proto([p.encode() for p in prompts],
                                                           dtype=tf.string))
    for key, dtype in (("max_new_tokens", np.int32), ("temperature", np.float32),
                       ("top_k", np.int32), ("top_p", np.float32), ("seed", np.int32)):
        request.inputs[key].CopyFrom(tf.make_tensor_proto(np.full([n], values[key], dtype)))
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as e:
            raise ServingError(f"gRPC {e.code().name}: {e.details()}") from e
    out = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
    return [{"text": out["text"][i].decode("utf-8", errors="replace"),
             "token_ids": out["token_ids"][i].tolist(),
             "num_generated": int(out["num_generated"][i])} for i in range(n)]


def main(argv=None):
    # `python -m serving.client` from a checkout, `python -m tfllm_serving.client` installed.
    parser = argparse.ArgumentParser(prog=f"python -m {__package__ or 'serving'}.client",
                                     description=__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="REST endpoint, e.g. http://localhost:8501")
    where.add_argument("--grpc", help="gRPC endpoint, e.g. localhost:8500")
    parser.add_argument("--model", required=True, help="model name")
    parser.add_argument("--version", type=int, help="model version (default: latest)")
    parser.add_argument("--prompt", action="append", required=True, help="prompt (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=GENERATE_DEFAULTS["max_new_tokens"])
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--signature", default="generate",
                        help="a signature with generate's inputs: generate (default) or "
                             "generate_NAME of an export's --json-schema NAME=FILE")
    parser.add_argument("--json", action="store_true", help="print the raw outputs as JSON")
    args = parser.parse_args(argv)
    prompts = [p.replace("\\n", "\n") for p in args.prompt]
    params = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                  top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    try:
        if args.url:
            results = generate_rest(args.url, args.model, prompts, args.version,
                                    args.signature, **params)
        else:
            results = generate_grpc(args.grpc, args.model, prompts, args.version,
                                    args.signature, **params)
    except ServingError as e:
        print(f"serving.client: error: {e}", file=sys.stderr)
        return 1
    for prompt, result in zip(prompts, results):
        print(json.dumps(result) if args.json else prompt + result["text"])
    return 0


if __name__ == "__main__":
    from tfllm.logs import quiet_native

    quiet_native()  # the gRPC path loads TensorFlow: its native log lines go to a file
    sys.exit(main())
