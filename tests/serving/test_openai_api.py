"""The OpenAI API of `tfllm serve --run`, called with the official `openai` client."""

import base64
import json
import re
import threading
import urllib.error
import urllib.request

import jsonschema
import numpy as np
import pytest

from tests.chat_fixtures import TOOLS
from tests.conftest import call_cli

openai = pytest.importorskip("openai")

MESSAGE = "Translate to French: cat dog"


def _serve(api):
    from serving.dev_server import make_http_server

    http = make_http_server(None, "127.0.0.1", 0, api=api)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    return http, f"http://127.0.0.1:{http.server_address[1]}"


@pytest.fixture(scope="module")
def chat_api(chat_runs):
    from serving.openai_api import OpenAIService

    api = OpenAIService(chat_runs["full"], name="mt", max_waiting=2)
    http, url = _serve(api)
    yield {"api": api, "url": url,
           "client": openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)}
    http.shutdown()


@pytest.fixture(scope="module")
def tools_api(tmp_path_factory):
    from serving.openai_api import OpenAIService
    from tests.chat_fixtures import make_tools_run

    run = make_tools_run(str(tmp_path_factory.mktemp("tools") / "run"))
    api = OpenAIService(run, name="tools")
    http, url = _serve(api)
    yield {"api": api, "client": openai.OpenAI(base_url=url + "/v1", api_key="unused",
                                               max_retries=0)}
    http.shutdown()


@pytest.fixture(scope="module")
def embed_api(tiny_classifier):
    from serving.openai_api import OpenAIService

    http, url = _serve(OpenAIService(tiny_classifier[0], name="enc"))
    yield {"url": url, "client": openai.OpenAI(base_url=url + "/v1", api_key="unused",
                                               max_retries=0)}
    http.shutdown()


def _chat(client, **kw):
    kw.setdefault("messages", [{"role": "user", "content": MESSAGE}])
    return client.chat.completions.create(model="mt", **kw)


def _expected_tokens(api, ids, max_new, stops):
    """The reply's token count from the whole-loop generation (not the streaming path the
    server uses): up to the token completing an end-of-turn text, else all."""
    from tfllm.models.generation import GenerationParams

    out = api.generator.generate_ids([ids], GenerationParams(max_new))[0]
    for k in range(1, len(out) + 1):
        if any(s in api.tokenizer.decode(out[:k]) for s in stops):
            return k
    return len(out)


