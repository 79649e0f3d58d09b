"""The signatures every causal LM run gets (the lm and chat tasks): `generate`
(`serving_default`) and `score`, over one in-graph decoding loop with the request checks
of `tfllm.signatures.checks`, and their fresh-process check against `CausalLM.generate`.

    serving_default, generate
        inputs  prompt (string [batch]), max_new_tokens (int32 [batch]),
                temperature (float32 [batch]; 0 = greedy), top_k (int32 [batch]; 0 = off),
                top_p (float32 [batch]; 1 = off), seed (int32 [batch])
        outputs text (string [batch]), token_ids (int32 [batch, max_new]),
                num_generated (int32 [batch])
    generate_<name>   (one per JSON schema given at export: `--json-schema NAME=FILE`)
        generate's inputs and outputs; every text is JSON valid under the schema, complete
        within max_new_tokens (a request whose max_new_tokens is below the schema's
        shortest answer fails with InvalidArgument). The schema's token automaton is
        stored in the SavedModel and followed inside the decoding loop.
    score
        inputs  text (string [batch])
        outputs log_likelihood (float32 [batch]): sum of log p(token | previous tokens)
                over every token after the first; num_tokens (int32 [batch]): how many.
"""

from __future__ import annotations

import re
import sys

import numpy as np
import tensorflow as tf

from tfllm.models.generation import constraint_of, fits, new_token_room
from tfllm.signatures.checks import (DEFAULT_MAX_BATCH, after, batch_checks,
                                     prompt_bucket, require, schema_budget, text_checks,
                                     verify_outputs)
from tfllm.tokenizers import max_text_bytes

SAMPLE_PROMPTS = ["", "The ", "ROMEO:\n"]


