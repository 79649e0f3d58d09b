"""Export a run to ONNX, checked with onnxruntime: the forward pass and a cached decode step.

    python -m export.onnx --run runs/NAME --out FILE.onnx [--opset 17] [--no-decode]

FILE.onnx is the forward pass: input `token_ids` int32 [batch, seq] (dynamic), output
`logits` float32 [batch, seq, vocab]. A classifier run (`tfllm finetune`) gives class
`logits` [batch, classes] for ids encoded as `tfllm classify` does (BOS first for encoders,
right-padded with the pad id, which the model masks out); softmax gives the probabilities.
BERT classifiers of sentence pairs (and imported ones) take `token_type_ids` int32
[batch, seq] as a second input (0 for `[CLS] text [SEP]` and padding, 1 for `pair [SEP]`).

For a causal LM, FILE.decode.onnx is one step with the KV cache, usable for prefill
(seq = prompt length) and decoding (seq = 1) alike:

    inputs  token_ids int32 [batch, seq], cache_index int32 [] (slot of the first token),
            kv_cache_k_<i>, kv_cache_v_<i> float32 [batch, kv_heads, max_len, head_dim]
                (a sliding-window layer's: its window, a ring)
    outputs logits float32 [batch, seq, vocab],
            new_kv_cache_k_<i>, new_kv_cache_v_<i> (the caches with this step written)

Rows of a batch share positions (no per-row padding). The cache write is traced as a
one-hot blend, not XLA's dynamic-update-slice, which tf2onnx cannot convert.
`OnnxDecoder` drives that file like an app would (greedy generation).

A translation run (`--objective seq2seq`) gets an encoder file and a decode-step file
instead (export/onnx_seq2seq.py).

The exporter runs both files in onnxruntime and refuses to write them if logits differ
from Keras by more than 1e-4 or greedy decoding differs from `CausalLM.generate`.
"""

from __future__ import annotations

import argparse
import os
import sys

from .options import add_max_len, add_overwrite, error_prog, prog


def build_parser():
    parser = argparse.ArgumentParser(prog=prog("onnx"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", action="store_true",
                        help="show the native libraries' log lines (TensorFlow, LiteRT)")
    parser.add_argument("--run", required=True, help="run directory")
    add_max_len(parser)
    parser.add_argument("--out", required=True, help="output .onnx file")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--no-decode", action="store_true",
                        help="write only the forward pass, not FILE.decode.onnx")
    add_overwrite(parser)
    return parser


if __name__ == "__main__":  # --help and bad arguments answer before TensorFlow loads
    from tfllm.logs import parse_then_quiet

    parse_then_quiet(build_parser().parse_args)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfllm import runs, tasks  # noqa: E402
from tfllm.errors import run_main  # noqa: E402
from tfllm.models.generation import new_token_room, prompt_room  # noqa: E402

from .onnx_convert import (TOLERANCE, OnnxExportError, convert,  # noqa: E402,F401
                                 decode_path, session)

SAMPLE = "ROMEO:\nWhat say you to this?"


def _cache_names(num_layers, prefix=""):
    return [f"{prefix}kv_cache_{kv}_{i}" for i in range(num_layers) for kv in ("k", "v")]


def export_onnx(run_dir, out, opset=17, sample=SAMPLE, decode=True, max_len=None,
                overwrite=False):
    """Convert, verify with onnxruntime, publish; returns a report.

    Args:
        run_dir: a run directory (causal LM or classifier).
        out: the forward-pass .onnx file.
        opset: ONNX opset.
        sample: text whose tokens the check runs.
        decode: also write the cached decode step (causal LMs) to `decode_path(out)`.
        max_len: the context (KV cache) length; default the run's.
        overwrite: replace files this exporter wrote before (both, with `decode`).
    """
    config = runs.read_run_config(run_dir)
    family = tasks.of_config(config).family
    if family == "encoder-decoder":
        raise OnnxExportError("an encoder-decoder run exports as an encoder and a decode step "
                              "(export.onnx_seq2seq.export_seq2seq_onnx)")
    classifier = family == "classifier"
    decode = decode and family == "decoder"
    # With the decode step: both files are checked before the work, and published together.
    output = runs.export_output(out, "onnx", overwrite, run_dir, command="export onnx",
                                companions=[decode_path(out)] if decode else ())
    model = runs.load(run_dir, max_len=max_len)
    token_types = False
    if classifier:
        from tfllm.tasks.classify.predict import uses_token_types

        token_types = uses_token_types(model, config["task"])
    ids_spec = tf.TensorSpec([None, None], tf.int32, name="token_ids")

    if token_types:  # BERT-style sentence pairs: segment ids as a second input
        @tf.function(input_signature=[ids_spec, tf.TensorSpec([None, None], tf.int32,
                                                               name="token_type_ids")])
        def forward(token_ids, token_type_ids):
            return {"logits": model({"token_ids": token_ids,
                                     "token_type_ids": token_type_ids})}
    else:
        @tf.function(input_signature=[ids_spec])
        def forward(token_ids):
            return {"logits": model(token_ids)}

    with output.staging() as tmp:
        report = _write_checked(model, forward, tmp, opset, sample, config, classifier,
                                token_types)
        if decode:
            report["decode"] = export_decode_step(model, output.staged(decode_path(out)),
                                                  opset, report.pop("ids"))
            report["decode"]["path"] = decode_path(out)
        report["bytes"] = os.path.getsize(tmp)
    report.pop("ids", None)
    return {**report, "path": out}


