"""Chat fine-tuning with and without LoRA, merging, chat sessions and the chat CLI."""

import json
import os
import shutil

import numpy as np
import pytest

from tests.chat_fixtures import make_base_run
from tests.conftest import call_cli

IDS = np.array([[3, 7, 11, 5, 9, 2, 4]], np.int32)


def _weights(model):
    return {w.path: w.numpy() for w in model.weights if "lora_kernel" not in w.path}


def test_lora_changes_only_the_adapter_and_merges_exactly(chat_runs):
    from tfllm import runs
    from tfllm.models import lora

    base = runs.load(chat_runs["base"])
    adapted = runs.load(chat_runs["lora"], adapter="keep")
    layers = lora.adapter_layers(adapted)
    assert len(layers) == 2 * 5  # per block: qkv, out, gate, up, down
    # The fit moved the adapters (B starts at zero) and left every base weight bit-equal.
    assert all(np.abs(layer.lora_kernel_b.numpy()).max() > 0 for layer in layers)
    kept = _weights(adapted)  # the frozen kernels themselves, not W + alpha / r * A @ B
    assert set(kept) == set(_weights(base))
    for path, value in _weights(base).items():
        np.testing.assert_array_equal(kept[path], value, err_msg=path)
    trainable = chat_runs["lora_result"]["trainable_params"]
    assert trainable == sum(int(np.prod(v.shape)) for v in adapted.trainable_weights)
    assert trainable == sum(2 * (k.shape[0] + k.shape[1])
                            for k in (layer._kernel for layer in layers))
    # The merged model (what inference and export load) gives the adapted model's logits.
    merged = runs.load(chat_runs["lora"])
    assert not lora.adapter_layers(merged)
    diff = np.abs(merged(IDS).numpy() - adapted(IDS).numpy()).max()
    assert diff <= 1e-5
    assert np.abs(merged(IDS).numpy() - base(IDS).numpy()).max() > 1e-3
    # The adapter file is small next to its base's weights.
    adapter = os.path.getsize(os.path.join(chat_runs["lora"], runs.ADAPTER))
    assert adapter <= 0.05 * os.path.getsize(os.path.join(chat_runs["base"], runs.MODEL))
    assert not os.path.exists(os.path.join(chat_runs["lora"], runs.MODEL))
    config = runs.read_run_config(chat_runs["lora"])
    assert config["lora"] == {"rank": 2, "alpha": 4.0, "targets": ["qkv", "out", "ffn"]}
    assert config["chat"]["end_of_turn"] == ["<|im_end|>"]


def test_merge_writes_a_plain_run_and_an_adapter_refuses_another_base(chat_runs, tmp_path):
    from tfllm import runs
    from tfllm.models import lora

    out = str(tmp_path / "merged")
    proc = call_cli(["merge", "--run", chat_runs["lora"], "--out", out])
    assert proc.returncode == 0, proc.stderr
    merged = runs.load(out)
    expected = runs.load(chat_runs["lora"])(IDS).numpy()
    np.testing.assert_array_equal(merged(IDS).numpy(), expected)
    config = runs.read_run_config(out)
    assert "lora" not in config and config["chat"]["template"].startswith("{% for message")

    # The same adapter pointed at another base (same shapes, other weights) is refused.
    other_base = make_base_run(str(tmp_path / "other"), seed=1)
    moved = str(tmp_path / "moved")
    shutil.copytree(chat_runs["lora"], moved)
    config = runs.read_run_config(moved)
    config["base"]["run"] = other_base
    runs.write_run_config(moved, config)
    with pytest.raises(lora.LoraError, match="trained on another base model"):
        runs.load(moved)
    proc = call_cli(["chat", "--run", moved, "--message", "hi"])
    assert proc.returncode != 0 and "another base model" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_fine_tuning_learns_the_replies_and_chat_stops_at_end_of_turn(chat_runs):
    from tfllm import runs
    from tfllm.models.chat_session import ChatSession
    from tfllm.training import read_metrics

    records = read_metrics(chat_runs["full"])
    assert records[-1]["val_loss"] < 0.5 * records[0]["val_loss"]
    result = chat_runs["full_result"]
    assert result["trainable_params"] == result["base_params"]
    model = runs.load(chat_runs["full"])
    chat = runs.read_run_config(chat_runs["full"])["chat"]
    session = ChatSession(model, chat, max_new_tokens=12)
    pieces = list(session.send("Translate to French: water"))
    reply = "".join(pieces)
    assert reply and "<|im_end|>" not in reply and "<|im_start|>" not in reply
    assert session.history == [{"role": "user", "content": "Translate to French: water"},
                                {"role": "assistant", "content": reply}]
    # The reply ended at the model's end-of-turn marker, well before the token budget.
    ids = model.tokenizer.encode(reply)
    assert len(ids) < 12


