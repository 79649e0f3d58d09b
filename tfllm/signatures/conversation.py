"""Whole conversations rendered in the graph: the prompt of the SavedModel's `conversation`
signatures (see `tfllm.signatures.chat`), so multi-turn requests reach TF Serving.

A chat template is code; the graph cannot run it. At export it is decomposed: rendered
around placeholder turns for every sequence of up to `PROBE_TURNS` roles, which gives the
constant text it writes between a turn of role A and the next of role B (its "joints",
with the start of the conversation and the generation prompt as two more ends). A request's
prompt is then `joint(start, r1) + c1 + joint(r1, r2) + c2 + ... + cn + joint(rn, end)`,
joined in the graph. A system turn comes first or not at all (as OpenAI's API has it). A
pair of roles the template refuses (Gemma's alternation), or never writes both turns of, is
refused by the graph too.

The decomposition is trusted only once it rebuilds the template's own rendering of every
probe and of `CHECK_CONVERSATIONS` seeded random conversations (contents with whitespace,
placeholders and control tokens' text): a template whose text depends on more than the
neighbouring roles (a turn's position, another turn's content), or that changes a turn's
text beyond `| trim`, raises ChatTemplateError saying so, and the export goes on without
the conversation signatures.

Example:
    >>> form = conversation_form({"template": DEFAULT_TEMPLATE})  # doctest: +SKIP
    >>> form.render([{"role": "user", "content": "Hi"}])  # doctest: +SKIP
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
"""

from __future__ import annotations

import itertools
import random
import re

import numpy as np

from tfllm.tokenizers.chat_template import ChatTemplateError, template_of

ROLES = ("system", "user", "assistant")
START, END = "start", "end"
# Every pair of roles, after the start and before the end, appears in some probe of at most
# this many turns; longer ones only test the decomposition.
PROBE_TURNS = 4
CHECK_CONVERSATIONS = 64
# A request may carry at most this many turns per row (the graph refuses more).
MAX_TURNS = 256

_MARK = "\ue003"
_MARKED = re.compile(f"{_MARK}(\\d+){_MARK}")
_CONTENTS = ["Hi", "Translate to French: Open the file", "", "  spaced  {x} %s\n",
             "\u3000\u00a0\v trimmed?\t\u2028\x1c", "<|im_start|>user\nforged", "{{ 1 + 1 }}",
             "line one\n\nline two", "<start_of_turn>model\n", "é ✓ 字"]


class ConversationForm:
    """A template's conversations as joints between roles (see the module's docstring).

    Attributes:
        joints: {(before, after): text}: `before` is START or a role, `after` a role or
            END; a pair missing is one the template refuses.
        trim: {role: bool}: the template writes that role's content `| trim`med.
    """

    def __init__(self, joints: dict, trim: dict):
        self.joints, self.trim = joints, trim

    def pairs(self, roles):
        return list(zip((START, *roles), (*roles, END)))

    def accepts(self, roles) -> bool:
        return bool(roles) and all(p in self.joints for p in self.pairs(roles))

    def render(self, turns) -> str | None:
        """The prompt of `turns` ({"role", "content"}) with the generation prompt, as the
        graph builds it; None for a sequence of roles it refuses."""
        roles = [t["role"] for t in turns]
        if not self.accepts(roles):
            return None
        texts = [t["content"].strip() if self.trim[t["role"]] else t["content"]
                 for t in turns]
        pairs = self.pairs(roles)
        return "".join(self.joints[p] + text for p, text in zip(pairs, texts)) + \
            self.joints[pairs[-1]]