class CausalDecoder:
    """The in-graph decoding of a causal LM endpoint: checks of a request's inputs, then
    the cached decoding loop from token ids (the `generate` and `chat` signatures share it).

    Every input is checked in the graph before anything that scales with it is allocated;
    an out-of-range value fails the request with InvalidArgument naming the input and its
    limit (see README, "Limits and errors").
    """

    def __init__(self, model, tokenizer, jit_compile=True, max_batch=DEFAULT_MAX_BATCH):
        from tfllm.models.generation import Generator

        self.tokenizer, self.max_batch = tokenizer, max_batch
        self.eos_ids = getattr(tokenizer, "eos_ids", [tokenizer.eos_id])
        self.gen = Generator(model, end_token_id=self.eos_ids, jit_compile=jit_compile)
        self.max_len = self.gen.max_len
        self.text_bytes = max_text_bytes(tokenizer, self.max_len)

    def checks(self, texts: dict, max_new_tokens, temperature, top_k, top_p, seed):
        """In-graph checks of the string inputs `texts` (name -> tensor, bounded by
        `text_bytes`) and the sampling inputs, to pass before tokenizing (`after`)."""
        max_len = self.max_len
        first, *others = list(texts.items())
        checks = batch_checks(self.max_batch, first[1], *others,
                               ("max_new_tokens", max_new_tokens),
                               ("temperature", temperature), ("top_k", top_k),
                               ("top_p", top_p), ("seed", seed))
        checks += text_checks(self.text_bytes, **texts)
        return checks + [
            require(tf.reduce_all(tf.logical_and(max_new_tokens >= 1,
                                                  fits(1, max_new_tokens, max_len))),
                     f"max_new_tokens must be from 1 to {max_len - 1} (the model context of "
                     f"{max_len} tokens less the prompt)"),
            require(tf.reduce_all(tf.logical_and(tf.math.is_finite(temperature),
                                                  temperature >= 0.0)),
                     "temperature must be a finite number >= 0 (0 = greedy)"),
            require(tf.reduce_all(top_k >= 0), "top_k must be >= 0 (0 = off)"),
            require(tf.reduce_all(tf.logical_and(top_p > 0.0, top_p <= 1.0)),
                     "top_p must be > 0 and <= 1 (1 = off)"),
        ]

    @staticmethod
    def after(checks, *tensors):
        """`tensors`, usable once every check has passed (see `after`)."""
        return after(checks, *tensors)

    def decode(self, ids, max_new_tokens, temperature, top_k, top_p, seed, constraint=None,
               choice=None):
        """Generate after the prompts' ragged token ids (batch, None); the outputs of the
        `generate` signature. `constraint`: a `StoredConstraint` every row's output
        matches (a request whose max_new_tokens cannot hold its shortest answer fails);
        `choice`: each row's part of it (`StoredConstraint.select`)."""
        tokenizer, max_len, eos_ids = self.tokenizer, self.max_len, self.eos_ids
        if constraint is not None:
            if choice is None:
                need = f"at least {constraint.shortest}: the shortest answer of the " \
                    f"{constraint.label} takes that many tokens"
            else:
                need = "at least the shortest answer of the tool_choice (" + ", ".join(
                    f"{c}: {n}" for c, n in zip(constraint.choices, constraint.shortests)) + \
                    f" tokens with the {constraint.label})"
            max_new_tokens = after([require(
                tf.reduce_all(max_new_tokens >= constraint.shortest_of(choice)),
                f"max_new_tokens must be {need}")], max_new_tokens)
        batch = ids.nrows(out_type=tf.int32)
        # An empty prompt starts from BOS, as CausalLM.generate does.
        empty = tf.cast(tf.equal(ids.row_lengths(), 0), tf.int64)
        ids = tf.concat([tf.RaggedTensor.from_row_lengths(
            tf.fill([tf.reduce_sum(empty)], tokenizer.bos_id), empty), ids], axis=1)
        lengths = tf.cast(ids.row_lengths(), tf.int32)
        longest = tf.reduce_max(lengths)
        room = tf.reduce_max(max_new_tokens)
        fitting = require(fits(longest, room, max_len),
                          f"prompt tokens + max_new_tokens exceed the model context of "
                          f"{max_len} tokens")
        longest, room = after([fitting], longest, room)
        bucket = prompt_bucket(longest, room, max_len)
        # Left-pad into (batch, bucket): row b's tokens end in the last column.
        right = ids.to_tensor(0, shape=tf.stack([batch, bucket]))
        src = tf.range(bucket)[None, :] - (bucket - lengths)[:, None]
        padded = tf.where(src >= 0, tf.gather(right, tf.maximum(src, 0), batch_dims=1), 0)
        out, n_gen = self.gen.graph_generate(
            padded, lengths, max_new_tokens, temperature, top_k, top_p, seed,
            None if constraint is None else constraint.tensors(choice))
        width = room
        new_ids = out[:, :width]
        keep = tf.sequence_mask(n_gen, width)
        # Drop the end token itself from the text (CausalLM.generate does the same).
        is_end = tf.logical_and(keep, tf.reduce_any(
            tf.equal(new_ids[:, :, None], tf.constant(eos_ids, tf.int32)), axis=2))
        text_len = n_gen - tf.cast(tf.reduce_any(is_end, axis=1), tf.int32)
        # detokenize: the tracked layer itself (tf-text SentencePiece ops ship with TF
        # Serving).
        text = tokenizer.tf_tokenizer.detokenize(
            tf.RaggedTensor.from_tensor(new_ids, lengths=text_len))
        token_ids = tf.where(keep, new_ids, tokenizer.pad_id)
        return {"text": text, "token_ids": token_ids, "num_generated": n_gen,
                "num_prompt_tokens": lengths, "finished": tf.reduce_any(is_end, axis=1)}


