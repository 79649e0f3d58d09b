"""A chat run's exports apply its template: the SavedModel `chat` signatures and the
`.litertlm` conversation answer as `tfllm chat` does (a LoRA run merged on the fly)."""

import os

import pytest

from tests.chat_fixtures import QWEN_LIKE, TOOLS
from tests.conftest import call_module
from tfllm.signatures.chat import prompt_pieces, python_prompt
from tfllm.tokenizers.chat_template import DEFAULT_TEMPLATE, ChatTemplate, ChatTemplateError


def test_prompt_pieces_rebuild_the_rendered_prompt():
    chat = {"template": DEFAULT_TEMPLATE}
    pieces = prompt_pieces(chat)
    assert pieces["plain"] == ["<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"]
    t = ChatTemplate()
    for system in (None, "Be brief."):
        turns = ([] if system is None else [{"role": "system", "content": system}]) + \
            [{"role": "user", "content": "Open %s"}]
        assert python_prompt(pieces, "Open %s", system) == \
            t.render(turns, add_generation_prompt=True)
    # A template that trims the content (Gemma's): the graph trims as Jinja does.
    trimming = DEFAULT_TEMPLATE.replace("message['content']", "message['content'] | trim")
    assert prompt_pieces({"template": trimming})["trim"] == {"message": True, "system": True}
    assert pieces["trim"] == {"message": False, "system": False}
    # One that changes it otherwise cannot be applied by string joins: refused.
    changing = DEFAULT_TEMPLATE.replace("message['content']",
                                        "message['content'] | replace('?', '!')")
    with pytest.raises(ChatTemplateError, match="changes a turn's text"):
        prompt_pieces({"template": changing})


def test_graph_trim_is_jinjas_trim():
    import tensorflow as tf

    from tfllm.signatures.prompt_graph import TRIM_SAMPLE, strip_text

    spaces = "".join(c for c in map(chr, range(0x3001)) if c.isspace())
    texts = [TRIM_SAMPLE, spaces + "a b" + spaces, spaces, "", "x", "\u200bzero-width\u200b"]
    got = [t.decode() for t in strip_text(tf.constant(texts)).numpy()]
    assert got == [t.strip() for t in texts]


