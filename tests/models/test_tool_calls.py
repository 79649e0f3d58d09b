"""Tool calling (#36): tools rendered by the template (or listed in a system turn where it
does not), each reply one call of one tool in the family's format, its arguments valid
under the tool's schema (`jsonschema`), parsed into OpenAI tool_calls (hermes, Llama 3 and
FunctionGemma formats); bad tools refused in one line."""

import json
import re

import jsonschema
import pytest

import tfllm
from tests.chat_fixtures import LLAMA3_LIKE, QWEN_LIKE, TOOLS
from tests.conftest import call_cli, call_module
from tfllm.models.tool_calls import (ToolError, call_format, call_regex, check_tools,
                                     choice_regex, parse_tool_calls)
from tfllm.tokenizers.chat_template import DEFAULT_TEMPLATE, ChatTemplate

@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A random tiny Llama with a byte-level BPE vocabulary (400 tokens)."""
    from tests.checkpoints.llama_fixtures import write_checkpoint
    from tfllm.checkpoints import import_hf

    d = tmp_path_factory.mktemp("tools")
    run = import_hf(write_checkpoint(str(d / "ckpt"), "llama"), str(d / "run"), max_len=1536)
    return run, tfllm.load(run)


def _valid(call):
    spec = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    assert call["type"] == "function" and call["function"]["name"] in spec
    jsonschema.validate(json.loads(call["function"]["arguments"]),
                        spec[call["function"]["name"]])


def test_parse_each_format():
    hermes = ('I will call.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n'
              '</tool_call>\n<tool_call>{"name": "get_weather", "arguments": {"city": '
              '"Pa\\"ris", "unit": "celsius"}}</tool_call>')
    calls = parse_tool_calls(hermes, "hermes")
    assert [c["function"]["name"] for c in calls] == ["add", "get_weather"]
    assert json.loads(calls[1]["function"]["arguments"]) == {"city": 'Pa"ris', "unit": "celsius"}
    assert [c["id"] for c in calls] == ["call_0", "call_1"]
    llama3 = '<|python_tag|>{"name": "add", "parameters": {"a": 4, "b": 5}}'
    (call,) = parse_tool_calls(llama3, "llama3")
    assert call["function"] == {"name": "add", "arguments": '{"a": 4, "b": 5}'}
    gemma = ("<start_function_call>call:get_weather{city:<escape>Lon{d}on, \"UK\"<escape>,"
             "days:3,opts:{metric:true,tags:[<escape>a<escape>,-2.5e1]}}<end_function_call>")
    (call,) = parse_tool_calls(gemma, "gemma")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {
        "city": 'Lon{d}on, "UK"', "days": 3, "opts": {"metric": True, "tags": ["a", -25.0]}}
    assert parse_tool_calls("just text", "hermes") == parse_tool_calls("text", "llama3") == \
        parse_tool_calls("text", "gemma") == []
    with pytest.raises(ToolError, match="cannot read FunctionGemma's arguments"):
        parse_tool_calls("<start_function_call>call:f{a:<escape>x}<end_function_call>",
                         "gemma")
    with pytest.raises(ToolError, match="not valid JSON"):
        parse_tool_calls("<tool_call>{oops</tool_call>", "hermes")


def test_tools_whose_regex_nesting_multiplies_are_refused():
    """A request's tools are untrusted: a parameter nested 18 levels deep, each level
    optional, writes a 19 MB regex (2^depth) and 50 levels all the memory; it is built in
    the compile's child process and refused by its length."""
    deep = {"type": "string"}
    for _ in range(18):
        deep = {"type": "array", "items": deep, "maxItems": 1}
    tools = check_tools([{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"x": deep}}}}])
    with pytest.raises(ToolError, match=r"the tools' parameters cannot be used: the JSON schema "
                                        r"becomes a regular expression of [\d,]+ characters"):
        call_regex(tools, "hermes")


