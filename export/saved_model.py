"""Export a run as a SavedModel that TF Serving answers with text.

    python -m export.saved_model --run runs/NAME --out DIR [--name NAME] [--version N]
    tfllm export saved-model ...            (the same, installed)

writes DIR/NAME/N/ (TF Serving's layout). The run's task gives the signatures and their
check; this module writes them, verified in a fresh process before they are published:

    causal LMs (lm, chat)   serving_default/generate, score; chat and chat_with_system
                            where the run has a chat template; generate_NAME for each
                            --json-schema NAME=FILE, and chat_NAME and
                            chat_with_system_NAME for each --tools NAME=FILE
                            (tfllm/signatures/)
    classify                serving_default/classify (+ classify_pair for an imported
                            classifier) (tfllm/tasks/classify/saved_model.py)
    embed                   serving_default/embed (tfllm/tasks/embed/saved_model.py)
    translate               serving_default/translate (tfllm/tasks/translate/saved_model.py)

Tokenization, the cached decoding or beam-search loop and detokenization all run inside the
graph; each signature's inputs and outputs are in docs/serve.md and the modules above.
"""

from __future__ import annotations

import argparse
import os
import sys

from .archive import write_archive
from .options import DEFAULT_MAX_BATCH, add_max_len, error_prog, prog


def build_parser():
    parser = argparse.ArgumentParser(
        prog=prog("saved_model"),
        description="Export a tfllm run as a text-in/text-out SavedModel in TF Serving's "
                    "layout (OUT/NAME/VERSION/).")
    parser.add_argument("--verbose", action="store_true",
                        help="show the native libraries' log lines (TensorFlow, LiteRT)")
    parser.add_argument("--run", required=True, help="run directory")
    add_max_len(parser)
    parser.add_argument("--out", required=True, help="model base directory")
    parser.add_argument("--name", help="model name (default: the run directory's name)")
    parser.add_argument("--version", type=int, default=1, help="version number (default 1)")
    parser.add_argument("--no-jit", action="store_true",
                        help="do not XLA-compile the decoding loop (slower; for TF Serving "
                             "builds without XLA:CPU)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the fresh-process check against CausalLM.generate")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing version (once the new one is verified)")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                        help=f"most rows one request may carry (default {DEFAULT_MAX_BATCH})")
    parser.add_argument("--json-schema", action="append", default=[], type=named_file_option,
                        metavar="NAME=FILE",
                        help="add a generate_NAME signature whose every output is JSON valid "
                             "under the JSON schema in FILE (repeatable; causal LMs)")
    parser.add_argument("--tools", action="append", default=[], type=named_file_option,
                        metavar="NAME=FILE",
                        help="add chat_NAME and chat_with_system_NAME signatures that offer "
                             "the model the function specs in FILE (OpenAI's form) and "
                             "answer with a call (tool_name, tool_arguments) or text, as "
                             "each row's tool_choice says (repeatable; chat templates)")
    return parser


def named_file_option(value):
    """`NAME=FILE` of --json-schema and --tools as (name, file)."""
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME=FILE (e.g. "
                                         "person=person.schema.json)")
    return name, path


def read_named_files(option, pairs, read) -> dict:
    """{name: value} of an option's (name, file) pairs, each file read and checked by
    `read(path, what)` before the model loads; that raises for a file that cannot be
    read or used, ExportError for a name given twice."""
    values = {}
    for name, path in pairs:
        if name in values:
            raise ExportError(f"{option} {name}= is given twice; give each its own name")
        values[name] = read(path, f"{option} {name}={path}")
    return values


if __name__ == "__main__":  # --help and bad arguments answer before TensorFlow loads
    from tfllm.logs import parse_then_quiet

    parse_then_quiet(build_parser().parse_args)

import tensorflow as tf  # noqa: E402

from tfllm import runs, tasks  # noqa: E402
from tfllm.errors import run_main  # noqa: E402
from tfllm.publish import Output  # noqa: E402
from tfllm.signatures.checks import ExportError  # noqa: E402,F401  (its error type)
from tfllm.tokenizers import tokenizer_files  # noqa: E402