class StoredConstraint(tf.Module):
    """A `TokenAutomaton` kept in the SavedModel as variables, which the decoding loop
    reads: graph constants would be copied into the graph of every signature that uses
    them, and a graph is bounded by protobuf's 2 GB.

    Args:
        automaton: the compiled `TokenAutomaton`.
        label: what it is, for request errors ("JSON schema 'person'").
        choices: names of the parts of a `TokenAutomaton.union` whose `initial` holds one
            start per name; a request picks a part per row (`select`), e.g. the tool
            choices "auto", "required" and "none" of one set of tools.
    """

    def __init__(self, automaton, label: str, choices=None):
        super().__init__()
        self.label = label
        self.choices = list(choices or [])
        starts = np.atleast_1d(np.asarray(automaton.initial, np.int32))
        if self.choices and len(starts) != len(self.choices):
            raise ValueError("one start state per choice")
        # The fewest tokens (the end token included) of each choice's shortest answer.
        self.shortests = [int(automaton.distance[s]) for s in starts]
        self.shortest = max(self.shortests)
        self.starts = [int(s) for s in starts]
        self.end_ids = [int(i) for i in automaton.end_ids]
        self.arrays = {k: tf.Variable(getattr(automaton, k), trainable=False, name=k)
                       for k in ("allowed", "keys", "targets", "final", "distance",
                                 "closer")}

    def select(self, choice):
        """`(check, rows)` in the graph: each row's choice (strings (batch,), one of
        `choices`) as part indices (batch,), and the check that every one is a choice."""
        names = tf.constant(self.choices)
        hits = tf.equal(choice[:, None], names[None, :])  # (batch, choices)
        check = require(tf.reduce_all(tf.reduce_any(hits, axis=1)),
                        f"tool_choice must be one of {', '.join(self.choices)}")
        return check, tf.argmax(tf.cast(hits, tf.int32), axis=1, output_type=tf.int32)

    def shortest_of(self, rows=None):
        """The shortest answer's tokens: one number, or per row of `rows` (`select`)."""
        if rows is None:
            return tf.constant(self.shortest, tf.int32)
        return tf.gather(tf.constant(self.shortests, tf.int32), rows)

    def tensors(self, rows=None) -> dict:
        """The tensors `Generator.graph_generate` follows (`constraint_tensors`' form);
        with `rows` (`select`), each row starts in its choice's part."""
        initial = tf.constant(self.starts[0], tf.int32) if rows is None else \
            tf.gather(tf.constant(self.starts, tf.int32), rows)
        return {**{k: v.read_value() for k, v in self.arrays.items()},
                "initial": initial, "end_ids": tf.constant(self.end_ids, tf.int32)}


def causal_lm_signatures(model, tokenizer, jit_compile=True, max_batch=DEFAULT_MAX_BATCH,
                         decoder=None, constraints=None):
    """Endpoint functions of a causal LM: {name: (fn, input_signature)} (`decoder`: a
    `CausalDecoder` to share with the chat signatures; `constraints`: {name:
    `StoredConstraint`}, each adding a `generate_<name>` signature whose every output
    matches it)."""
    decoder = decoder or CausalDecoder(model, tokenizer, jit_compile, max_batch)
    max_len, text_bytes = decoder.max_len, decoder.text_bytes

    def generate_with(constraint):
        def generate(prompt, max_new_tokens, temperature, top_k, top_p, seed):
            checks = decoder.checks({"prompt": prompt}, max_new_tokens, temperature, top_k,
                                    top_p, seed)
            prompt, max_new_tokens = after(checks, prompt, max_new_tokens)
            # The in-graph tokenizer (+ BOS where the checkpoint adds one).
            return decoder.decode(tokenizer.tokenize(prompt), max_new_tokens, temperature,
                                  top_k, top_p, seed, constraint)
        return generate

    generate = generate_with(None)

    def score(text):
        text = after(batch_checks(max_batch, text) + text_checks(text_bytes, text=text),
                      text)
        ids = tokenizer.tokenize(text)
        lengths = tf.cast(ids.row_lengths(), tf.int32)
        longest = tf.reduce_max(lengths)
        fits = require(longest <= max_len,
                        f"text longer than the model context of {max_len} tokens")
        longest = after([fits], longest)
        # At least one column, so that a batch of empty texts still runs (and scores 0).
        dense = ids.to_tensor(tokenizer.pad_id,
                              shape=tf.stack([tf.shape(text)[0], tf.maximum(longest, 1)]))
        mask = tf.sequence_mask(lengths, tf.shape(dense)[1])
        logits = model({"token_ids": dense, "padding_mask": mask})
        logp = tf.nn.log_softmax(logits[:, :-1], axis=-1)
        target_logp = tf.gather(logp, dense[:, 1:], axis=-1, batch_dims=2)
        scored = mask[:, 1:]
        ll = tf.reduce_sum(tf.where(scored, target_logp, 0.0), axis=1)
        return {"log_likelihood": ll,
                "num_tokens": tf.reduce_sum(tf.cast(scored, tf.int32), axis=1)}

    batch = [None]
    gen_sig = [tf.TensorSpec(batch, tf.string, name="prompt"),
               tf.TensorSpec(batch, tf.int32, name="max_new_tokens"),
               tf.TensorSpec(batch, tf.float32, name="temperature"),
               tf.TensorSpec(batch, tf.int32, name="top_k"),
               tf.TensorSpec(batch, tf.float32, name="top_p"),
               tf.TensorSpec(batch, tf.int32, name="seed")]
    sigs = {"serving_default": (generate, gen_sig), "generate": (generate, gen_sig),
            "score": (score, [tf.TensorSpec(batch, tf.string, name="text")])}
    for name, constraint in (constraints or {}).items():
        sigs[f"generate_{name}"] = (generate_with(constraint), gen_sig)
    return sigs