def test_call_format_and_regex():
    assert call_format(QWEN_LIKE) == "hermes" and call_format(DEFAULT_TEMPLATE) == "hermes"
    assert call_format(LLAMA3_LIKE) == "llama3"
    assert call_format("{{ '<start_function_call>' }}" + DEFAULT_TEMPLATE) == "gemma"
    tools = check_tools(TOOLS)
    regex = call_regex(tools, "hermes")
    assert re.fullmatch(regex, '<tool_call>\n{"name":"add","arguments":{"a":1,"b":-2}}\n'
                               '</tool_call>')
    assert not re.fullmatch(regex, '<tool_call>\n{"name":"add","arguments":{"a":1}}\n'
                                   '</tool_call>')  # b is required
    assert not re.fullmatch(regex, '<tool_call>\n{"name":"sub","arguments":{"a":1,"b":2}}\n'
                                   '</tool_call>')  # not a tool
    assert re.fullmatch(call_regex(tools, "llama3"),
                        '{"name":"add","parameters":{"a":1,"b":2}}')


def _gemma_call(name, args):
    return f"<start_function_call>call:{name}{{{args}}}<end_function_call>"


def test_functiongemma_calls_are_constrained_to_the_schemas():
    """FunctionGemma's syntax (not JSON) as a regex of the tools: what it admits parses into
    arguments the schema validates; what the schema forbids it does not admit."""
    E = "<escape>"
    params = {"type": "object", "properties": {
        "q": {"type": "string", "minLength": 1},
        "n": {"type": "integer"}, "w": {"type": ["number", "null"]},
        "tags": {"type": "array", "items": {"enum": ["a b", 3, True]}, "maxItems": 2},
        "opt": {"type": "object", "properties": {"on": {"type": "boolean"}},
                "required": ["on"]}}, "required": ["q"]}
    tools = check_tools(TOOLS + [{"type": "function", "function": {"name": "find",
                                                                   "parameters": params}}])
    regex = call_regex(tools, "gemma")
    admitted = [
        _gemma_call("add", "a:1,b:-2"),
        _gemma_call("get_weather", f"city:{E}Lon, \"UK\"{E},unit:{E}fahrenheit{E}"),
        _gemma_call("find", f"q:{E}x{E}"),
        _gemma_call("find", f"q:{E}x{E},w:null,opt:{{on:false}}"),
        _gemma_call("find", f"q:{E}x\ny{E},n:0,w:-2.5e3,tags:[{E}a b{E},true]"),
        _gemma_call("find", f"q:{E}x{E},tags:[]"),
    ]
    for text in admitted:
        assert re.fullmatch(regex, text), text
        (call,) = parse_tool_calls(text, "gemma")
        name = call["function"]["name"]
        schema = params if name == "find" else \
            {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}[name]
        jsonschema.validate(json.loads(call["function"]["arguments"]), schema)
    refused = [
        _gemma_call("add", "a:1"),  # b is required
        _gemma_call("add", "b:2,a:1"),  # declared order
        _gemma_call("sub", "a:1,b:2"),  # not a tool
        _gemma_call("get_weather", f"city:{E}Copenhagen!{E},unit:{E}celsius{E}"),  # > 10
        _gemma_call("find", f"q:{E}{E}"),  # minLength 1
        _gemma_call("find", f"n:1,q:{E}x{E}"),
        _gemma_call("find", f"q:{E}x{E},n:1.5"),  # not an integer
        _gemma_call("find", f"q:{E}x{E},tags:[3,3,3]"),  # maxItems 2
        _gemma_call("find", f"q:{E}x{E},opt:{{}}"),  # opt.on is required
        _gemma_call("find", f"q:{E}x{E},,n:1"),
        _gemma_call("find", f"q:{E}x{E},"),
    ]
    for text in refused:
        assert not re.fullmatch(regex, text), text
    auto = choice_regex(tools, "gemma", "auto")
    assert re.fullmatch(auto, admitted[0]) and re.fullmatch(auto, "Hello.")
    assert not re.fullmatch(auto, "<b>")


