"""Gemma through the tasks (#35): a tiny imported Gemma 3 (sliding-window and global
layers, post-norms, scaled embeddings, a SentencePiece tokenizer that adds BOS, the family's
chat template) fine-tuned for chat with LoRA, merged, talked to, and fine-tuned into a
classifier. The family changes nothing in the tasks: these check that its parts (the
`<start_of_turn>` template and `<end_of_turn>` stop, BOS, the window) reach them."""

import os

import numpy as np
import pytest

from tests.chat_fixtures import write_pairs_tsv
from tests.checkpoints.gemma_fixtures import import_tiny_gemma3
from tests.conftest import FAST_FINETUNE, labeled_rows, call_cli, write_tsv

WINDOW = 6


@pytest.fixture(scope="module")
def gemma_base(tmp_path_factory):
    return import_tiny_gemma3(str(tmp_path_factory.mktemp("gemma")), WINDOW, 160)


@pytest.fixture(scope="module")
def gemma_lora(gemma_base, tmp_path_factory):
    from tfllm.tasks.chat.finetune import ChatSettings, finetune_chat

    root = tmp_path_factory.mktemp("gemma-chat")
    data = write_pairs_tsv(str(root / "pairs.tsv"))
    out = str(root / "lora")
    result = finetune_chat(out, data, gemma_base,
                           ChatSettings(steps=60, eval_interval=20, batch_size=16, lr=1e-2,
                                        lora_rank=2),
                           prompt_column="en", response_column="fr",
                           prompt_template="Translate to French: {en}", verbose=0)
    return out, result


def _ids(model):
    # Longer than the window, so the sliding layers' masks matter.
    return np.array([model.tokenizer.encode("Translate to French: the big red house")],
                    np.int32)


@pytest.mark.slow
def test_chat_lora_learns_in_gemma_turns_and_merges_exactly(gemma_base, gemma_lora, tmp_path):
    from tfllm import runs
    from tfllm.models import lora
    from tfllm.models.chat_session import ChatSession
    from tfllm.training import read_metrics

    out, result = gemma_lora
    config = runs.read_run_config(out)
    assert "<end_of_turn>" in config["chat"]["end_of_turn"]
    assert "<start_of_turn>" in config["chat"]["template"]
    records = read_metrics(out)
    assert records[-1]["val_loss"] < 0.8 * records[0]["val_loss"], records
    base = runs.load(gemma_base)
    adapted = runs.load(out, adapter="keep")
    assert adapted.config.attention_types == base.config.attention_types
    assert adapted.config.sliding_window == WINDOW
    layers = lora.adapter_layers(adapted)
    assert len(layers) == 3 * 5 and all(np.abs(l.lora_kernel_b.numpy()).max() > 0
                                        for l in layers)
    base_weights = {w.path: w.numpy() for w in base.weights}
    for w in adapted.weights:
        if "lora_kernel" not in w.path:
            np.testing.assert_array_equal(w.numpy(), base_weights[w.path], err_msg=w.path)
    ids = _ids(base)
    assert ids.shape[1] > WINDOW
    merged = runs.load(out)
    assert np.abs(merged(ids).numpy() - adapted(ids).numpy()).max() <= 1e-5
    assert np.abs(merged(ids).numpy() - base(ids).numpy()).max() > 1e-3
    # `tfllm merge` writes a plain run with the same logits and the same window.
    plain = str(tmp_path / "merged")
    proc = call_cli(["merge", "--run", out, "--out", plain])
    assert proc.returncode == 0, proc.stderr
    written = runs.load(plain)
    assert not lora.adapter_layers(written)
    assert written.config.sliding_window == WINDOW
    np.testing.assert_allclose(written(ids).numpy(), merged(ids).numpy(), atol=1e-5)
    # A chat turn is rendered in Gemma's markers and stops at `<end_of_turn>`.
    session = ChatSession(merged, config["chat"], max_new_tokens=8)
    reply = "".join(session.send("Translate to French: water"))
    assert "<end_of_turn>" not in reply and "<start_of_turn>" not in reply
    ids, _ = session.prompt_ids([{"role": "user", "content": "hi"}])
    tok = merged.tokenizer
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1  # written by the template
    assert tok.decode(ids[1:]).startswith("<start_of_turn>user\nhi<end_of_turn>\n"
                                          "<start_of_turn>model\n")


@pytest.mark.slow
def test_classifier_on_gemma_keeps_bos_pools_the_last_token_and_fits(gemma_base, tmp_path):
    from tfllm import runs
    from tfllm.tasks.classify.finetune import FinetuneSettings, finetune
    from tfllm.tasks.classify.predict import load_classifier, predict_proba

    data = write_tsv(tmp_path / "reviews.tsv", labeled_rows())
    out = str(tmp_path / "clf")
    result = finetune(out, data, run=gemma_base,
                      settings=FinetuneSettings(**FAST_FINETUNE), verbose=0)
    task = runs.read_run_config(out)["task"]
    assert task["pooling"] == "last"  # a causal model: only the last token sees the text
    model, task = load_classifier(out)
    assert model.backbone.sliding_window == WINDOW
    rows = labeled_rows()
    # The tokenizer's own BOS leads every row (Gemma is never run without it).
    assert model.tokenizer.encode(rows[0][0])[0] == model.tokenizer.bos_id
    probs = predict_proba(model, task, [t for t, _ in rows])
    predicted = [task["class_names"][i] for i in probs.argmax(1)]
    assert np.mean([p == y for p, (_, y) in zip(predicted, rows)]) >= 0.9, result
    assert os.path.exists(os.path.join(out, runs.MODEL))


@pytest.mark.slow
def test_gemma_chat_saved_model_trims_as_the_template_and_answers_as_tfllm_chat(gemma_lora,
                                                                                  tmp_path):
    """Gemma's template trims the message (`| trim`): the graph trims it too. The exporter
    checks `chat`, `chat_with_system` and `conversation` in a fresh process against `tfllm
    chat` (`chat_checks`), on a message wrapped in whitespace among others."""
    from export.saved_model import describe_signatures, export_saved_model
    from tfllm.signatures.chat import VERIFY_MESSAGES

    assert any(m != m.strip() for m in VERIFY_MESSAGES)
    out, _ = gemma_lora
    path = export_saved_model(out, str(tmp_path / "models"), name="gemma-chat")
    lines = "\n".join(describe_signatures(path))
    assert "chat(max_new_tokens int32[None], message string[None]" in lines
    assert "chat_with_system(" in lines
    # Whole conversations too (checked the same way after a system turn and an exchange,
    # Gemma's system text folded into the first user turn).
    assert "conversation(contents string[None, None]" in lines
