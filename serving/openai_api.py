"""The OpenAI API over a run, in process: what `tfllm serve --run R` answers.

Every OpenAI client library speaks `/v1/chat/completions`, `/v1/completions`,
`/v1/embeddings` and `/v1/models`; this module answers them for one run loaded with
`tfllm.load`, through the same code as the command line (`ChatSession` renders the
conversation with the run's template, the cached decoding loop generates), so a greedy
chat completion is `tfllm chat`'s reply and a completion is `tfllm generate`'s text.
Streams are built from the decoding loop's chunks as it produces them; a character's
bytes are never split across two chunks. Unconstrained replies are decoded in one
continuously batched loop that later requests join (`_Batcher`, `DecodeBatch`).

The HTTP side (routing, SSE framing) is the dev server's; this module takes parsed JSON
bodies and returns JSON objects, or iterators of them for streams.

Example:
    >>> api = OpenAIService("runs/smollm2")  # doctest: +SKIP
    >>> api.chat_completions({"model": "smollm2", "messages": [
    ...     {"role": "user", "content": "Hi"}]})["choices"][0]["message"]  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import os
import threading
import time
import uuid

import numpy as np

from tfllm.errors import TfllmError

from .openai_requests import (ApiError, check_model, read_conversation, read_prompts,
                              read_response_format, read_sampling, read_texts, usage)

class OpenAIService:
    """The OpenAI endpoints for one run.

    Args:
        run_dir: a causal LM run (chat and text completions) or an encoder run
            (embeddings).
        name: the model id clients name (default: the run directory's name).
        template: Jinja text of a chat template, for a causal run without its own.
        max_waiting: requests that may wait beyond `max_batch` (at most max_batch +
            max_waiting are running or waiting at once); more are answered 503 at once.
        max_batch: unconstrained replies decoded together in one loop; a request that
            arrives while it decodes joins it between two chunks of steps (a constrained
            reply, under a JSON schema or tools, has the model to itself).
        prefill_cache: prompts whose prefill (KV caches) is kept: the same prompt again
            starts decoding at once, one that begins like it computes only its new
            tokens (0: none).
    """

    def __init__(self, run_dir: str, name: str | None = None, template: str | None = None,
                 max_waiting: int = 16, max_batch: int = 8, prefill_cache: int = 16):
        import tfllm
        from tfllm import runs, tasks

        self.name = name or os.path.basename(os.path.normpath(run_dir))
        self.created = int(os.path.getmtime(os.path.join(run_dir, runs.CONFIG)))
        stored = runs.read_run_config(run_dir)
        task = tasks.of_config(stored)
        self.model = tfllm.load(run_dir)
        self.tokenizer = self.model.tokenizer
        self.causal = task.causal
        self.chat = self.encoder = None
        self.no_chat = ""
        self._model_lock = threading.Lock()
        if self.causal:
            from tfllm.models.generation import get_generator
            from tfllm.tokenizers.chat_template import ChatTemplateError, chat_config_of

            self.generator = get_generator(self.model)
            self._batcher = _Batcher(self.generator, self._model_lock, max_batch,
                                     prefill_cache=prefill_cache)
            # The rows decoding after each admission so far (monitoring, tests).
            self.batch_sizes = self._batcher.sizes
            self.decode_batch = self._batcher.batch
            try:
                self.chat = chat_config_of(stored, self.tokenizer, template)
            except ChatTemplateError as e:
                self.no_chat = str(e).replace("pass --template", "start the server with "
                                              "--template")
        else:
            from tfllm.tasks.embed.embeddings import text_encoder

            try:
                self.encoder = text_encoder(self.model)
            except TfllmError:
                self.encoder = None
        self.kind = "causal" if self.causal else ("encoder" if self.encoder else task.name)
        self.max_batch = max_batch
        self._waiting = threading.BoundedSemaphore(max_waiting + max_batch)

    # -- /v1/models ------------------------------------------------------------------------
    def model_object(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.created,
                "owned_by": "tfllm"}

    def models(self) -> dict:
        return {"object": "list", "data": [self.model_object()]}

    def _check_model(self, body):
        check_model(body, self.name, "server")

    # -- the model: exclusive (constrained replies) or batched -----------------------------
    def _hold(self, work, exclusive=True):
        """`work` (an iterator) run with the model to itself (`exclusive`), or sharing it
        through the batcher; ApiError 503 at once when more requests already wait than
        allowed."""
        if not self._waiting.acquire(blocking=False):
            raise ApiError("the server is busy: too many requests waiting; retry shortly",
                           status=503, type_="server_error", code="overloaded")
        return _Held(work, self._model_lock if exclusive else None, self._waiting)

    # -- /v1/chat/completions ----------------------------------------------------------------
    def chat_completions(self, body: dict):
        """A chat completion object, or with `"stream": true` an iterator of chunk objects
        (the caller frames them as server-sent events and ends with `[DONE]`)."""
        self._check_model(body)
        if not self.causal:
            raise ApiError(f"`{self.name}` is a {self.kind} model: it answers "
                           "/v1/embeddings, not chat completions", "model")
        if self.chat is None:
            raise ApiError(self.no_chat, "messages")
        sessions, ids, stops, common = self._chat_prompt(body)
        meta = {"id": "chatcmpl-" + uuid.uuid4().hex, "created": int(time.time()),
                "model": self.name}
        exclusive = any(session.constraint is not None for session in sessions)
        if common["stream"]:
            return self._hold(self._chat_stream(sessions, ids, stops, meta, common), exclusive)
        work = self._hold(self._chat_whole(sessions, ids, stops), exclusive)
        choices, used = [], 0
        for index, (text, reply) in enumerate(work):
            message, finish = _assistant_message(sessions[index], text, reply)
            choices.append({"index": index, "message": message, "finish_reason": finish,
                            "logprobs": None})
            used += reply["tokens"]
        return dict(meta, object="chat.completion", choices=choices,
                    usage=usage(len(ids) * len(choices), used))

    def _session(self, system, common, seed, schema, tools, tool_choice):
        from tfllm.models.chat_session import ChatSession
        from tfllm.models.token_automaton import ConstraintError

        try:
            # The reply budget is fixed once the prompt is known (`_budget`).
            return ChatSession(self.model, self.chat, system, self.generator.max_len - 1,
                               common["temperature"], None, common["top_p"], seed,
                               json_schema=schema, tools=tools, tool_choice=tool_choice)
        except (ConstraintError, TfllmError) as e:
            raise ApiError(str(e), "tools" if tools is not None else "response_format") \
                from None

    def _budget(self, sessions, prompt_tokens, common):
        """Set every session's reply budget: `max_tokens`, else what the prompt leaves of
        the context; ApiError when the prompt and the reply do not fit."""
        from tfllm.models.generation import (GenerationError, GenerationParams,
                                             check_constraint, fits, new_token_room)

        max_len = self.generator.max_len
        max_new = common["max_new"]
        if max_new is None:
            max_new = new_token_room(max_len, prompt_tokens)
        if max_new < 1 or not fits(prompt_tokens, max_new, max_len):
            raise ApiError(f"This model's maximum context length is {max_len} tokens. "
                           f"However, you requested {prompt_tokens + max(max_new, 1)} tokens "
                           f"({prompt_tokens} in the messages, {max(max_new, 1)} in the "
                           "completion). Please reduce the length of the messages or "
                           "completion.", "messages" if common["max_new"] is None
                           else common["max_param"], code="context_length_exceeded")
        for session in sessions:
            p = session.params
            session.params = GenerationParams(max_new, p.temperature, p.top_k, p.top_p, p.seed)
            if session.constraint is not None:
                try:
                    check_constraint(session.constraint, session.params)
                except GenerationError as e:
                    raise ApiError(str(e), common["max_param"]) from None

    def _chat_prompt(self, body):
        """(sessions, prompt ids, stop strings, sampling) of a chat request."""
        from tfllm.models.tool_calls import ToolError, call_format, plain_turns

        common = read_sampling(body)
        turns, system = read_conversation(body.get("messages"))
        tools, tool_choice = _tools(body)
        schema = read_response_format(body.get("response_format"))
        if tools is not None and schema is not None:
            raise ApiError("give tools or a response_format, not both", "response_format")
        sessions = [self._session(system, common, seed, schema, tools, tool_choice)
                    for seed in common["seeds"]]
        try:  # tool calls and results as ChatSession writes them, in its template's format
            turns = plain_turns(turns, fmt=call_format(sessions[0].template.source))
        except ToolError as e:
            raise ApiError(str(e), "messages") from None
        ids = sessions[0].encode(sessions[0].history + turns)
        self._budget(sessions, len(ids), common)
        return sessions, ids, sessions[0].end_of_turn + common["stop"], common

    def _chat_whole(self, sessions, ids, stops):
        for session, chunks in zip(sessions, self._submit_all(
                [(ids, s.params, s.constraint) for s in sessions])):
            reply = {}
            text = "".join(self.stream_text(ids, session.params, session.constraint, stops,
                                            reply, chunks))
            yield text, reply

    def _submit_all(self, jobs):
        """Token chunk iterators of (ids, params, constraint) jobs; the unconstrained ones
        submitted at once, so that `n` choices or several prompts decode in one batch
        (and one prompt is prefilled once)."""
        return [self.token_chunks(*job) if job[2] is None else None for job in jobs]

    def _chat_stream(self, sessions, ids, stops, meta, common):
        def chunk(index, delta, finish=None):
            return dict(meta, object="chat.completion.chunk", choices=[
                {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}])

        used = 0
        submitted = self._submit_all([(ids, s.params, s.constraint) for s in sessions])
        for index, session in enumerate(sessions):
            yield chunk(index, {"role": "assistant", "content": ""})
            reply = {}
            pieces = self.stream_text(ids, session.params, session.constraint, stops, reply,
                                      submitted[index])
            if session.tools:  # a call is known only once whole: one delta at the end
                text = "".join(pieces)
                message, finish = _assistant_message(session, text, reply)
                delta = {"content": message["content"]} if not message.get("tool_calls") \
                    else {"tool_calls": [dict(call, index=i) for i, call in
                                         enumerate(message["tool_calls"])]}
                yield chunk(index, delta)
            else:
                for piece in pieces:
                    yield chunk(index, {"content": piece})
                finish = reply["finish_reason"]
            yield chunk(index, {}, finish)
            used += reply["tokens"]
        if common["include_usage"]:
            yield dict(meta, object="chat.completion.chunk", choices=[],
                       usage=usage(len(ids) * len(sessions), used))

    # -- /v1/completions ---------------------------------------------------------------------
    def completions(self, body: dict):
        """A text completion object (or an iterator of chunks with `"stream": true`): the
        text `tfllm generate` continues each prompt with."""
        from tfllm.models.generation import GenerationParams, encode_prompt

        self._check_model(body)
        if not self.causal:
            raise ApiError(f"`{self.name}` is a {self.kind} model: it answers "
                           "/v1/embeddings, not completions", "model")
        common = read_sampling(body, default_max=16)
        prompts, echo = read_prompts(body, len(common["seeds"]), self.model.config.vocab_size)
        jobs = []  # (index, prompt text, ids, params)
        for p, prompt in enumerate(prompts):
            if isinstance(prompt, list):  # token ids, already checked against the vocabulary
                ids, prompt = prompt, self.tokenizer.decode(prompt)
            else:
                ids = encode_prompt(self.tokenizer, prompt)
            self._budget([], len(ids), common)
            for j, seed in enumerate(common["seeds"]):
                params = GenerationParams(common["max_new"], common["temperature"], None,
                                          common["top_p"], seed)
                jobs.append((p * len(common["seeds"]) + j, prompt, ids, params))
        meta = {"id": "cmpl-" + uuid.uuid4().hex, "created": int(time.time()),
                "model": self.name}
        prompt_tokens = sum(len(ids) for _, _, ids, _ in jobs)
        stops = common["stop"]

        def run():
            used = 0
            submitted = self._submit_all([(ids, params, None) for _, _, ids, params in jobs])
            for (index, prompt, ids, params), chunks in zip(jobs, submitted):
                reply = {}
                pieces = self.stream_text(ids, params, None, stops, reply, chunks)
                yield index, prompt, pieces, reply
                used += reply["tokens"]
            if common["stream"] and common["include_usage"]:
                yield None, None, None, usage(prompt_tokens, used)

        def chunk(index, text, finish=None):
            return dict(meta, object="text_completion", choices=[
                {"index": index, "text": text, "finish_reason": finish, "logprobs": None}])

        if common["stream"]:
            def stream():
                for index, prompt, pieces, reply in run():
                    if index is None:
                        yield dict(meta, object="text_completion", choices=[], usage=reply)
                        continue
                    if echo:
                        yield chunk(index, prompt)
                    for piece in pieces:
                        yield chunk(index, piece)
                    yield chunk(index, "", reply["finish_reason"])

            return self._hold(stream(), exclusive=False)
        choices, used = [], 0
        for index, prompt, pieces, reply in self._hold(run(), exclusive=False):
            text = "".join(pieces)
            choices.append({"index": index, "text": (prompt if echo else "") + text,
                            "finish_reason": reply["finish_reason"], "logprobs": None})
            used += reply["tokens"]
        return dict(meta, object="text_completion", choices=choices,
                    usage=usage(prompt_tokens, used))

    # -- decoding ----------------------------------------------------------------------------
    def stream_text(self, ids, params, constraint, stops, reply, chunks=None):
        """Yield the reply's text as the decoding loop produces it, ending at the first of
        `stops` (not included), the end token or the budget. Fills `reply`: `tokens` (the
        tokens the text took: up to the one completing a stop, without the end token) and
        `finish_reason` ("stop" or "length"). Text that may begin a stop (a suffix that is a
        stop's prefix), or that ends inside a character (U+FFFD of a partial byte sequence),
        waits for the next chunk."""
        reply.update(tokens=0, finish_reason="length")
        # `chunks`: the reply's token chunks if already submitted (`_submit_all`). The
        # first chunk is one token: the time to the first token is the prefill and one
        # step; later chunks of 4 spread the cost of a call over more tokens.
        source = chunks if chunks is not None else self.token_chunks(ids, params, constraint)
        try:
            yield from self._text_of(source, stops, reply, params)
        finally:
            close = getattr(source, "close", None)
            if close is not None:  # a reply cut at a stop: its row need not go on
                close()

    def _text_of(self, source, stops, reply, params):
        tok = self.tokenizer
        out, shown = [], 0
        for new in source:
            before = len(out)
            out += new
            text = tok.decode(out)
            cut = min((text.find(s) for s in stops if s in text), default=-1)
            if cut >= 0:
                # The tokens of the text up to and including the stop.
                k = next(k for k in range(before + 1, len(out) + 1)
                         if any(s in tok.decode(out[:k]) for s in stops))
                if cut > shown:
                    yield text[shown:cut]
                reply.update(tokens=k, finish_reason="stop")
                return
            safe = len(text) - _stop_prefix(text, stops)
            while safe > shown and text[safe - 1] == "\ufffd":
                safe -= 1
            if safe > shown:
                yield text[shown:safe]
                shown = safe
        text = tok.decode(out)
        if len(text) > shown:
            yield text[shown:]
        reply["tokens"] = len(out)
        if len(out) < params.max_new_tokens:
            reply["finish_reason"] = "stop"

    def token_chunks(self, ids, params, constraint):
        """The reply's new token ids, a chunk at a time: unconstrained replies through the
        batcher (decoded with whatever else is waiting), constrained ones alone."""
        if constraint is None:
            return self._batcher.submit(ids, params)
        return self.generator.stream_ids(ids, params, constraint=constraint, first_chunk=1)

    def warm_up(self, report=None):
        """Compile the decoding loop for each batch size and trace the prefills
        (`DecodeBatch.warm_up`), then decode a short reply; or run the encoder once: so
        that no request waits for a compile.

        Args:
            report: called with a line of progress before each compile.
        """
        from tfllm.models.generation import GenerationParams

        if self.causal:
            with self._model_lock:
                self.decode_batch.warm_up(report)
            ids = self.tokenizer.encode("Hello") or [self.tokenizer.bos_id]
            for _ in self.stream_text(ids, GenerationParams(2), None, [], {}):
                pass
        elif self.encoder is not None:
            from tfllm.tasks.embed.embeddings import embed_texts

            embed_texts(self.encoder, ["warm up"])

    # -- /v1/embeddings ----------------------------------------------------------------------
    def embeddings(self, body: dict) -> dict:
        """Unit-length sentence embeddings, as `tfllm embed` prints them."""
        from tfllm.tasks.embed.embeddings import embed_texts
        from tfllm.tokenizers.packing import token_counts

        self._check_model(body)
        if self.encoder is None:
            raise ApiError(f"`{self.name}` is a {self.kind} model: embeddings come from "
                           "encoder runs (BERT-style)", "model")
        texts = read_texts(body.get("input"), "input")
        if len(texts) > 2048:
            raise ApiError(f"at most 2048 inputs per request, got {len(texts)}", "input")
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise ApiError(f"encoding_format must be float or base64, got {fmt!r}",
                           "encoding_format")
        width = self.encoder.backbone.d_model
        dims = body.get("dimensions")
        if dims is not None and dims != width:
            raise ApiError(f"this model's embeddings have {width} dimensions; dimensions="
                           f"{dims!r} cannot be given", "dimensions")
        def work():
            yield embed_texts(self.encoder, texts)

        vectors = list(self._hold(work()))[0]
        max_len = self.encoder.backbone.max_len
        tokens = sum(min(c, max_len) for c in token_counts(self.tokenizer, texts, True))
        data = []
        for i, v in enumerate(np.asarray(vectors, np.float32)):
            value = base64.b64encode(v.astype("<f4").tobytes()).decode() if fmt == "base64" \
                else [float(x) for x in v]
            data.append({"object": "embedding", "index": i, "embedding": value})
        return {"object": "list", "data": data, "model": self.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class _Held:
    """An iterator run holding `lock` (taken at the first item), releasing it and its
    waiting slot when it ends, fails or is closed, even if it never started (a client that
    left before the first chunk)."""

    def __init__(self, work, lock, slot):
        self._work, self._lock, self._slot = work, lock, slot
        self._locked = self._closed = False

    def __iter__(self):
        return self

    def __next__(self):
        if self._closed:
            raise StopIteration
        if not self._locked and self._lock is not None:
            self._lock.acquire()
            self._locked = True
        try:
            return next(self._work)
        except BaseException:
            self.close()
            raise

    def close(self):
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._work, "close", None)
            if close is not None:
                close()
        finally:
            if self._locked:
                self._lock.release()
            self._slot.release()

    def __del__(self):
        self.close()


# Prompt slots prefilled between two decoding steps at most (past the first prompt): two
# 64-token prefills (~0.2 s for SmolLM2-135M on 2 cores), or short extensions of kept
# prompts (computed together, in one call), or any number of kept prompts (no work).
ROUND_PREFILL = 128


class _Batcher:
    """Unconstrained replies decoded together, continuously: a thread runs one
    `DecodeBatch` loop, and a reply that arrives while it decodes joins it before the next
    chunk of steps (up to `max_batch` rows; its prompt prefilled with the others joining,
    only its new tokens when it begins like a recent prompt, not at all when it is one),
    so it waits for a chunk and the prefills ahead of it, not for the replies in
    progress. A row samples what it samples alone (its own parameters and seeds). Each
    chunk holds `lock`, which a constrained request holds for its whole reply."""

    def __init__(self, generator, lock, max_batch=8, chunk=4, prefill_cache=16):
        import queue

        from tfllm.models.decode_batch import DecodeBatch

        self.lock, self.chunk = lock, chunk
        self.batch = DecodeBatch(generator, max_batch, prefill_cache)
        self.jobs = queue.Queue()
        # The rows decoding after each admission (monitoring, tests).
        self.sizes = []
        threading.Thread(target=self._loop, daemon=True, name="tfllm-batcher").start()

    def submit(self, ids, params):
        """An iterator of `ids`'s new token ids, a chunk at a time (the first one token)."""
        import queue

        job = {"ids": ids, "params": params, "out": queue.Queue(), "left": False}
        self.jobs.put(job)
        return _Reply(job)

    def _loop(self):
        import queue

        waiting, rows = [], {}  # jobs not yet admitted (in order); row -> job
        while True:
            if not rows and not waiting:
                waiting.append(self.jobs.get())
            while True:
                try:
                    waiting.append(self.jobs.get_nowait())
                except queue.Empty:
                    break
            try:
                with self.lock:
                    for row in [r for r, job in rows.items() if job["left"]]:
                        self.batch.drop(row)
                        rows.pop(row)
                    joined = self._admit(waiting, rows)
                    # A reply that just joined gets its first token after one step.
                    news = self.batch.step(1 if joined else self.chunk)
            except BaseException as e:  # every reply in the loop fails with it, none hangs
                for job in rows.values():
                    job["out"].put(e)
                rows.clear()
                self.batch.drop_all()
                continue
            for row, (new, finished) in news.items():
                job = rows[row]
                if new:
                    job["out"].put(new)
                if finished:
                    job["out"].put(None)
                    rows.pop(row)

    def _admit(self, waiting, rows) -> bool:
        """Admit waiting jobs in order while they fit, until their prefills have computed
        `ROUND_PREFILL` slots (the rows decoding, and the jobs admitted, then get their
        next token before more prefills, rather than after all of them); whether any
        joined."""
        joined, computed = False, 0
        while waiting and computed < ROUND_PREFILL:
            job = waiting[0]
            if job["left"]:
                waiting.pop(0)
                continue
            try:
                row = self.batch.admit(job["ids"], job["params"])
            except Exception as e:  # noqa: BLE001 - this reply fails, the loop goes on
                waiting.pop(0)
                job["out"].put(e)
                continue
            if row is None:
                break
            rows[row] = waiting.pop(0)
            self.sizes.append(len(rows))
            joined = True
            computed += self.batch.computed
        return joined


class _Reply:
    """The token chunks of a reply submitted to the batcher. Closed (or dropped, even
    before its first chunk) it tells the loop that nobody reads it: its row is dropped
    at the next chunk."""

    def __init__(self, job):
        self._job = job

    def __iter__(self):
        return self

    def __next__(self):
        if self._job["left"]:
            raise StopIteration
        item = self._job["out"].get()
        if item is None or isinstance(item, BaseException):
            self.close()
            if item is None:
                raise StopIteration
            raise item
        return item

    def close(self):
        self._job["left"] = True

    def __del__(self):
        self.close()


def _stop_prefix(text, stops) -> int:
    """The length of the longest end of `text` that begins one of `stops`."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


# -- request fields -------------------------------------------------------------------------
def _tools(body):
    """(tools or None, tool_choice) of a request."""
    from tfllm.models.tool_calls import ToolError, check_tools

    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is None or tools == []:
        if choice not in (None, "none", "auto"):
            raise ApiError("tool_choice needs tools", "tool_choice")
        return None, "auto"
    try:
        tools = check_tools(tools)
    except ToolError as e:
        raise ApiError(str(e), "tools") from None
    choice = "auto" if choice is None else choice
    if isinstance(choice, dict):  # {"type": "function", "function": {"name": ...}}
        name = (choice.get("function") or {}).get("name") \
            if isinstance(choice.get("function"), dict) else None
        chosen = [t for t in tools if t["function"]["name"] == name]
        if choice.get("type") != "function" or not chosen:
            raise ApiError(f"tool_choice names no function of the tools: "
                           f"{str(name)[:60]!r}", "tool_choice")
        return chosen, "required"
    if choice not in ("auto", "required", "none"):
        raise ApiError(f"tool_choice must be auto, required, none or a function, got "
                       f"{str(choice)[:40]!r}", "tool_choice")
    return tools, choice


def _assistant_message(session, text, reply):
    """(message, finish_reason) of a reply: with tools, a call is `tool_calls`."""
    if session.tools:
        from tfllm.models.tool_calls import ToolError, parse_tool_calls

        try:
            calls = parse_tool_calls(text, session.tool_format)
        except ToolError:
            calls = []  # a budget that ended inside a call: the text, finish "length"
        if calls:
            return {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"
    return {"role": "assistant", "content": text}, reply["finish_reason"]