def export_saved_model(run_dir, out, name=None, version=1, jit_compile=True, verify=True,
                       overwrite=False, max_batch=DEFAULT_MAX_BATCH, max_len=None,
                       json_schemas=None, tools=None):
    """Write `out/name/version/` and return its path.

    The run's task gives the signatures and the fresh-process check
    (`Task.saved_model_signatures`); this writes them in TF Serving's layout.

    Args:
        run_dir: a run directory.
        out: the model base directory (TF Serving's --model_base_path parent).
        name: model name (default: the run directory's name).
        version: integer version directory.
        jit_compile: XLA-compile the decoding loop (TF Serving needs
            --xla_cpu_compilation_enabled=true to run it; see serving/README.md).
        verify: reload in a fresh process and compare with the Keras model.
        overwrite: replace an existing version directory (only once the new one is
            written and verified, in one step: a server never sees it missing).
        max_batch: most rows one request may carry.
        max_len: the context (KV cache) length of a causal LM; default the run's.
        json_schemas: {name: JSON schema (dict or text)}: a `generate_<name>` signature
            each, whose outputs are JSON valid under it (causal LMs).
        tools: {name: function specs}: `chat_<name>` and `chat_with_system_<name>`
            signatures each, which offer the model those tools (runs with a chat
            template; tfllm/signatures/chat.py).

    Example:
        >>> export_saved_model("runs/demo", "models", "demo", 1)  # doctest: +SKIP
        'models/demo/1'
    """
    return _export(run_dir, out, name, version, jit_compile, verify, overwrite, max_batch,
                   max_len, json_schemas, tools)[0]


def _export(run_dir, out, name, version, jit_compile, verify, overwrite, max_batch, max_len,
            json_schemas=None, tools=None):
    """`(path, what the fresh-process check verified or None)`."""
    import keras

    config = runs.read_run_config(run_dir)
    task = tasks.of_config(config)
    if not isinstance(version, int) or version < 1:
        raise ExportError(f"--version must be a positive integer, got {version!r}")
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ExportError(f"--max-batch must be a positive integer, got {max_batch!r}")
    name = name or os.path.basename(os.path.normpath(run_dir))
    if not name or name.startswith(".") or os.sep in name:
        raise ExportError(f"--name {name!r} is not a model name (a plain directory name)")
    target = os.path.join(out, name, str(version))
    for path in (out, os.path.join(out, name)):
        if os.path.lexists(path) and not os.path.isdir(path):
            raise ExportError(f"{path} is a file, not a directory; give --out a directory")
    output = Output(target, "saved-model", overwrite, runs.inputs_of(run_dir),
                    option="the version directory", command="export saved-model")
    output.check()

    model = runs.load(run_dir, max_len=max_len)
    signatures, check, *resources = task.saved_model_signatures(
        model, config, jit_compile, max_batch, json_schemas, tools)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(model.tokenizer.tf_tokenizer)
    for resource in (resources[0] if resources else ()):
        archive.track(resource)
    # The tokenizer files travel as assets too, for clients that tokenize themselves.
    files = tokenizer_files(config.get("tokenizer", runs.TOKENIZER))
    archive._tf_trackable.tokenizer_assets = [
        tf.saved_model.Asset(os.path.join(run_dir, f)) for f in files]
    # Written beside the target (TF Serving ignores non-numeric names), verified, made
    # readable to the server's user, then swapped in: a server polling the base path sees
    # the old version or the new one, never a half-written or missing one.
    with output.staging() as tmp:
        write_archive(archive, signatures, tmp)
        verified = check(tmp, run_dir) if verify else None
    return target, verified


def describe_signatures(path):
    """Lines describing each signature's inputs and outputs, as saved_model_cli lists them
    (read from saved_model.pb: loading the functions took 2-7 s)."""
    from tensorflow.core.protobuf import saved_model_pb2

    def tensor(name, info):
        shape = tf.TensorShape(info.tensor_shape)
        dims = shape.as_list() if shape.rank is not None else "<unknown rank>"
        return f"{name} {tf.dtypes.as_dtype(info.dtype).name}{dims}"

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    lines = []
    for name, sig in sorted(saved.meta_graphs[0].signature_def.items()):
        if name.startswith("__"):  # the init op's entry, not a signature
            continue
        ins = ", ".join(tensor(k, v) for k, v in sorted(sig.inputs.items()))
        outs = ", ".join(tensor(k, v) for k, v in sorted(sig.outputs.items()))
        lines.append(f"  {name}({ins}) -> {outs}")
    return lines


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_main(error_prog("saved_model"), _main, args)


def _main(args):
    from tfllm.models.token_automaton import read_schema_file
    from tfllm.models.tool_calls import read_tools_file

    path, verified = _export(args.run, args.out, args.name, args.version, not args.no_jit,
                             not args.no_verify, args.overwrite, args.max_batch, args.max_len,
                             read_named_files("--json-schema", args.json_schema,
                                              read_schema_file),
                             read_named_files("--tools", args.tools, read_tools_file))
    print(f"SavedModel written to {path}")
    if verified:
        print(f"verified: a fresh process gives the same {verified}")
    print("signatures:")
    print("\n".join(describe_signatures(path)))


if __name__ == "__main__":
    sys.exit(main())