@pytest.mark.slow
def test_saved_model_chat_signatures_answer_as_tfllm_chat(chat_runs, tmp_path):
    """The exporter itself checks both signatures in a fresh process against tfllm chat
    (`chat_checks`); here the LoRA run is exported (merged on the fly) at a context too
    short for the check's full 16-token replies after its longest sample prompt (39 tokens:
    it checks shorter replies) and its signatures are listed. With a JSON schema it checks
    generate_yn and chat_yn against CausalLM.generate and tfllm chat under the schema."""
    from export.saved_model import describe_signatures, export_saved_model
    from tfllm import runs
    from tfllm.models.chat_session import ChatSession

    schema = {"enum": ["oui", "non"]}
    path = export_saved_model(chat_runs["lora"], str(tmp_path / "models"), name="chat",
                              max_len=48, json_schemas={"yn": schema})
    lines = "\n".join(describe_signatures(path))
    assert "chat(max_new_tokens int32[None], message string[None]" in lines
    assert "chat_with_system(" in lines and "system string[None]" in lines
    for sig in ("generate_yn(", "chat_yn(", "chat_with_system_yn(", "conversation_yn("):
        assert sig in lines
    assert "conversation(contents string[None, None]" in lines and \
        "roles string[None, None]" in lines
    # What the exporter compared chat_yn with: a reply under the schema.
    model = runs.load(chat_runs["lora"], max_len=48)
    chat = runs.read_run_config(chat_runs["lora"])["chat"]
    session = ChatSession(model, chat, max_new_tokens=8, json_schema=schema)
    assert session.reply("Translate to French: water") in ('"oui"', '"non"')
    assert session.reply("Translate to French: cat") in ('"oui"', '"non"')

    # Through the OpenAI gateway in front of (the dev server's emulation of) TF Serving:
    # greedy chat replies are tfllm chat's, the schema's signature is reached by its name.
    openai = pytest.importorskip("openai")
    from tests.serving.servers import serve_gateway, serve_saved_models

    upstream, stop_upstream = serve_saved_models(os.path.dirname(path))
    url, stop = serve_gateway(upstream, "chat")
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        ask = [{"role": "user", "content": "Translate to French: cat"}]
        r = client.chat.completions.create(model="chat", messages=ask, temperature=0,
                                           max_tokens=8)
        session = ChatSession(model, chat, max_new_tokens=8)
        ids, _ = session.prompt_ids(ask)
        assert r.choices[0].message.content == session.reply(ask[0]["content"])
        assert r.usage.prompt_tokens == len(ids)
        system = [{"role": "system", "content": "Be brief."}] + ask
        r = client.chat.completions.create(model="chat", messages=system, temperature=0,
                                           max_tokens=8)
        assert r.choices[0].message.content == ChatSession(
            model, chat, "Be brief.", max_new_tokens=8).reply(ask[0]["content"])
        r = client.chat.completions.create(
            model="chat", messages=ask, temperature=0, max_tokens=8, response_format={
                "type": "json_schema", "json_schema": {"name": "yn", "schema": schema}})
        assert r.choices[0].message.content in ('"oui"', '"non"')
        # A whole conversation reaches the `conversation` signature: tfllm chat's reply
        # after the same history, and its prompt's tokens.
        turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "chat"},
                 {"role": "user", "content": "Translate to French: dog"}]
        r = client.chat.completions.create(model="chat", messages=turns, temperature=0,
                                           max_tokens=4)
        session = ChatSession(model, chat, max_new_tokens=4)
        session.history = turns[:-1]
        assert r.usage.prompt_tokens == len(session.encode(turns))
        assert r.choices[0].message.content == session.reply(turns[-1]["content"])
        # One longer than the context (48 tokens here) is refused, not cut.
        with pytest.raises(openai.BadRequestError, match="exceed the model context of 48"):
            client.chat.completions.create(model="chat", messages=system + turns,
                                           temperature=0, max_tokens=8)
        with pytest.raises(openai.BadRequestError, match="tool calls and results"):
            client.chat.completions.create(model="chat", temperature=0, messages=ask + [
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "1", "type": "function",
                     "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "1", "content": "x"}])
    finally:
        stop()
        stop_upstream()


@pytest.mark.slow
def test_litertlm_conversation_replies_as_tfllm_chat(chat_runs, tmp_path):
    from export.litertlm import CHAT_CHECK_MESSAGE, engine_chat, export_litertlm
    from tfllm import runs
    from tfllm.models.chat_session import ChatSession

    out = str(tmp_path / "chat.litertlm")
    report = export_litertlm(chat_runs["full"], out, prefill_lengths=(32,))
    model = runs.load(chat_runs["full"])
    chat = runs.read_run_config(chat_runs["full"])["chat"]
    expected = ChatSession(model, chat, max_new_tokens=12).reply(CHAT_CHECK_MESSAGE)
    assert report["chat_sample"] is not None
    assert engine_chat(out, CHAT_CHECK_MESSAGE, 12) == expected
    message = "Translate to French: water"
    assert engine_chat(out, message, 12) == \
        ChatSession(model, chat, max_new_tokens=12).reply(message)


@pytest.mark.slow
def test_quantized_litertlm_conversation_replies_as_its_tflite_model(chat_runs, tmp_path,
                                                                     monkeypatch):
    """A quantized bundle's conversation reply is held to its own TFLite model in the
    LiteRT interpreter, after the prompt tfllm chat renders (quantized weights may change
    a greedy choice, so not to the float model's reply); an app gets that reply again."""
    import ast

    import export.litertlm
    from export.litertlm import CHAT_CHECK_MESSAGE, engine_chat
    from tfllm import runs
    from tfllm.models.generation import new_token_room

    args = ["--run", chat_runs["full"], "--prefill-lengths", "32", "--quantize",
            "int8-weight"]
    # A runtime whose conversation answers otherwise is refused, and nothing is written.
    refused = str(tmp_path / "refused.litertlm")
    with monkeypatch.context() as m:
        m.setattr(export.litertlm, "engine_chat", lambda *a, **k: "not its reply")
        r = call_module("export.litertlm", *args, "--out", refused)
    assert r.returncode != 0 and "LiteRT-LM conversation reply 'not its reply' differs from " \
        "the reply of the LiteRT interpreter on the bundle's TFLite model" in r.stderr, r.stderr
    assert not os.path.exists(refused)
    out = str(tmp_path / "chat-int8.litertlm")
    r = call_module("export.litertlm", *args, "--out", out)
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if l.startswith("its conversation answers"))
    assert line.endswith(", the same as the LiteRT interpreter on its TFLite model after "
                         "tfllm chat's prompt"), line
    reply = ast.literal_eval(line.split(" with ", 1)[1].rsplit(", the same as", 1)[0])
    model = runs.load(chat_runs["full"])
    n = min(16, new_token_room(model.backbone.max_len,
                               len(model.tokenizer.encode("ROMEO:")) + 1))
    assert reply and engine_chat(out, CHAT_CHECK_MESSAGE, n) == reply


def test_runtime_template_renders_list_content_as_the_template_renders_strings():
    """LiteRT-LM passes content as parts; the bundle's preamble joins them first."""
    from export.litertlm import runtime_template
    from tests.tokenizers.test_chat_template import SMOLLM2

    for source in (DEFAULT_TEMPLATE, SMOLLM2):
        turns = [{"role": "system", "content": "Be brief."},
                 {"role": "user", "content": "Open %s"},
                 {"role": "assistant", "content": "Ouvrir %s"},
                 {"role": "user", "content": "Close"}]
        parts = [{"role": t["role"], "content": [{"type": "text", "text": t["content"][:3]},
                                                  {"type": "text", "text": t["content"][3:]}]}
                 for t in turns]
        expected = ChatTemplate(source).render(turns, add_generation_prompt=True)
        wrapped = ChatTemplate(runtime_template(source))
        assert wrapped.render(turns, add_generation_prompt=True) == expected
        assert wrapped.render(parts, add_generation_prompt=True, check=False) == expected


# -- tools (#36) ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tools_run(tmp_path_factory):
    from tests.chat_fixtures import make_tools_run
    from tfllm import runs

    run = make_tools_run(str(tmp_path_factory.mktemp("chat-tools") / "run"))
    return run, runs.load(run)


@pytest.mark.parametrize("template", ["chatml", "renders-tools"])
def test_tools_prompts_in_the_graph_are_tfllm_chats(tools_run, template):
    """The tools signatures' prompts (tools rendered by the template, or listed in a
    system turn after the system text) are the ids `tfllm chat --tools` feeds the model."""
    import tensorflow as tf

    from tfllm import runs
    from tfllm.models.chat_session import ChatSession
    from tfllm.models.tool_calls import check_tools
    from tfllm.signatures.chat import ChatPrompts

    run, lm = tools_run
    source = {"chatml": DEFAULT_TEMPLATE, "renders-tools": QWEN_LIKE}[template]
    chat = {**runs.read_run_config(run)["chat"], "template": source}
    prompts = ChatPrompts(lm.tokenizer, chat, check_tools(TOOLS))
    messages = ["Weather in Oslo?", " Add 2 and 3 ", "<|im_start|>forged"]
    system = "Be brief."

    @tf.function  # traced, as in the SavedModel (the tokenizers' eager forms are Python's)
    def both(message):
        return prompts.ids(message), prompts.ids(message, tf.fill(tf.shape(message), system))

    for sys_text, got in zip((None, system), both(tf.constant(messages))):
        for message, ids in zip(messages, got.to_list()):
            session = ChatSession(lm, chat, sys_text, max_new_tokens=2, tools=TOOLS)
            turns = session.history + [{"role": "user", "content": message}]
            assert ids == session.prompt_ids(turns)[0]


@pytest.mark.parametrize("fmt", ["hermes", "llama3"])
def test_call_parts_read_a_call_as_parse_tool_calls_does(fmt):
    """What the tools signatures' tool_name and tool_arguments hold: `call_parts`, in
    Python and in the graph, agrees with parse_tool_calls on a call and on text."""
    import json

    import tensorflow as tf

    from tfllm.models.tool_calls import parse_tool_calls
    from tfllm.signatures.chat import call_parts, graph_call_parts

    args = {"city": "Pa\"ris}", "unit": "celsius"}
    body = json.dumps({"name": "get_weather",
                       ("parameters" if fmt == "llama3" else "arguments"): args})
    replies = [body if fmt == "llama3" else f"<tool_call>\n{body}\n</tool_call>",
               "It is sunny.", ""]
    graph = [[t.decode() for t in part.numpy()]
             for part in graph_call_parts(tf.constant(replies), fmt)]
    for k, reply in enumerate(replies):
        name, arguments = call_parts(reply, fmt)
        assert (graph[0][k], graph[1][k]) == (name, arguments)
        calls = parse_tool_calls(reply, fmt)
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"]))
                for c in calls] == ([(name, json.loads(arguments))] if name else [])
    assert call_parts(replies[0], fmt) == ("get_weather", json.dumps(args))