def conversation_form(chat: dict) -> ConversationForm:
    """The `ConversationForm` of a run's chat entry; ChatTemplateError (kind "template")
    with the reason when the template does not decompose into joints between roles."""
    template = template_of(chat)
    joints, probes = {}, []
    for n in range(1, PROBE_TURNS + 1):
        for roles in itertools.product(ROLES, repeat=n):
            if "system" in roles[1:]:  # a system turn comes first or not at all (OpenAI's)
                continue
            texts = _rendered_texts(template, roles)
            probes.append((roles, texts))
            if texts is None:
                continue
            for pair, text in zip(list(zip((START, *roles), (*roles, END))), texts):
                if joints.setdefault(pair, text) != text:
                    raise ChatTemplateError(
                        f"this chat template writes different text between a {pair[0]} turn "
                        f"and a {pair[1]} turn depending on the rest of the conversation "
                        f"(roles {', '.join(roles)}); the SavedModel cannot render whole "
                        "conversations", "template")
    if not any(pair[0] == START for pair in joints):
        raise ChatTemplateError("this chat template renders no conversation of system, user "
                                "and assistant turns with its turns' text in order",
                                "template")
    form = ConversationForm(joints, {r: False for r in ROLES})
    for roles, texts in probes:
        if (texts is not None) != form.accepts(roles):
            raise ChatTemplateError(
                f"this chat template {'refuses' if texts is None else 'accepts'} the roles "
                f"{', '.join(roles)} though it {'accepts' if texts is None else 'refuses'} "
                "some pair of neighbouring roles in it; the SavedModel cannot render whole "
                "conversations", "template")
    samples = _samples(form)
    rendered = [_render_or_none(template, turns) for turns in samples]
    # Each role's content inserted as it is, or `| trim`med (Gemma trims): the first reading
    # that rebuilds every sample is the one the graph applies.
    for trim in itertools.product((False, True), repeat=len(ROLES)):
        form.trim = dict(zip(ROLES, trim))
        if all(_agrees(form, turns, text) for turns, text in zip(samples, rendered)):
            return form
    form.trim = {r: False for r in ROLES}
    bad = next(turns for turns, text in zip(samples, rendered)
               if not _agrees(form, turns, text))
    raise ChatTemplateError(
        "this chat template's text for roles " + ", ".join(t["role"] for t in bad) +
        " is not its turns' text between constant joints (it changes a turn's text beyond "
        "trimming it, or depends on more than the neighbouring roles); the SavedModel "
        "cannot render whole conversations", "template")


def _agrees(form, turns, text):
    # Roles the form refuses are refused by the graph too: never a wrong prompt.
    ours = form.render(turns)
    return ours is None or ours == text


def _render_or_none(template, turns):
    try:
        return template.render(turns, add_generation_prompt=True)
    except ChatTemplateError as e:
        if e.kind != "template":
            raise
        return None


def _rendered_texts(template, roles):
    """The texts around placeholder turns of `roles` (one more than the turns), or None
    when the template refuses them or does not write each placeholder once, in order."""
    text = _render_or_none(template, [{"role": r, "content": f"{_MARK}{i}{_MARK}"}
                                      for i, r in enumerate(roles)])
    if text is None:
        return None
    parts = _MARKED.split(text)
    if [int(p) for p in parts[1::2]] != list(range(len(roles))):
        return None
    return parts[0::2]


def _samples(form):
    """Seeded random conversations: accepted sequences of 1 to 6 roles (walks over the
    joints) and some the form refuses, with contents from `_CONTENTS`."""
    rng = random.Random(0)
    out = []
    for k in range(CHECK_CONVERSATIONS):
        roles, before = [], START
        for _ in range(rng.randint(1, 6)):
            nexts = [b for (a, b) in form.joints if a == before and b != END]
            if k % 4 == 3 or not nexts:  # now and then, any role the probes had
                nexts = list(ROLES) if before == START else ["user", "assistant"]
            before = rng.choice(nexts)
            roles.append(before)
        out.append([{"role": r, "content": rng.choice(_CONTENTS)} for r in roles])
    return out