def test_chat_greedy_is_tfllm_chat_and_the_stream_is_the_same(chat_api, chat_runs):
    from tfllm.models.chat_session import ChatSession

    client, api = chat_api["client"], chat_api["api"]
    done = call_cli(["chat", "--run", chat_runs["full"], "--message", MESSAGE,
                     "--max-new-tokens", "12"])
    assert done.returncode == 0, done.stderr
    cli_reply = done.stdout.splitlines()[-1]
    assert len(cli_reply) > 3

    r = _chat(client, temperature=0, max_tokens=12)
    assert r.object == "chat.completion" and r.model == "mt"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == cli_reply
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens < 12
    session = ChatSession(api.model, api.chat, max_new_tokens=12)
    ids, _ = session.prompt_ids([{"role": "user", "content": MESSAGE}])
    assert r.usage.prompt_tokens == len(ids)
    assert r.usage.completion_tokens == _expected_tokens(api, ids, 12, session.end_of_turn)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    chunks = list(_chat(client, temperature=0, max_tokens=12, stream=True,
                        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and
              c.choices[0].delta.content]
    assert len(pieces) > 1  # streamed as decoded, not in one piece
    assert "".join(pieces) == cli_reply
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == r.usage
    assert len({c.id for c in chunks}) == 1


def test_concurrent_requests_decode_in_one_batch_as_alone(chat_api):
    """Streams that arrive together decode in one loop (each row its own budget and
    sampling) and answer what each answers alone: greedy replies and seeded samples;
    prompts seen before are not prefilled again."""
    from concurrent.futures import ThreadPoolExecutor

    client, api = chat_api["client"], chat_api["api"]
    asks = [dict(messages=[{"role": "user", "content": m}], temperature=t, max_tokens=k,
                 seed=3) for m, t, k in [("Translate to French: water", 0, 12),
                                         ("Translate to French: cat", 0, 5),
                                         ("Translate to French: Open the file", 1.0, 9),
                                         ("Hi", 0, 3)]]
    alone = [_chat(client, **kw).choices[0].message.content for kw in asks]

    def streamed(kw):
        return "".join(c.choices[0].delta.content or "" for c in _chat(client, stream=True, **kw)
                       if c.choices)

    before, hits = len(api.batch_sizes), api.decode_batch.prefill_hits
    with ThreadPoolExecutor(len(asks)) as pool:
        together = list(pool.map(streamed, asks * 2))
    assert together == alone * 2
    assert max(api.batch_sizes[before:]) > 1  # some were decoded together
    # The prompts were seen alone first: none is prefilled again.
    assert api.decode_batch.prefill_hits - hits == len(asks) * 2


def test_n_choices_decode_together_from_one_prefill(chat_api):
    """The `n` choices of a request are submitted at once: they share the decoding loop
    and one prefill, and each samples what it samples alone (choice i: seed + i)."""
    client, api = chat_api["client"], chat_api["api"]
    msg = [{"role": "user", "content": "Translate to French: the red house"}]
    batch = api.decode_batch

    def computed():  # prompts prefilled, whole or from a kept one's start
        return batch.prefills + batch.prefill_extends

    before, prefills = len(api.batch_sizes), computed()
    r = _chat(client, messages=msg, temperature=1.0, seed=5, n=3, max_tokens=8)
    assert computed() == prefills + 1
    assert max(api.batch_sizes[before:]) >= 2
    alone = [_chat(client, messages=msg, temperature=1.0, seed=5 + i, max_tokens=8)
             .choices[0].message.content for i in range(3)]
    assert [c.message.content for c in r.choices] == alone


def test_a_conversation_that_goes_on_computes_only_its_new_turn(chat_api):
    """The second request of a conversation begins with the first's prompt: its prefill
    extends the kept one, and the reply is the whole-prefill loop's."""
    from tfllm.models.chat_session import ChatSession
    from tfllm.models.generation import GenerationParams

    client, api = chat_api["client"], chat_api["api"]
    first = [{"role": "user", "content": "Translate to French: water"}]
    reply = _chat(client, messages=first, temperature=0, max_tokens=6).choices[0]
    more = first + [{"role": "assistant", "content": reply.message.content},
                    {"role": "user", "content": "cat"}]
    extends = api.decode_batch.prefill_extends
    got = _chat(client, messages=more, temperature=0, max_tokens=6).choices[0].message
    assert api.decode_batch.prefill_extends == extends + 1
    session = ChatSession(api.model, api.chat, max_new_tokens=6)
    ids, dropped = session.prompt_ids(more)
    assert dropped == 0
    whole = api.generator.generate_ids([ids], GenerationParams(6))[0]
    assert got.content == _reply_text(api, whole, session.end_of_turn)


def _reply_text(api, ids, stops):
    text = api.tokenizer.decode(ids)
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return text if cut < 0 else text[:cut]


def test_budget_stop_seed_and_n(chat_api):
    client = chat_api["client"]
    r = _chat(client, temperature=0, max_tokens=2)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 2
    whole = _chat(client, temperature=0, max_tokens=12).choices[0].message.content
    stop = whole[2:4]
    r = _chat(client, temperature=0, max_tokens=12, stop=["never seen", stop])
    assert r.choices[0].message.content == whole[:whole.find(stop)]
    assert r.choices[0].finish_reason == "stop"
    # Sampling: a seed reproduces; n choices sample with seed, seed + 1, ...
    a = _chat(client, temperature=1.5, seed=7, n=3, max_tokens=8)
    b = _chat(client, temperature=1.5, seed=7, n=3, max_tokens=8)
    c = _chat(client, temperature=1.5, seed=8, n=1, max_tokens=8)
    texts = [ch.message.content for ch in a.choices]
    assert [ch.index for ch in a.choices] == [0, 1, 2]
    assert texts == [ch.message.content for ch in b.choices]
    assert c.choices[0].message.content == texts[1]
    assert len(set(texts)) > 1
    assert a.usage.prompt_tokens == 3 * c.usage.prompt_tokens


def test_multi_turn_conversations_render_every_turn(chat_api):
    from tfllm.models.chat_session import ChatSession

    api = chat_api["api"]
    messages = [{"role": "system", "content": "You translate."},
                {"role": "user", "content": "Translate to French: cat"},
                {"role": "assistant", "content": "chat"},
                {"role": "user", "content": [{"type": "text", "text": "Translate to French: "},
                                             {"type": "text", "text": "dog"}]}]
    r = _chat(chat_api["client"], messages=messages, temperature=0, max_tokens=8)
    session = ChatSession(api.model, api.chat, system="You translate.", max_new_tokens=8)
    session.history += [{"role": "user", "content": "Translate to French: cat"},
                        {"role": "assistant", "content": "chat"}]
    last = {"role": "user", "content": "Translate to French: dog"}
    ids, dropped = session.prompt_ids(session.history + [last])
    assert r.usage.prompt_tokens == len(ids) and dropped == 0
    assert r.choices[0].message.content == session.reply(last["content"])


def test_tools_and_response_format(tools_api, chat_api):
    """Tool calls on a random model (the constraint makes every call valid), as `tfllm chat
    --tools` makes them; a JSON schema response_format."""
    from tfllm.models.chat_session import ChatSession

    client, api = tools_api["client"], tools_api["api"]
    # `tfllm chat --tools` answers with this session (tests/models/test_tool_calls.py);
    # built on the server's model, one compiled loop serves both.
    session = ChatSession(api.model, api.chat, max_new_tokens=100, tools=TOOLS,
                          tool_choice="required")
    session.reply("Weather in Paris?")
    cli_calls = session.last_tool_calls
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    r = client.chat.completions.create(model="tools", messages=messages, tools=TOOLS,
                                       tool_choice="required", temperature=0, max_tokens=100)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = [c.model_dump() for c in choice.message.tool_calls]
    assert calls == cli_calls
    # The call is one of the tools', its arguments valid under its parameters.
    spec = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    jsonschema.validate(json.loads(calls[0]["function"]["arguments"]),
                        spec[calls[0]["function"]["name"]])
    chunks = list(client.chat.completions.create(
        model="tools", messages=messages, tools=TOOLS, tool_choice="required", temperature=0,
        max_tokens=100, stream=True))
    streamed = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(t.function.name, t.function.arguments) for t in streamed] == \
        [(c["function"]["name"], c["function"]["arguments"]) for c in calls]
    # One named function: that one is called.
    r = client.chat.completions.create(
        model="tools", messages=messages, tools=TOOLS, temperature=0, max_tokens=100,
        tool_choice={"type": "function", "function": {"name": "add"}})
    assert r.choices[0].message.tool_calls[0].function.name == "add"
    # A tool result, then the reply: the conversation as `plain_turns` writes it.
    follow = messages + [r.choices[0].message.model_dump(exclude_none=True),
                         {"role": "tool", "tool_call_id": "call_0", "content": "5"}]
    r = client.chat.completions.create(model="tools", messages=follow, tools=TOOLS,
                                       tool_choice="none", temperature=0, max_tokens=5)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content

    client = chat_api["client"]
    schema = {"type": "object", "properties": {"word": {"enum": ["chat", "chien"]}},
              "required": ["word"], "additionalProperties": False}
    r = _chat(client, temperature=0, max_tokens=30, response_format={
        "type": "json_schema", "json_schema": {"name": "w", "schema": schema}})
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_completions_are_tfllm_generate(chat_api, chat_runs):
    client = chat_api["client"]
    done = call_cli(["generate", "--run", chat_runs["full"], "--prompt", "chat", "--max-new-tokens",
                     "6"])
    assert done.returncode == 0, done.stderr
    r = client.completions.create(model="mt", prompt="chat", max_tokens=6, temperature=0)
    assert "chat" + r.choices[0].text == done.stdout.rstrip("\n")
    tok = chat_api["api"].tokenizer
    assert r.usage.prompt_tokens == len(tok.encode("chat"))
    e = client.completions.create(model="mt", prompt=["chat", "chat"], max_tokens=6,
                                  temperature=0, echo=True)
    assert [c.text for c in e.choices] == ["chat" + r.choices[0].text] * 2
    assert e.usage.prompt_tokens == 2 * r.usage.prompt_tokens
    pieces = [c.choices[0].text for c in client.completions.create(
        model="mt", prompt="chat", max_tokens=6, temperature=0, stream=True) if c.choices]
    assert "".join(pieces) == r.choices[0].text
    # Token ids as the prompt (OpenAI's other form; lm-eval's tokenized requests): the
    # same continuation as the text they encode, one prompt or a list of them.
    ids = tok.encode("chat")
    t = client.completions.create(model="mt", prompt=ids, max_tokens=6, temperature=0)
    assert t.choices[0].text == r.choices[0].text and t.usage.prompt_tokens == len(ids)
    t = client.completions.create(model="mt", prompt=[ids, ids], max_tokens=6, temperature=0,
                                  echo=True)
    assert [c.text for c in t.choices] == [tok.decode(ids) + r.choices[0].text] * 2
    vocab = chat_api["api"].model.config.vocab_size
    for bad, match in [([vocab], f"token id {vocab} is outside the vocabulary (0 to "
                                 f"{vocab - 1})"),
                       ([[1], [-1]], "token id -1 is outside"),
                       ([True], "a list of token ids"), (["a", [1]], "a list of token ids")]:
        with pytest.raises(openai.BadRequestError, match=re.escape(match)):
            client.completions.create(model="mt", prompt=bad, max_tokens=2)