@pytest.mark.parametrize("parameters, message", [
    ({"type": "object", "properties": {"q": {"type": "string", "pattern": "a+"}}},
     "tool 'f' parameters/q: the JSON schema keyword 'pattern' is not supported in "
     "FunctionGemma's call format"),
    ({"type": "object", "properties": {"q": {"enum": ["<b>"]}}}, "holds '<'"),
    ({"type": "object", "properties": {"a b": {"type": "integer"}}},
     "the property name 'a b' cannot be written bare"),
    ({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(9)}},
     "9 optional properties (at most 8"),
], ids=["pattern", "angle-bracket", "key", "optional"])
def test_functiongemma_constraints_refuse_what_they_cannot_hold(parameters, message):
    tools = check_tools([{"type": "function", "function": {"name": "f",
                                                           "parameters": parameters}}])
    assert call_regex(tools, "hermes")  # the JSON formats take them
    with pytest.raises(ToolError, match=re.escape(message)):
        call_regex(tools, "gemma")


@pytest.mark.parametrize("tools, message", [
    ({"name": "x"}, "non-empty list of function specs"),
    ([], "non-empty list"),
    ([{"type": "retrieval"}], "tool 1 is not a function spec"),
    ([{"type": "function", "function": {"name": "bad name"}}], "is not a function name"),
    ([TOOLS[1], TOOLS[1]], "'add' is given twice"),
    ([{"name": "f", "parameters": {"type": "object", "not": {}}}],
     "tool 'f': its parameters: the JSON schema keyword 'not'"),
], ids=["not-a-list", "empty", "type", "name", "twice", "keyword"])
def test_bad_tools_are_refused(tools, message):
    with pytest.raises(ToolError, match=re.escape(message)):
        check_tools(tools)


def test_the_template_renders_the_tools_it_is_given():
    turns = [{"role": "user", "content": "Hi"}]
    with_tools = ChatTemplate(QWEN_LIKE, tools=check_tools(TOOLS)).render(turns, True)
    assert with_tools.startswith("<|im_start|>system\n# Tools\n<tools>\n{")
    assert '"name": "get_weather"' in with_tools
    assert ChatTemplate(QWEN_LIKE).render(turns, True) == \
        ChatTemplate(DEFAULT_TEMPLATE).render(turns, True)


# A ChatML template that FunctionGemma's call format is recognised in (call_format).
GEMMA_CALLS = "{#<start_function_call>#}" + DEFAULT_TEMPLATE


@pytest.mark.parametrize("template", [DEFAULT_TEMPLATE, QWEN_LIKE, LLAMA3_LIKE, GEMMA_CALLS],
                         ids=["chatml-system-turn", "renders-tools", "llama3",
                              "functiongemma"])
def test_every_reply_is_a_valid_call(llama, template):
    from tfllm.models.chat_session import ChatSession

    _, lm = llama
    chat = {"template": template, "end_of_turn": ["<|im_end|>"]}
    opener = {LLAMA3_LIKE: "{", GEMMA_CALLS: "<start_function_call>call:"}.get(
        template, "<tool_call>")
    for kwargs in ({}, {"temperature": 1.0, "seed": 3}):
        session = ChatSession(lm, chat, max_new_tokens=160, tools=TOOLS,
                              tool_choice="required", **kwargs)
        for message in ("What is the weather in Paris?", "Add 2 and 3"):
            reply = session.reply(message)
            (call,) = session.last_tool_calls
            _valid(call)
            assert reply.startswith(opener), reply
    if template == DEFAULT_TEMPLATE:  # a template without tools: a system turn lists them
        assert session.history[0]["role"] == "system"
        assert '"name": "add"' in session.history[0]["content"]


def test_auto_replies_are_a_call_or_text_and_results_go_back(llama):
    """tool_choice="auto": each reply a valid call or text that does not open like one; the
    results of a call go back as a <tool_response> turn and the model answers again."""
    from tfllm.models.chat_session import ChatSession

    _, lm = llama
    chat = {"template": DEFAULT_TEMPLATE, "end_of_turn": ["<|im_end|>"]}
    for seed in range(2):
        session = ChatSession(lm, chat, max_new_tokens=80, tools=TOOLS, temperature=1.0,
                              seed=seed)
        reply = session.reply("Weather in Oslo?")
        if session.last_tool_calls:
            (call,) = session.last_tool_calls
            _valid(call)
        else:
            assert not reply.startswith("<")
        "".join(session.send_tool_results(['{"temp": -3}']))
        assert session.history[-2] == {
            "role": "user", "content": '<tool_response>\n{"temp": -3}\n</tool_response>'}
    # What "auto" allows: a call, or text that does not open as one.
    auto = choice_regex(check_tools(TOOLS), "hermes", "auto")
    assert re.fullmatch(auto, '<tool_call>\n{"name":"add","arguments":{"a":1,"b":2}}\n'
                              '</tool_call>')
    assert re.fullmatch(auto, "It is cold.\n<b>") and not re.fullmatch(auto, "<b>")
    with pytest.raises(ToolError, match="tool_choice must be one of auto, required"):
        ChatSession(lm, chat, tools=TOOLS, tool_choice="any")


