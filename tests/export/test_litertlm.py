import os
import subprocess
import sys

import pytest

import tfllm
from export.litertlm import engine_generate, llm_metadata
from tests.conftest import REPO, quiet_env, run_module


@pytest.fixture(scope="module")
def bundle(tiny_run, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("litertlm") / "tiny.litertlm")
    proc = subprocess.run([sys.executable, "-m", "export.litertlm", "--run", tiny_run, "--out",
                           path, "--prefill-lengths", "8", "32"],
                          capture_output=True, text=True, cwd=REPO, timeout=900,
                          env=quiet_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the same as CausalLM.generate" in proc.stdout
    # A success prints no native log line (TensorFlow, LiteRT, XNNPACK, SentencePiece, the
    # LiteRT-LM engine) and no warning: the terminal shows only what tfllm says.
    assert proc.stderr == ""
    return path


def test_engine_greedy_equals_causal_lm_generate(bundle, tiny_run):
    lm = tfllm.load(tiny_run)
    for prompt in ["ROMEO:", "First Citizen:\nWe are", "KING:"]:
        n = 32 - len(lm.tokenizer.encode(prompt)) - 1
        assert engine_generate(bundle, prompt, n) == lm.generate(prompt, max_new_tokens=n)
    assert not os.path.exists(bundle + ".partial.litertlm")


def test_an_empty_check_prompt_is_refused_before_any_work(tiny_run, tmp_path):
    from tests.conftest import call_module

    out = str(tmp_path / "x.litertlm")
    r = call_module("export.litertlm", "--run", tiny_run, "--out", out, "--prompt", "")
    assert r.returncode == 2 and not os.path.exists(out)
    assert r.stderr.strip().endswith("error: --prompt '' is empty: the runtime check needs at "
                                     "least one character to prefill")


def test_metadata_names_stop_token_and_cache_length():
    text = llm_metadata(3, 256)
    assert "stop_tokens { token_ids { ids: 3 } }" in text and "start_token" not in text
    several = llm_metadata([7, 9], 64, start_token_id=5)
    assert several.count("stop_tokens") == 2 and "ids: 9 } }" in several
    assert "start_token { token_ids { ids: 5 } }" in several
    assert "max_num_tokens: 256" in text and "generic_model" in text


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["int4-block32", "int4-asym-block32", "int8-weight"])
def test_quantizer_modes_pass_their_gate_and_run_in_the_engine(tiny_run, tmp_path, mode):
    from export.options import ACCURACY_GATES

    path = str(tmp_path / f"{mode}.litertlm")
    stdout = run_module("export.litertlm", "--run", tiny_run, "--out", path,
                        "--prefill-lengths", "8", "--quantize", mode)
    gate = next(line for line in stdout.splitlines() if "gate >=" in line)
    agree = float(gate.split("agreement with Keras ")[1].split("%")[0])
    assert agree >= 100 * ACCURACY_GATES[mode][0], gate
    # The runtime runs exactly the quantized model the gate measured: the exporter held
    # its greedy text to the LiteRT interpreter's on the bundle's TFLite model (a
    # quantized greedy choice may differ from the float model's: int4 turned this model's
    # "\nThe the the" into "\n\nThe the th"), and an app gets that text again.
    line = next(line for line in stdout.splitlines() if "litert_lm.Engine" in line)
    assert "the same as the LiteRT interpreter on its TFLite model" in line, line
    got = engine_generate(path, "ROMEO:", 16)
    assert got and f"with {got!r}," in line, (got, line)