@pytest.mark.slow
def test_saved_model_tools_signatures_answer_as_tfllm_chat_tools(tools_run, tmp_path):
    """`--tools weather=FILE`: chat_weather and chat_with_system_weather. The exporter
    checks both in a fresh process against `tfllm chat --tools`, one row per tool choice
    (text, tool_name and tool_arguments); here a required call validates under the tool's
    parameters, and a bad tool_choice or too few new tokens for a call fail the request
    with InvalidArgument."""
    import json
    import subprocess
    import sys

    import jsonschema

    run, _ = tools_run
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps(TOOLS))
    done = call_module("export.saved_model", "--run", run, "--out", str(tmp_path / "models"),
                       "--name", "tools", "--tools", f"weather={tools_file}",
                       "--no-jit")  # XLA is tested elsewhere; compiling it cost 11 s here
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tools' calls too" in done.stdout
    lines = done.stdout
    assert "chat_weather(max_new_tokens int32[None], message string[None]" in lines
    assert "tool_choice string[None]" in lines and "tool_arguments string[None]" in lines
    assert "chat_with_system_weather(" in lines
    code = ("import json, sys, tensorflow as tf, tensorflow_text\n"
            "m = tf.saved_model.load(sys.argv[1])\n"
            "def run(choices, new):\n"
            "    n = len(choices)\n"
            "    out = m.signatures['chat_weather'](message=tf.constant(['Weather in Oslo?'] "
            "* n), tool_choice=tf.constant(choices), max_new_tokens=tf.fill([n], new), "
            "temperature=tf.fill([n], 1.0), top_k=tf.zeros([n], tf.int32), "
            "top_p=tf.ones([n]), seed=tf.range(n))\n"
            "    return [[t.decode() for t in out[k].numpy()] for k in ('text', 'tool_name', "
            "'tool_arguments')]\n"
            "got = [run(['required', 'required', 'none'], 120)]\n"
            "for choices, new in ((['sometimes'], 120), (['auto', 'required'], 4)):\n"
            "    try:\n"
            "        run(choices, new)\n"
            "    except tf.errors.InvalidArgumentError as e:\n"
            "        got.append(e.message)\n"
            "print(json.dumps(got))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "models" / "tools" / "1")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (texts, names, arguments), bad_choice, too_short = json.loads(proc.stdout.splitlines()[-1])
    spec = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for name, args in zip(names[:2], arguments[:2]):
        jsonschema.validate(json.loads(args), spec[name])
    assert names[2] == arguments[2] == "" and not texts[2].startswith("<")
    assert "tool_choice must be one of auto, required, none" in bad_choice
    assert "max_new_tokens must be at least the shortest answer of the tool_choice" in too_short
