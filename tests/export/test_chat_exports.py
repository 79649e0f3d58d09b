"""A chat run's exports apply its template: the SavedModel `chat` signatures and the
`.litertlm` conversation answer as `tfllm chat` does (a LoRA run merged on the fly)."""

import pytest

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

    from tfllm.signatures.chat import TRIM_SAMPLE, strip_text

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
    for sig in ("generate_yn(", "chat_yn(", "chat_with_system_yn("):
        assert sig in lines
    # What the exporter compared chat_yn with: a reply under the schema.
    model = runs.load(chat_runs["lora"], max_len=48)
    chat = runs.read_run_config(chat_runs["lora"])["chat"]
    session = ChatSession(model, chat, max_new_tokens=8, json_schema=schema)
    assert session.reply("Translate to French: water") in ('"oui"', '"non"')
    assert session.reply("Translate to French: cat") in ('"oui"', '"non"')


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