def _write_checked(model, forward, path, opset, sample, config, classifier, token_types):
    """Convert `forward` to `path` and compare onnxruntime's logits with Keras'."""
    convert(forward, path, opset)
    ids = model.tokenizer.encode(sample)[: model.backbone.max_len] or [model.tokenizer.bos_id]
    if classifier:
        from tfllm.tasks.classify.predict import encode_rows

        # Rows as the classifier sees them: BOS first (encoders), right-padded with pad_id;
        # pairs where the classifier reads them.
        task = config["task"]
        rows = [(sample, "x"), ("x", sample)] if token_types else [sample, "x"]
        feed = encode_rows(model.tokenizer, task, rows, token_types)
        batch = feed["token_ids"]
    else:
        batch = np.array([ids, ids[::-1]], np.int32)
        feed = {"token_ids": batch}
    try:
        got = session(path).run(None, feed)[0]
    except Exception as e:  # an op tf2onnx could not map loads as an unknown custom op
        raise OnnxExportError(f"onnxruntime cannot run the converted model: "
                              f"{str(e).splitlines()[0][:500]}") from e
    expected = model(feed).numpy() if token_types else model(batch).numpy()
    diff = float(np.abs(got - expected).max())
    if not np.isfinite(got).all() or diff > TOLERANCE:
        raise OnnxExportError(f"onnxruntime logits differ from Keras by {diff} "
                              f"(tolerance {TOLERANCE})")
    agree = float(np.mean(got.argmax(-1) == expected.argmax(-1)))
    return {"max_logit_diff": diff, "next_token_agreement": agree, "classifier": classifier,
            "ids": ids}


def decode_function(model):
    """The cached step of a causal LM as a tf.function with ONNX-friendly ops."""
    from tfllm.layers import export_hooks

    bb = model.backbone
    names = _cache_names(bb.num_layers)
    spec = [tf.TensorSpec([None, None], tf.int32, name="token_ids"),
            tf.TensorSpec([], tf.int32, name="cache_index")]
    # A sliding-window layer's cache is a ring of window slots (backbone.cache_lengths).
    lengths = [n for n in bb.cache_lengths() for _ in "kv"]
    spec += [tf.TensorSpec([None, bb.kv_heads, n, bb.head_dim], tf.float32, name=name)
             for name, n in zip(names, lengths)]

    @tf.function(input_signature=spec)
    def step(token_ids, cache_index, *flat):
        caches = [(flat[2 * i], flat[2 * i + 1]) for i in range(bb.num_layers)]
        with export_hooks.tracing(cache_write="one_hot"):
            logits, caches = model.call_with_cache(token_ids, caches, cache_index)
        out = {"logits": logits}
        for i, (k, v) in enumerate(caches):
            out[f"new_kv_cache_k_{i}"], out[f"new_kv_cache_v_{i}"] = k, v
        return out

    return step