def test_embeddings_are_tfllm_embed(embed_api, tiny_classifier):
    client = embed_api["client"]
    texts = ["a good and great film", "a dull film"]
    done = call_cli(["embed", "--run", tiny_classifier[0], *sum([["--text", t] for t in texts],
                                                               [])])
    assert done.returncode == 0, done.stderr
    expected = [json.loads(line)["embedding"] for line in done.stdout.splitlines()
                if line.startswith("{")]
    r = client.embeddings.create(model="enc", input=texts)
    got = [d.embedding for d in sorted(r.data, key=lambda d: d.index)]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    from tfllm.tokenizers.packing import token_counts
    import tfllm

    tok = tfllm.load(tiny_classifier[0]).tokenizer
    assert r.usage.prompt_tokens == sum(token_counts(tok, texts, True))
    raw = client.embeddings.create(model="enc", input=texts[0], encoding_format="base64")
    vector = raw.data[0].embedding
    if isinstance(vector, str):  # the client decodes base64 itself in some versions
        vector = np.frombuffer(base64.b64decode(vector), "<f4")
    np.testing.assert_allclose(vector, got[0], atol=1e-7)


def _raw_post(url, path, data):
    req = urllib.request.Request(url + path, data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("kw, param, match", [
    ({"model": "gpt-4o"}, "model", "does not exist"),
    ({"model": None}, "model", "you must provide a model parameter"),
    ({"max_tokens": 5000}, "max_tokens", "maximum context length is 64"),
    ({"temperature": 3}, "temperature", "temperature must be"),
    ({"top_p": 0}, "top_p", "top_p must be"),
    ({"n": 99}, "n", "n must be"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages", "role must be"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]},
     "messages", "last message must be"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages",
     "only text content"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"logprobs": True}, "logprobs", "not supported"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice",
     "names no function"),
    ({"response_format": {"type": "xml"}}, "response_format", "must be text"),
    # Compiling this would take hours (a request's schema is untrusted): refused at once.
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "string", "maxLength": 10 ** 6}}}}, "response_format", "automaton states"),
    ({"messages": [{"role": "user", "content": "a\ud800"}]}, None, "lone UTF-16 surrogate"),
])
def test_bad_parameters_are_openai_errors(chat_api, kw, param, match):
    body = {"model": "mt", "messages": [{"role": "user", "content": MESSAGE}], **kw}
    status, payload = _raw_post(chat_api["url"], "/v1/chat/completions",
                                json.dumps(body).encode())
    not_found = kw.get("model", "mt") is not None and param == "model"
    assert status == (404 if not_found else 400), payload
    error = payload["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert match in error["message"]
    if ("model" in kw and kw["model"] is None) or param is None:
        return  # the client itself requires a model and refuses to send a lone surrogate
    # The client raises the matching exception type.
    with pytest.raises(openai.NotFoundError if not_found else openai.BadRequestError):
        chat_api["client"].chat.completions.create(**body)


def test_other_errors_models_and_saturation(chat_api, embed_api):
    from serving.openai_api import ApiError

    url, api = chat_api["url"], chat_api["api"]
    status, payload = _raw_post(url, "/v1/chat/completions", b"{not json")
    assert status == 400 and "could not parse the JSON" in payload["error"]["message"]
    status, payload = _raw_post(url, "/v1/embeddings", json.dumps(
        {"model": "mt", "input": "x"}).encode())
    assert status == 400 and "embeddings come from encoder runs" in payload["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="answers /v1/embeddings"):
        embed_api["client"].chat.completions.create(
            model="enc", messages=[{"role": "user", "content": "x"}])
    assert [m.id for m in chat_api["client"].models.list()] == ["mt"]
    assert chat_api["client"].models.retrieve("mt").owned_by == "tfllm"
    # A batch of requests may run, two more wait (max_waiting=2): the next is 503 at once.
    body = {"model": "mt", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "max_tokens": 2}
    held = [api.chat_completions(dict(body)) for _ in range(api.max_batch + 2)]
    with pytest.raises(ApiError) as e:
        api.chat_completions(dict(body))
    assert e.value.status == 503 and e.value.code == "overloaded"
    assert next(held[0])["choices"][0]["delta"]["role"] == "assistant"
    for h in held:
        h.close()
    assert list(api.chat_completions(dict(body)))  # every slot and the model were released


def test_stream_never_splits_a_character():
    """Tokens that are single bytes of a multi-byte character: no chunk ends inside one."""
    from serving.openai_api import OpenAIService
    from tfllm.models.generation import GenerationParams

    text = "é€😀 ok"
    raw = text.encode()

    class ByteTokenizer:
        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")

    class OneByteAtATime(OpenAIService):
        def __init__(self):  # no model: the decoding loop gives one byte per chunk
            self.tokenizer = ByteTokenizer()

        def token_chunks(self, ids, params, constraint):
            return ([b] for b in raw)

    api = OneByteAtATime()
    reply = {}
    pieces = list(api.stream_text([1], GenerationParams(100), None, [], reply))
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)
    assert pieces[:3] == ["é", "€", "😀"]
    assert reply == {"tokens": len(raw), "finish_reason": "stop"}


def test_serve_needs_a_model_dir_or_a_run(capsys):
    from serving.dev_server import parse_args

    with pytest.raises(SystemExit) as e:
        parse_args([])
    assert e.value.code == 2 and "give --model-dir" in capsys.readouterr().err
    assert parse_args(["--run", "runs/x"]).model_dir is None
    assert parse_args(["--run", "runs/x"]).decode_batch == 8
    with pytest.raises(SystemExit):
        parse_args(["--run", "runs/x", "--decode-batch", "0"])
    assert "--decode-batch must be positive" in capsys.readouterr().err
    assert parse_args(["--run", "runs/x"]).prefill_cache == 16
    with pytest.raises(SystemExit):
        parse_args(["--run", "runs/x", "--prefill-cache", "-1"])
    assert "--prefill-cache must be 0 or more" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the warm-up would compile sizes until out of memory
        parse_args(["--run", "runs/x", "--decode-batch", "4096"])
    assert "--decode-batch must be at most 1024, got 4096" in capsys.readouterr().err
    # A port past 65535 was an OverflowError traceback from bind().
    for flag, value, message in (("--port", "99999", "--port must be from 0 (any free port) "
                                  "to 65535, got 99999"),
                                 ("--grpc-port", "-1", "--grpc-port must be from 0 (no gRPC) "
                                  "to 65535, got -1")):
        with pytest.raises(SystemExit):
            parse_args(["--run", "runs/x", flag, value])
        assert message in capsys.readouterr().err


def test_serve_decodes_in_batches_of_decode_batch(monkeypatch, tmp_path, capsys):
    """`--decode-batch`, `--max-waiting` and `--prefill-cache` reach the OpenAI service `tfllm serve --run`
    builds (its batching itself: test_concurrent_requests_decode_in_one_batch_as_alone)."""
    import serving.openai_api
    from serving.dev_server import ServerStartError, main

    built = []

    class Recorder:
        def __init__(self, *args):
            built.append(args)
            raise ServerStartError("recorded")

    monkeypatch.setattr(serving.openai_api, "OpenAIService", Recorder)
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    assert main(["--run", str(tmp_path), "--decode-batch", "3", "--max-waiting", "5",
                 "--prefill-cache", "0"]) != 0
    assert built == [(str(tmp_path), None, None, 5, 3, 0)]
    assert "recorded" in capsys.readouterr().err


def test_a_reply_nobody_reads_leaves_the_loop(chat_api):
    """A stream closed after its first chunk (a client that went away) stops decoding at
    the next chunk instead of running to its budget."""
    import time

    from tfllm.models.generation import GenerationParams

    api = chat_api["api"]
    batch = api.decode_batch
    ids = api.tokenizer.encode("Translate to French: the long road")
    budget = 24
    # A seed whose reply alone runs the whole budget, so only the drop can end it early.
    seed = next((s for s in range(40) if len(sum(api.generator.stream_ids(
        ids, GenerationParams(budget, temperature=1.5, seed=s)), [])) == budget), None)
    assert seed is not None
    params = GenerationParams(budget, temperature=1.5, seed=seed)
    steps = batch.steps
    reply = api.token_chunks(ids, params, None)
    assert len(next(reply)) == 1
    reply.close()
    deadline = time.monotonic() + 60
    while batch.live and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not batch.live
    assert batch.steps - steps < budget // 2
    # Read to the end, the same reply runs its budget.
    steps = batch.steps
    assert len(sum(api.token_chunks(ids, params, None), [])) == budget
    assert batch.steps - steps == budget