def test_chat_cli_prints_the_calls(llama, tmp_path):
    run, _ = llama
    path = tmp_path / "tools.json"
    path.write_text(json.dumps(TOOLS))
    done = call_cli(["chat", "--run", run, "--template", "chatml", "--tools", str(path),
                     "--tool-choice", "required", "--message", "Weather in Oslo?",
                     "--max-new-tokens", "80"])
    assert done.returncode == 0, done.stderr[-2000:]
    reply = json.loads(done.stdout.strip())
    (call,) = reply["tool_calls"]
    assert reply["content"] is None
    _valid(call)
    path.write_text('[{"type": "function", "function": {"name": "a b"}}]')
    bad = call_cli(["chat", "--run", run, "--template", "chatml", "--tools", str(path),
                    "--message", "x"])
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "is not a function name" in bad.stderr


def test_conversations_with_calls_and_results_train_on_the_calls(tmp_path):
    """JSONL rows in OpenAI's form (a row's tools, an assistant's tool_calls, tool results)
    become the hermes text ChatSession(tools=) reads and writes; the loss mask covers the
    assistant's call and its final answer, never the tool's result."""
    from tfllm.tasks.chat.data import ChatData, encode_chat
    from tfllm.tokenizers import SentencePieceTokenizer

    call = {"id": "call_0", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Oslo", "unit": "celsius"}'}}
    row = {"tools": TOOLS, "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_0", "content": '{"temp": -3}'},
        {"role": "assistant", "content": "It is -3 C in Oslo."}]}
    bad = {"messages": [{"role": "user", "content": "x"},
                        {"role": "assistant", "tool_calls": [{"function": {}}]}]}
    path = tmp_path / "tools.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [row] * 12 + [bad]) + "\n")
    data = ChatData(f"jsonl:{path}")
    assert data.skipped["bad_tool"] == 1
    chat = data.all[0]
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user", "assistant"]
    assert '"name": "get_weather"' in chat[0]["content"]  # the tools, listed
    assert parse_tool_calls(chat[2]["content"], "hermes")[0]["function"] == call["function"]
    assert chat[3]["content"] == '<tool_response>\n{"temp": -3}\n</tool_response>'
    template = ChatTemplate(DEFAULT_TEMPLATE)
    tokenizer = SentencePieceTokenizer.train(
        [template.render(chat)] * 4, "bpe", 400, user_symbols=["<|im_start|>", "<|im_end|>"])
    ids, mask = encode_chat(chat, template, tokenizer)
    trained = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert "<tool_call>" in trained and "It is -3 C in Oslo." in trained
    assert "temp" not in trained and "Weather in Oslo?" not in trained


def test_call_text_reads_back_in_each_format():
    from tfllm.models.tool_calls import call_text

    args = {"city": 'Lon{d}on, "UK"', "days": 3, "opts": {"metric": True, "tags": ["a", -2.5]},
            "none": None}
    for fmt in ("hermes", "llama3", "gemma"):
        (call,) = parse_tool_calls(call_text("get_weather", json.dumps(args), fmt), fmt)
        assert call["function"]["name"] == "get_weather"
        assert json.loads(call["function"]["arguments"]) == args, fmt
    with pytest.raises(ToolError, match="FunctionGemma's strings cannot hold '<escape>'"):
        call_text("f", {"q": "a<escape>b"}, "gemma")
    # A client's arguments are JSON text: a lone surrogate in them is no text to render.
    with pytest.raises(ToolError, match=r"not valid JSON: a string holds the lone UTF-16 "
                                        r"surrogate \\ud800"):
        call_text("f", '{"q": "a\\ud800"}', "hermes")