def test_history_is_trimmed_to_the_context(chat_runs):
    from tfllm import runs
    from tfllm.models.chat_session import ChatSession

    model = runs.load(chat_runs["full"])
    chat = runs.read_run_config(chat_runs["full"])["chat"]
    session = ChatSession(model, chat, system="Be brief.", max_new_tokens=24)
    for word in ("cat", "red dog", "water", "big house"):
        session.reply(f"Translate to French: {word}")
    # A 64-token context holds the system turn and about one exchange besides the reply.
    assert session.dropped > 0
    assert session.history[0] == {"role": "system", "content": "Be brief."}
    assert session.history[-2]["content"] == "Translate to French: big house"
    ids, dropped = session.prompt_ids(session.history + [{"role": "user", "content": "x"}])
    assert len(ids) + 24 <= 64


def test_chat_cli_answers_and_refuses_bad_input(chat_runs, tmp_path, monkeypatch):
    proc = call_cli(["chat", "--run", chat_runs["full"], "--message",
                    "Translate to French: cat", "--max-new-tokens", "12"])
    assert proc.returncode == 0, proc.stderr
    from tfllm import runs
    from tfllm.models.chat_session import ChatSession

    model = runs.load(chat_runs["full"])
    chat = runs.read_run_config(chat_runs["full"])["chat"]
    expected = ChatSession(model, chat, max_new_tokens=12).reply("Translate to French: cat")
    assert proc.stdout.splitlines()[-1] == expected

    # A run without a chat template names --template; with it, it answers.
    proc = call_cli(["chat", "--run", chat_runs["base"], "--message", "hi"])
    assert proc.returncode != 0 and "--template" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = call_cli(["chat", "--run", chat_runs["base"], "--template", "chatml", "--message",
                    "hi", "--max-new-tokens", "4"])
    assert proc.returncode == 0, proc.stderr
    # Piped messages: bytes that are not UTF-8 arrive as surrogates (a C locale's stdin).
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("hi\ncaf\udce9\n"))
    proc = call_cli(["chat", "--run", chat_runs["full"], "--max-new-tokens", "4"])
    assert proc.returncode == 2 and proc.stdout.endswith("\n")  # the first message answered
    assert proc.stderr.strip() == ("tfllm chat: error: standard input: this message is not "
                                   "UTF-8 text (byte 0xe9 at character 3); give UTF-8 text")
    # --lora-rank below 1; a classifier option with --task chat; merging a plain run.
    common = ["finetune", "--task", "chat", "--run", chat_runs["base"], "--data",
              chat_runs["data"], "--prompt-column", "en", "--response-column", "fr"]
    proc = call_cli([*common, "--out", str(tmp_path / "x"), "--lora-rank", "0"])
    assert proc.returncode != 0 and "--lora-rank must be an integer >= 1" in proc.stderr
    proc = call_cli([*common, "--out", str(tmp_path / "x"), "--lora-rank", "2",
                    "--lora-targets", "qkv,mlp"])
    assert proc.returncode != 0 and "choose from qkv, out, ffn" in proc.stderr
    proc = call_cli(["merge", "--run", chat_runs["full"], "--out", str(tmp_path / "m")])
    assert proc.returncode != 0 and "not a LoRA run" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_conversations_longer_than_the_context_are_skipped_and_counted(chat_runs, tmp_path):
    from tfllm.tasks.chat.finetune import ChatSettings, finetune_chat
    from tfllm.errors import DataError

    rows = tmp_path / "chats.jsonl"
    long_turn = " ".join(["cat dog house"] * 40)
    lines = [{"messages": [{"role": "user", "content": f"Translate to French: {en}"},
                           {"role": "assistant", "content": fr}]}
             for en, fr in [("cat", "chat"), ("dog", "chien")] * 12]
    lines.append({"messages": [{"role": "user", "content": long_turn},
                               {"role": "assistant", "content": "x"}]})
    lines.append({"messages": [{"role": "robot", "content": "x"}]})
    rows.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    result = finetune_chat(str(tmp_path / "run"), f"jsonl:{rows}", chat_runs["base"],
                           ChatSettings(steps=4, eval_interval=2, batch_size=4,
                                        lora_rank=2), verbose=0)
    assert result["too_long"] == 1 and result["skipped"]["bad_role"] == 1
    only_long = tmp_path / "long.jsonl"
    only_long.write_text((json.dumps(lines[-2]) + "\n") * 20)
    with pytest.raises(DataError, match="no conversation fits the model's context of 64"):
        finetune_chat(str(tmp_path / "run2"), f"jsonl:{only_long}", chat_runs["base"],
                      ChatSettings(steps=2, eval_interval=2, lora_rank=2), verbose=0)