def verify_saved_model(run_dir, path, prompts=SAMPLE_PROMPTS, max_new_tokens=16, model=None,
                       json_schemas=None, chat=None, tool_sets=None):
    """Greedy text from a fresh-process reload must equal CausalLM.generate; that of each
    `generate_<name>` signature `generate(..., json_schema=)` with its schema; and with a
    `chat` entry, the chat signatures' replies `tfllm chat`'s (`chat_checks`). Returns the
    `generate` texts.

    `model`: the run's already-loaded CausalLM (loaded here if None); `json_schemas`:
    {name: JSON schema} the SavedModel was exported with; `tool_sets`: its tools
    (`stored_tool_sets`).
    """
    from tfllm.signatures.chat import chat_checks

    if model is None:
        from tfllm import runs

        model = runs.load(run_dir)
    room = new_token_room(model.backbone.max_len,
                          max(len(model.tokenizer.encode(p)) for p in prompts))
    n = len(prompts)
    greedy = {"prompt": list(prompts), "temperature": [0.0] * n, "top_k": [0] * n,
              "top_p": [1.0] * n, "seed": [0] * n}
    checks = []
    for name, schema in [(None, None), *(json_schemas or {}).items()]:
        new = min(max_new_tokens, room) if schema is None else \
            schema_budget(model, name, schema, room, max_new_tokens)
        checks.append(("serving_default" if name is None else f"generate_{name}",
                       {**greedy, "max_new_tokens": [new] * n},
                       model.generate(list(prompts), max_new_tokens=new, json_schema=schema),
                       "CausalLM.generate"))
    if chat is not None:
        checks += chat_checks(model, chat, json_schemas=json_schemas, tool_sets=tool_sets)
    return verify_outputs(path, checks)[0].tolist()


SIGNATURE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


def stored_constraints(model, json_schemas: dict) -> dict:
    """{name: StoredConstraint} of {name: JSON schema (a dict or JSON text)}, compiled over
    the model's tokenizer; ConstraintError names the schema and what is wrong with it."""
    from tfllm.models.token_automaton import ConstraintError

    stored = {}
    for name, schema in json_schemas.items():
        if not isinstance(name, str) or not SIGNATURE_NAME.fullmatch(name):
            raise ConstraintError(f"JSON schema name {name!r} cannot name a signature: give "
                                  "letters, digits and _, starting with a letter")
        try:
            automaton = constraint_of(model, json_schema=schema)
        except ConstraintError as e:
            raise ConstraintError(f"JSON schema {name!r}: {e}") from None
        shortest, max_len = automaton.shortest_completion(), int(model.backbone.max_len)
        if not fits(1, shortest, max_len):
            raise ConstraintError(f"JSON schema {name!r}: its shortest answer takes {shortest} "
                                  f"tokens, more than the model's context of {max_len} holds "
                                  "after a prompt")
        stored[name] = StoredConstraint(automaton, f"JSON schema {name!r}")
    return stored


