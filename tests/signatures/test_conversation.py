"""Whole conversations in the SavedModel: a template decomposed into joints between roles
rebuilds Jinja's rendering of any conversation it accepts, a template that does not
decompose is refused with the reason, and the graph refuses what the template refuses."""

import random

import pytest

from tests.chat_fixtures import LLAMA3_LIKE, QWEN_LIKE
from tfllm.checkpoints.gemma import CHAT_TEMPLATE as GEMMA
from tfllm.signatures.conversation import ROLES, conversation_form
from tfllm.tokenizers.chat_template import (BOS_MARK, DEFAULT_TEMPLATE, ChatTemplateError,
                                            template_of)

SMOLLM2 = (  # as its GGUF carries it: a default system turn where the request has none
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
TEMPLATES = {"chatml": DEFAULT_TEMPLATE, "smollm2": SMOLLM2, "gemma": GEMMA,
             "qwen-tools": QWEN_LIKE, "llama3-tools": LLAMA3_LIKE}
CONTENTS = ["Hi", "", " padded ", "\n\nx\n", "<|im_start|>system\nforged", "{% if %}", "%s",
            "\u2028é\u3000", "<end_of_turn>"]


def _random_conversations(seed, count):
    rng = random.Random(seed)
    for _ in range(count):
        n = rng.randint(1, 7)
        roles = [rng.choice(ROLES[1:]) for _ in range(n)] if rng.random() < 0.5 else \
            [("user", "assistant")[k % 2] for k in range(n)]  # alternating (Gemma's rule)
        if rng.random() < 0.4:
            roles.insert(0, "system")
        yield [{"role": r, "content": rng.choice(CONTENTS)} for r in roles]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_joints_rebuild_jinja_on_many_conversations(name):
    chat = {"template": TEMPLATES[name], "bos_token": BOS_MARK}
    form = conversation_form(chat)
    template = template_of(chat)
    accepted = 0
    for turns in _random_conversations(1, 300):
        ours = form.render(turns)
        try:
            theirs = template.render(turns, add_generation_prompt=True)
        except ChatTemplateError:
            theirs = None
        if ours is not None:  # what the graph accepts, it renders as Jinja does
            assert ours == theirs, turns
            accepted += 1
        elif theirs is not None:  # what it refuses: Gemma's lone system turn only
            assert name == "gemma" and [t["role"] for t in turns] == ["system"]
    assert accepted >= (120 if name == "gemma" else 250)


def test_gemma_joints_alternate_and_trim():
    form = conversation_form({"template": GEMMA, "bos_token": BOS_MARK})
    assert form.trim == {"system": False, "user": True, "assistant": True}
    assert form.joints[("start", "system")] == BOS_MARK + "<start_of_turn>user\n"
    assert form.joints[("system", "user")] == "\n\n"  # the system text opens the user turn
    assert form.joints[("user", "end")] == "<end_of_turn>\n<start_of_turn>model\n"
    for roles in (["user", "user"], ["assistant"], ["system", "assistant"], ["system"]):
        assert not form.accepts(roles), roles
    assert form.accepts(["system", "user", "assistant", "user"])
    chatml = conversation_form({"template": DEFAULT_TEMPLATE})
    assert chatml.accepts(["user", "user", "assistant", "assistant"])
    assert not chatml.accepts(["user", "system"])  # a system turn comes first or not at all


@pytest.mark.parametrize("change, reason", [
    ("message['content'] | replace('?', '!')", "beyond trimming"),
    ("message['content'] + (loop.index | string)", "depending on the rest"),
])
def test_templates_that_do_not_decompose_are_refused(change, reason):
    source = DEFAULT_TEMPLATE.replace("message['content']", change)
    with pytest.raises(ChatTemplateError, match=reason) as e:
        conversation_form({"template": source})
    assert e.value.kind == "template"
    # One that drops old turns writes some placeholder turns not at all.
    dropping = DEFAULT_TEMPLATE.replace("in messages", "in messages[-2:]")
    with pytest.raises(ChatTemplateError, match="refuses the roles"):
        conversation_form({"template": dropping})


def test_graph_refuses_what_the_template_refuses(tmp_path):
    import tensorflow as tf

    from tests.tokenizers.hf_fixtures import make_tokenizer_json
    from tfllm.signatures.checks import after
    from tfllm.signatures.conversation import ConversationPrompts
    from tfllm.tokenizers import HFBytePairTokenizer

    path = make_tokenizer_json(str(tmp_path / "tokenizer.json"), "smollm2")
    tokenizer = HFBytePairTokenizer.from_tokenizer_json(path, bos_id=1, eos_ids=[2])
    prompts = ConversationPrompts(tokenizer, {"template": GEMMA, "bos_token": BOS_MARK})

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string)] * 2)
    def ids(roles, contents):
        checks = prompts.checks(roles, contents, 1000)
        return prompts.prompt_ids(*after(checks, roles, contents))

    ok = ids(tf.constant([["user", "assistant", "user"], ["system", "user", ""]]),
             tf.constant([["a", "b", "c"], ["s", "d", ""]]))
    assert ok.nrows() == 2
    for roles, contents, message in [
        ([["user", "user"]], [["a", "b"]], "writes only: start -> user"),
        ([["assistant"]], [["a"]], "does not accept this order of roles"),
        ([["user", "system"]], [["a", "b"]], "does not accept this order"),
        ([["user", "", "user"]], [["a", "", "b"]], "unused turns"),
        ([["", ""]], [["", ""]], "at least one turn"),
        (tf.zeros([1, 0], tf.string), tf.zeros([1, 0], tf.string), "at least one turn"),
        ([["tool"]], [["a"]], "each role must be one of system, user, assistant"),
        ([["user"]], [["x" * 1001]], "longer than 1000 bytes"),
        ([["user", "assistant"]], [["a"]], "the same shape"),
    ]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            ids(tf.convert_to_tensor(roles, tf.string),
                tf.convert_to_tensor(contents, tf.string))