class OnnxDecoder:
    """Generation over a `.decode.onnx` file with onnxruntime, as an app runs it.

    Args:
        path: the decode-step file.

    Example:
        >>> OnnxDecoder("models/demo.decode.onnx").generate([5, 6, 7], 20)  # doctest: +SKIP
    """

    def __init__(self, path):
        self.session = session(path)
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.cache_names = [n for n in inputs if n.startswith("kv_cache_")]
        # A sliding-window layer's cache is a ring of window slots: shapes differ.
        self.cache_shapes = {n: list(inputs[n].shape) for n in self.cache_names}
        self.max_len = max(int(shape[2]) for shape in self.cache_shapes.values())
        self.outputs = ["logits"] + ["new_" + n for n in self.cache_names]

    def empty_cache(self, batch=1):
        return {n: np.zeros([batch] + [int(d) for d in shape[1:]], np.float32)
                for n, shape in self.cache_shapes.items()}

    def step(self, token_ids, cache_index, cache):
        """Logits (batch, seq, vocab) for `token_ids` written at `cache_index`, new cache."""
        out = self.session.run(self.outputs, {
            "token_ids": np.asarray(token_ids, np.int32),
            "cache_index": np.array(cache_index, np.int32), **cache})
        return out[0], dict(zip(self.cache_names, out[1:]))

    def generate(self, prompt_ids, max_new_tokens, end_token_id=None, temperature=0.0,
                 top_k=None, top_p=None, seed=None):
        """Continue `prompt_ids`; returns the new token ids (without the prompt).

        Greedy by default. With `temperature` > 0 each token is drawn by tfllm's own sampler
        (`tfllm.models.generation.row_sampler`), so a seeded run draws the tokens
        `CausalLM.generate(..., seed=seed)` draws from the same logits.

        Args:
            prompt_ids: the prompt's token ids (at least one; start from BOS for none).
            max_new_tokens: how many tokens to generate at most.
            end_token_id: stop (without returning it) when this token is chosen.
            temperature, top_k, top_p, seed: as in `CausalLM.generate`.
        """
        from tfllm.models.generation import (GenerationError, GenerationParams, check_fits,
                                             row_sampler)

        if not prompt_ids:
            raise OnnxExportError("empty prompt: start from BOS")
        try:
            check_fits(len(prompt_ids), max_new_tokens, self.max_len)
            sample = row_sampler(GenerationParams(max_new_tokens, temperature, top_k, top_p,
                                                  seed))
        except GenerationError as e:
            raise OnnxExportError(str(e)) from e
        logits, cache = self.step([list(prompt_ids)], 0, self.empty_cache())
        pos, out = len(prompt_ids), []
        for step in range(max_new_tokens):
            token = sample(logits[0, -1], step)
            if token == end_token_id:
                break
            out.append(token)
            if len(out) == max_new_tokens:
                break
            logits, cache = self.step([[token]], pos, cache)
            pos += 1
        return out


def export_decode_step(model, out, opset=17, ids=None, new_tokens=16):
    """Write the decode step of a causal LM to the path `out` and verify it; returns a
    report (the caller publishes `out`).

    Checked in onnxruntime: a prefill of `ids` and then token-by-token steps give the
    Keras full-forward logits (within 1e-4), and greedy generation equals
    `CausalLM.generate`.
    """
    tok = model.tokenizer
    ids = list(ids or tok.encode(SAMPLE) or [tok.bos_id])
    ids = ids[:prompt_room(model.backbone.max_len, 1)]
    convert(decode_function(model), out, opset)
    runner = OnnxDecoder(out)
    full = model(np.array([ids], np.int32))[0].numpy()
    half = max(1, len(ids) // 2)
    logits, cache = runner.step([ids[:half]], 0, runner.empty_cache())
    steps = [logits[0]]
    for t in range(half, len(ids)):
        logits, cache = runner.step([[ids[t]]], t, cache)
        steps.append(logits[0])
    got = np.concatenate(steps)
    diff = float(np.abs(got - full).max()) if np.isfinite(got).all() else float("inf")
    if diff > TOLERANCE:
        raise OnnxExportError(f"the ONNX decode step's logits differ from Keras by {diff} "
                              f"(tolerance {TOLERANCE})")
    prompt = ids[:half]
    n = min(new_tokens, new_token_room(runner.max_len, len(prompt)))
    expected = model.generate([prompt], max_new_tokens=n, return_ids=True)[1][0]
    generated = runner.generate(prompt, n, end_token_id=tok.eos_id)
    if generated != expected:
        raise OnnxExportError(f"ONNX greedy tokens differ from CausalLM.generate: "
                              f"{generated} != {expected}")
    return {"path": out, "bytes": os.path.getsize(out), "max_logit_diff": diff,
            "greedy_tokens_equal": len(expected)}


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_main(error_prog("onnx"), _main, args)


def _main(args):
    if tasks.of_run(args.run).family == "encoder-decoder":
        from .onnx_seq2seq import export_seq2seq_onnx

        report = export_seq2seq_onnx(args.run, args.out, args.opset, args.overwrite)
        print(f"ONNX encoder written to {report['path']} ({report['bytes'] / 1e6:.2f} MB), "
              f"decode step to {report['decode_path']} ({report['decode_bytes'] / 1e6:.2f} MB)")
        print(f"onnxruntime greedy translations equal Seq2SeqLM.generate on "
              f"{report['sources_agreeing']} sample sources")
        return 0
    report = export_onnx(args.run, args.out, args.opset, decode=not args.no_decode,
                         max_len=args.max_len, overwrite=args.overwrite)
    print(f"ONNX model written to {report['path']} ({report['bytes'] / 1e6:.2f} MB)")
    what = "label agreement" if report["classifier"] else "next-token agreement"
    print(f"onnxruntime vs Keras: largest logit difference {report['max_logit_diff']:.2e}, "
          f"{what} {report['next_token_agreement']:.0%}")
    if "decode" in report:
        d = report["decode"]
        print(f"decode step written to {d['path']} ({d['bytes'] / 1e6:.2f} MB): prefill + "
              f"cached steps within {d['max_logit_diff']:.2e} of Keras, greedy decoding "
              f"equals CausalLM.generate ({d['greedy_tokens_equal']} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
