"""The SavedModel `chat` signatures of a run with a chat template (see export.saved_model).

    chat
        inputs  message (string [batch]), and generate's sampling inputs: max_new_tokens,
                temperature, top_k, top_p, seed (one value per row)
        outputs text (string [batch]): the reply, cut at the end of turn;
                num_generated (int32 [batch])
    chat_with_system
        the same with system (string [batch]) before message

The template's single-turn form is applied in the graph: at export the template is
rendered once around sentinel strings, which cuts it into constant pieces, and a request's
prompt is `piece + system + piece + message + piece` (`tf.strings.join`). A template that
does not render a turn by inserting its text as it is (one that trims or inspects the
content) is refused at export, checked on sample messages.
"""

from __future__ import annotations

import tensorflow as tf

from tfllm.chat_template import ChatTemplateError, template_of

_MESSAGE, _SYSTEM = "\ue000tfllm-message\ue000", "\ue000tfllm-system\ue000"
SAMPLE_MESSAGES = ["Translate to French: Open the file", "Hi", "  spaced  {x} %s\n"]


def prompt_pieces(chat: dict) -> dict:
    """{"plain": [before, after], "system": [before, between, after]}: the constant text
    around the message (and the system text) in the template's one-turn prompt.

    Example:
        >>> prompt_pieces({"template": DEFAULT_TEMPLATE})["plain"]  # doctest: +SKIP
        ['<|im_start|>user\\n', '<|im_end|>\\n<|im_start|>assistant\\n']
    """
    template = template_of(chat)
    plain = template.render([{"role": "user", "content": _MESSAGE}], add_generation_prompt=True)
    with_system = template.render([{"role": "system", "content": _SYSTEM},
                                   {"role": "user", "content": _MESSAGE}],
                                  add_generation_prompt=True)
    if plain.count(_MESSAGE) != 1 or with_system.count(_MESSAGE) != 1 or \
            with_system.count(_SYSTEM) != 1 or with_system.index(_SYSTEM) > \
            with_system.index(_MESSAGE):
        raise ChatTemplateError("this chat template does not write a system and a user turn "
                                "as their text in order; the SavedModel cannot apply it in "
                                "the graph")
    before, after = plain.split(_MESSAGE)
    head, rest = with_system.split(_SYSTEM)
    between, tail = rest.split(_MESSAGE)
    pieces = {"plain": [before, after], "system": [head, between, tail]}
    for message in SAMPLE_MESSAGES:  # the template must insert the text unchanged
        for system in (None, "Be brief."):
            turns = ([] if system is None else [{"role": "system", "content": system}]) + \
                [{"role": "user", "content": message}]
            if template.render(turns, add_generation_prompt=True) != \
                    python_prompt(pieces, message, system):
                raise ChatTemplateError(
                    "this chat template changes a turn's text (trims or inspects it); the "
                    "SavedModel cannot apply it in the graph")
    return pieces


def python_prompt(pieces, message, system=None):
    if system is None:
        return pieces["plain"][0] + message + pieces["plain"][1]
    head, between, tail = pieces["system"]
    return head + system + between + message + tail


def chat_signatures(generate, chat: dict) -> dict:
    """{name: (fn, input_signature)} of `chat` and `chat_with_system`, over the
    `generate` endpoint function of `causal_lm_signatures`."""
    pieces = prompt_pieces(chat)
    end_of_turn = [t for t in chat.get("end_of_turn", []) if t]

    def reply(prompt, max_new_tokens, temperature, top_k, top_p, seed):
        out = generate(prompt, max_new_tokens, temperature, top_k, top_p, seed)
        text = out["text"]
        for marker in end_of_turn:  # the text before the first end-of-turn marker
            text = tf.strings.split(text, sep=marker).to_tensor("")[:, 0]
        return {"text": text, "num_generated": out["num_generated"]}

    def chat_plain(message, max_new_tokens, temperature, top_k, top_p, seed):
        before, after = pieces["plain"]
        prompt = tf.strings.join([before, message, after])
        return reply(prompt, max_new_tokens, temperature, top_k, top_p, seed)

    def chat_with_system(message, system, max_new_tokens, temperature, top_k, top_p, seed):
        head, between, tail = pieces["system"]
        prompt = tf.strings.join([head, system, between, message, tail])
        return reply(prompt, max_new_tokens, temperature, top_k, top_p, seed)

    batch = [None]
    sampling = [tf.TensorSpec(batch, tf.int32, name="max_new_tokens"),
                tf.TensorSpec(batch, tf.float32, name="temperature"),
                tf.TensorSpec(batch, tf.int32, name="top_k"),
                tf.TensorSpec(batch, tf.float32, name="top_p"),
                tf.TensorSpec(batch, tf.int32, name="seed")]
    message = tf.TensorSpec(batch, tf.string, name="message")
    system = tf.TensorSpec(batch, tf.string, name="system")
    return {"chat": (chat_plain, [message, *sampling]),
            "chat_with_system": (chat_with_system, [message, system, *sampling])}


def expected_replies(model, chat, messages, max_new_tokens, system=None):
    """`tfllm chat`'s greedy first reply to each message (what the signature must give)."""
    from tfllm.chat import ChatSession

    return [ChatSession(model, chat, system, max_new_tokens).reply(m) for m in messages]