def stored_tool_sets(model, chat, tools: dict) -> dict:
    """{name: (tools, call format, StoredConstraint)} of {name: function specs}: each
    set's call constraint with one part per tool choice (`TOOL_CHOICES`), compiled over
    the model's tokenizer; ToolError names the set and what is wrong with it."""
    from tfllm.models import tool_calls
    from tfllm.models.token_automaton import ConstraintError
    from tfllm.signatures.chat import GRAPH_CALL_FORMATS

    sets = {}
    for name, specs in tools.items():
        if not isinstance(name, str) or not SIGNATURE_NAME.fullmatch(name):
            raise tool_calls.ToolError(f"tools name {name!r} cannot name a signature: give "
                                       "letters, digits and _, starting with a letter")
        if chat is None:
            raise tool_calls.ToolError(f"--tools {name}= needs a chat template: this run has "
                                       "none the SavedModel can apply")
        fmt = tool_calls.call_format(chat["template"])
        if fmt not in GRAPH_CALL_FORMATS:
            raise tool_calls.ToolError(
                f"tools {name!r}: the template's {fmt} call format is not JSON, and the "
                "signatures' tool_arguments are JSON text the graph writes from a JSON call "
                "(formats: " + ", ".join(GRAPH_CALL_FORMATS) + "); tfllm chat --tools and "
                "tfllm serve --run constrain and parse it")
        try:
            specs = tool_calls.check_tools(specs)
            automaton = constraint_of(model, regex=[
                tool_calls.choice_regex(specs, fmt, c) for c in tool_calls.TOOL_CHOICES])
        except (tool_calls.ToolError, ConstraintError) as e:
            raise tool_calls.ToolError(f"tools {name!r}: {e}") from None
        stored = StoredConstraint(automaton, f"tools {name!r}", tool_calls.TOOL_CHOICES)
        max_len = int(model.backbone.max_len)
        if not fits(1, stored.shortest, max_len):
            raise tool_calls.ToolError(f"tools {name!r}: the shortest call takes "
                                       f"{stored.shortest} tokens, more than the model's "
                                       f"context of {max_len} holds after a prompt")
        sets[name] = (specs, fmt, stored)
    return sets


def signatures(model, config, jit_compile=True, max_batch=DEFAULT_MAX_BATCH, json_schemas=None,
               tools=None):
    """`(signatures, check, resources)` of a causal LM run (the lm and chat tasks'
    SavedModel hook): `generate` and `score`, and where the run (`config`: its config.json)
    has a usable chat template, `chat` and `chat_with_system`; `generate_<name>` (and
    `chat_<name>`, `chat_with_system_<name>`) for each of `json_schemas` ({name: JSON
    schema}), and `chat_<name>`, `chat_with_system_<name>` offering each of `tools`
    ({name: function specs}; `chat_signatures`), whose automata are among the
    `resources` to save.
    `check(path, run_dir)` verifies a written SavedModel in a fresh process against
    `CausalLM.generate` and `tfllm chat`."""
    from tfllm.signatures.chat import chat_signatures
    from tfllm.tokenizers.chat_template import ChatTemplateError, usable_chat_config

    from tfllm.models.tool_calls import ToolError

    json_schemas, tools = dict(json_schemas or {}), dict(tools or {})
    both = sorted(set(json_schemas) & set(tools))
    if both:
        raise ToolError(f"{both[0]!r} names a JSON schema and tools; give each its own name")
    constraints = stored_constraints(model, json_schemas)
    decoder = CausalDecoder(model, model.tokenizer, jit_compile, max_batch)
    sigs = causal_lm_signatures(model, model.tokenizer, jit_compile, max_batch, decoder,
                                constraints)
    try:
        chat = usable_chat_config(config, model.tokenizer)
        tool_sets = stored_tool_sets(model, chat, tools)
        if chat is not None:
            sigs.update(chat_signatures(decoder, chat, constraints, tool_sets))
    except ChatTemplateError as e:
        if tools:  # asked for: the tools signatures cannot be made
            raise ToolError(f"--tools needs chat signatures, and {e}") from None
        # A template the graph cannot apply: noted, not fatal.
        print(f"note: no chat signatures: {e}", file=sys.stderr)
        chat, tool_sets = None, {}

    def check(path, run_dir):
        verify_saved_model(run_dir, path, model=model, json_schemas=json_schemas, chat=chat,
                           tool_sets=tool_sets)
        what = "greedy text as CausalLM.generate"
        if chat is not None:
            what += " and chat replies as tfllm chat"
            if "conversation" in sigs:
                what += " (whole conversations too)"
        if tool_sets:
            what += " (tools' calls too)"
        return what + (" (with each JSON schema too)" if json_schemas else "")

    return sigs, check, list(constraints.values()) + [s for _, _, s in tool_sets.values()]