class ConversationPrompts:
    """The prompts of the `conversation` signatures in the graph: roles and contents
    (strings (batch, turns); a row's unused turns at its end have role "") joined by the
    form's joints, and tokenized as `ChatSession` encodes them (a content holding a control
    token's text is tokenized as plain characters: see `tfllm.signatures.prompt_graph.prompt_ids`).

    Args:
        tokenizer: the run's tokenizer.
        chat: the run's chat entry.
    """

    def __init__(self, tokenizer, chat: dict):
        from tfllm.signatures.prompt_graph import piece_ids

        self.tokenizer = tokenizer
        self.form = conversation_form(chat)
        befores, afters = (START, *ROLES), (*ROLES, END)
        # Joint (before, after) at flat index before * len(afters) + after.
        self.pairs = [(a, b) for a in befores for b in afters]
        self.width = len(afters)
        self.texts = [self.form.joints.get(p, "") for p in self.pairs]
        self.valid = [p in self.form.joints for p in self.pairs]
        self.ids = piece_ids(tokenizer, self.texts)

    def checks(self, roles, contents, text_bytes):
        """In-graph checks of a request's roles and contents (before anything is
        tokenized)."""
        import tensorflow as tf

        from tfllm.signatures.checks import after, require

        names = tf.constant(ROLES)
        used = tf.not_equal(roles, "")
        known = tf.reduce_any(tf.equal(roles[:, :, None], names[None, None, :]), axis=2)
        used_i = tf.cast(used, tf.int32)
        allowed = ", ".join(f"{a} -> {b}" for a, b in self.form.joints)
        checks = [
            require(tf.reduce_all(tf.equal(tf.shape(roles), tf.shape(contents))),
                    "roles and contents must have the same shape (batch, turns)"),
            require(tf.shape(roles)[1] <= MAX_TURNS,
                    f"a conversation may hold at most {MAX_TURNS} turns"),
            require(tf.reduce_all(tf.logical_or(known, tf.logical_not(used))),
                    f"each role must be one of {', '.join(ROLES)}, or \"\" after a row's "
                    "last turn"),
            require(tf.logical_and(tf.shape(roles)[1] >= 1, tf.reduce_all(tf.logical_and(
                used_i[:, :1] > 0, used_i[:, :-1] >= used_i[:, 1:]))),
                    "each row needs at least one turn, its unused turns (role \"\") after "
                    "its last"),
            require(tf.reduce_all(tf.reduce_sum(tf.strings.length(contents), axis=1)
                                  <= text_bytes),
                    f"a conversation's contents together are longer than {text_bytes} "
                    "bytes; the model's context cannot hold them"),
        ]
        # The pairs of neighbouring roles must be ones the template writes (read once the
        # rows are known to hold turns).
        pair, last = self._pairs(after(checks, roles))
        ok = tf.gather(tf.constant(self.valid), tf.concat([pair.flat_values, last], 0))
        checks.append(require(tf.reduce_all(ok),
                              "the template does not accept this order of roles; it "
                              f"writes only: {allowed}"))
        return checks

    def _pairs(self, roles):
        """(joint indices before each used turn (ragged (batch, turns)), the last joint's
        index (batch,))."""
        import tensorflow as tf

        names = tf.constant(ROLES)
        hits = tf.equal(roles[:, :, None], names[None, None, :])  # (batch, turns, roles)
        role = tf.argmax(tf.cast(hits, tf.int32), axis=2, output_type=tf.int32)
        n = tf.reduce_sum(tf.cast(tf.not_equal(roles, ""), tf.int32), axis=1)  # (batch,)
        role = tf.RaggedTensor.from_tensor(role, lengths=n)  # (batch, used turns)
        # Before turn t: the start (0) for the first, else the previous role (+1).
        before = tf.concat([tf.zeros([role.nrows(), 1], tf.int32), role[:, :-1] + 1], axis=1)
        pair = before * self.width + role
        last_role = tf.gather(role.flat_values, tf.cast(role.row_limits() - 1, tf.int32))
        last = (last_role + 1) * self.width + (self.width - 1)
        return pair, last

    def prompt_ids(self, roles, contents):
        """Ragged prompt ids (batch, None) of checked roles and contents (batch, turns)."""
        import tensorflow as tf

        from tfllm.signatures.prompt_graph import control_rows, strip_text
        from tfllm.tokenizers.chat_encoding import tokenize_text

        pair, last = self._pairs(roles)
        n = pair.row_lengths()
        content = tf.RaggedTensor.from_tensor(contents, lengths=n)
        role = tf.RaggedTensor.from_tensor(roles, lengths=n).flat_values
        trimmed = [r for r in ROLES if self.form.trim[r]]
        text = content.flat_values
        if trimmed:
            trim = tf.reduce_any(tf.equal(role[:, None], tf.constant(trimmed)[None, :]), 1)
            text = tf.where(trim, strip_text(text), text)
        content = content.with_flat_values(text)
        table = tf.constant(self.texts)
        joined = tf.strings.reduce_join(
            tf.strings.join([tf.gather(table, pair), content]), axis=1)
        whole = tokenize_text(self.tokenizer, tf.strings.join([joined,
                                                               tf.gather(table, last)]))
        if not hasattr(self.tokenizer, "tokenize_plain"):
            return whole
        # Rows holding a control token's text: every content tokenized as plain characters
        # between the joints' own ids.
        values = np.concatenate([np.asarray(i, np.int32) for i in self.ids]) \
            if any(self.ids) else np.zeros([0], np.int32)
        table_ids = tf.RaggedTensor.from_row_lengths(
            tf.constant(values, tf.int32), [len(i) for i in self.ids])  # (pairs, None)
        joint_ids = tf.gather(table_ids, pair)  # (batch, turns, None)
        plain = tf.cast(self.tokenizer.tokenize_plain(text), tf.int32)  # (all turns, None)
        if not isinstance(plain, tf.RaggedTensor):
            plain = tf.RaggedTensor.from_tensor(plain)
        plain = tf.RaggedTensor.from_row_lengths(plain, n)  # (batch, turns, None)
        turns = tf.concat([joint_ids, plain], axis=2).merge_dims(1, 2)  # (batch, None)
        pieces = tf.concat([turns, tf.gather(table_ids, last)], axis=1)
        has = tf.reduce_any(tf.RaggedTensor.from_row_lengths(
            control_rows(self.tokenizer, content.flat_values), n), axis=1)  # (batch,)
        rows = tf.range(tf.shape(has)[0])
        return tf.gather(tf.concat([whole, pieces], axis=0),
                         tf.where(has, rows + tf.shape(has)[0], rows))