def test_a_killed_chat_fine_tune_resumes_where_it_stopped(chat_runs, tmp_path):
    import keras

    from tfllm import runs
    from tfllm.tasks.chat.finetune import ChatSettings, finetune_chat, resume_chat
    from tfllm.training import read_metrics

    class Killed(Exception):
        pass

    class KillAfterSecondInterval(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise Killed()

    settings = ChatSettings(steps=40, eval_interval=10, batch_size=8, lora_rank=2, lr=5e-3)
    common = dict(prompt_column="en", response_column="fr",
                  prompt_template="Translate to French: {en}", verbose=0)
    whole = str(tmp_path / "whole")
    finetune_chat(whole, chat_runs["data"], chat_runs["base"], settings, **common)
    out = str(tmp_path / "killed")
    with pytest.raises(Killed):
        finetune_chat(out, chat_runs["data"], chat_runs["base"], settings, **common,
                      extra_callbacks=[KillAfterSecondInterval()])
    assert [r["step"] for r in read_metrics(out)] == [10, 20]
    assert not os.path.exists(os.path.join(out, runs.ADAPTER))
    proc = call_cli(["finetune", "--task", "chat", "--resume", "--out", out])
    assert proc.returncode == 0, proc.stderr
    records = read_metrics(out)
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    # The optimizer's step count came back: the schedule goes on where it was.
    assert [r["lr"] for r in records] == [r["lr"] for r in read_metrics(whole)]
    assert os.path.isfile(os.path.join(out, runs.ADAPTER))
    assert not os.path.exists(os.path.join(out, runs.BACKUP))
    with pytest.raises(Exception, match="is finished"):
        resume_chat(out)


def test_exporters_hold_a_chat_run_to_its_own_rendered_conversations(chat_runs):
    """A quantized export of a chat run checks (and calibrates) on the run's held-out
    conversations as its template renders them, not on its table read as a corpus (which
    has no text column: the export failed after converting)."""
    import tfllm
    from export.tflite import heldout_windows
    from tfllm import runs
    from tfllm.tasks.chat.data import ChatData

    tok = tfllm.load(chat_runs["lora"]).tokenizer
    windows = heldout_windows(chat_runs["lora"], tok, 32, 4)
    assert len(windows) == 4 and all(len(w) == 32 for w in windows)
    text = tok.decode(windows[0])
    assert "<|im_start|>user\nTranslate to French: " in text
    config = runs.read_run_config(chat_runs["lora"])
    val = ChatData(chat_runs["data"], "en", "fr", "Translate to French: {en}",
                   seed=config["finetune"]["seed"]).val
    assert val[0][0]["content"] in text  # the validation split, in its order
    train = tok.decode(heldout_windows(chat_runs["lora"], tok, 32, 1, split="train")[0])
    assert train != text


def test_a_bare_chat_data_path_is_refused_with_the_spec_to_write():
    from tfllm.errors import DataError
    from tfllm.tasks.chat.data import ChatData

    with pytest.raises(DataError, match="bad chat data spec 'chats.jsonl'.*; did you mean "
                                        "jsonl:chats.jsonl[?]$"):
        ChatData("chats.jsonl")
    with pytest.raises(DataError, match="bad chat data spec 'input.txt'.*--response-column$"):
        ChatData("input.txt")  # chat data is a table: no text: hint