@pytest.mark.parametrize("template", [DEFAULT_TEMPLATE, QWEN_LIKE, LLAMA3_LIKE, GEMMA_CALLS],
                         ids=["chatml-listed", "qwen-rendered", "llama3-rendered",
                              "functiongemma"])
def test_tool_rows_are_tuned_on_what_chat_session_renders_and_reads(llama, tmp_path, template):
    """A fine-tuning row with tools is written as ChatSession(tools=) has the same
    conversation: the text before the call is the session's prompt, character for
    character (tools rendered by a template that renders them, else listed in a system
    turn), and the call is in the format the session constrains its replies to and parses
    (hermes, Llama 3's JSON, FunctionGemma's). A Llama 3 turn of two calls is refused."""
    from tfllm.models.chat_session import ChatSession
    from tfllm.models.tool_calls import plain_turns
    from tfllm.tasks.chat.data import ChatData

    _, lm = llama
    call = {"id": "call_0", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Oslo", "unit": "celsius"}'}}
    user = {"role": "user", "content": "Weather in Oslo?"}
    row = {"tools": TOOLS, "messages": [
        user, {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_0", "content": '{"temp": -3}'},
        {"role": "assistant", "content": "It is -3 C in Oslo."}]}
    two = {"tools": TOOLS, "messages": [
        user, {"role": "assistant", "content": None, "tool_calls": [call, call]}]}
    path = tmp_path / "tools.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [row] * 12 + [two]) + "\n")
    data = ChatData(f"jsonl:{path}", template=template)
    assert data.skipped["bad_tool"] == (1 if template == LLAMA3_LIKE else 0)
    pieces = ChatTemplate(template).segments(data.all[0])
    first_reply = next(n for n, (_, reply) in enumerate(pieces) if reply)
    session = ChatSession(lm, {"template": template}, tools=TOOLS, max_new_tokens=8)
    prompt = session.template.render(session.history + [user], add_generation_prompt=True)
    assert "".join(text for text, _ in pieces[:first_reply]) == prompt
    reply = pieces[first_reply][0].split("<|im_end|>")[0]
    assert re.fullmatch(choice_regex(session.tools, session.tool_format), reply), reply
    (parsed,) = parse_tool_calls(reply, session.tool_format)
    assert parsed["function"]["name"] == "get_weather"
    assert json.loads(parsed["function"]["arguments"]) == {"city": "Oslo", "unit": "celsius"}
    # The tool's result: the user turn ChatSession.send_tool_results sends.
    sent = plain_turns([{"role": "tool", "content": '{"temp": -3}'}])[0]
    assert sent["role"] == "user" and sent["content"] in pieces[first_reply + 1][0]


def test_saved_model_tool_signatures_refuse_functiongemma_calls():
    """Their tool_arguments output is JSON text the graph cuts out of a JSON call; FunctionGemma
    writes none, so its template is refused by name before anything is compiled."""
    from tfllm.signatures.causal import stored_tool_sets

    with pytest.raises(ToolError, match="tools 'w': the template's gemma call format is not "
                                        "JSON"):
        stored_tool_sets(None, {"template": GEMMA_CALLS}, {"w": TOOLS})


@pytest.mark.parametrize("option, message", [
    ("w={missing}", "--tools w={missing}: cannot read it"),
    ("w={bad}", "--tools w={bad}: tool 1: name None is not a function name"),
    ("w={good}", "--tools w= needs a chat template"),
], ids=["missing", "not-tools", "no-template"])
def test_export_refuses_bad_tools_options(llama, tmp_path, option, message):
    """One line and status 2 before anything is written: a file that cannot be read or
    holds no function specs, or tools for a run without a chat template."""
    run, _ = llama
    paths = {"missing": tmp_path / "nope.json", "bad": tmp_path / "bad.json",
             "good": tmp_path / "tools.json"}
    paths["bad"].write_text('[{"type": "function"}]')
    paths["good"].write_text(json.dumps(TOOLS))
    out = tmp_path / "models"
    done = call_module("export.saved_model", "--run", run, "--out", str(out), "--tools",
                       option.format(**paths))
    assert done.returncode == 2, done.stdout[-2000:]
    assert message.format(**paths) in done.stderr.strip().splitlines()[-1], done.stderr
    assert "Traceback" not in done.stderr and not out.exists()
