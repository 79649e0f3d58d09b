"""`tfllm gateway`: the OpenAI API translated to TF Serving's REST Predict, tested against
the dev server's TF Serving emulation (real TF Serving cannot run here)."""

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.conftest import REPO, quiet_env
from tests.serving.servers import serve_gateway, serve_saved_models

openai = pytest.importorskip("openai")
pytest.importorskip("aiohttp")


@pytest.fixture(scope="module")
def gateway(exported):
    upstream, stop_upstream = serve_saved_models(exported["model_dir"], max_batch=8)
    url, stop = serve_gateway(upstream, "tiny", model_id="tiny-lm", max_concurrency=2,
                              max_waiting=2)
    yield {"url": url, "upstream": upstream,
           "client": openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)}
    stop()
    stop_upstream()


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_completions_through_tf_serving_are_the_savedmodels(gateway, tiny_run):
    import tfllm

    client = gateway["client"]
    model = tfllm.load(tiny_run)
    expected = model.generate(["ROMEO:", "KING:\nO"], max_new_tokens=10)
    r = client.completions.create(model="tiny-lm", prompt=["ROMEO:", "KING:\nO"],
                                  max_tokens=10, temperature=0)
    assert [c.text for c in r.choices] == expected
    assert [c.finish_reason for c in r.choices] == ["length", "length"]
    assert r.usage.prompt_tokens == len(model.tokenizer.encode("ROMEO:")) + \
        len(model.tokenizer.encode("KING:\nO"))
    assert r.usage.completion_tokens == 20
    # A stream is the whole reply in one chunk (TF Serving answers once per call).
    pieces = [c.choices[0].text for c in client.completions.create(
        model="tiny-lm", prompt="ROMEO:", max_tokens=10, temperature=0, stream=True)
        if c.choices]
    assert "".join(pieces) == expected[0]
    # n rows sample with seed, seed + 1: reproducible, and one request's rows differ.
    a = client.completions.create(model="tiny-lm", prompt="ROMEO:", max_tokens=10,
                                  temperature=1.0, seed=3, n=3)
    b = client.completions.create(model="tiny-lm", prompt="ROMEO:", max_tokens=10,
                                  temperature=1.0, seed=3, n=3)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1


def test_errors_probes_and_models(gateway):
    client, url = gateway["client"], gateway["url"]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-4o", prompt="x", max_tokens=2)
    # The signature's own refusal (INVALID_ARGUMENT) comes back as a 400 on max_tokens.
    with pytest.raises(openai.BadRequestError, match="max_new_tokens must be from 1 to 31") as e:
        client.completions.create(model="tiny-lm", prompt="x", max_tokens=5000)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError, match="temperature must be"):
        client.completions.create(model="tiny-lm", prompt="x", temperature=-1)
    with pytest.raises(openai.BadRequestError, match="token-id prompts are not taken here"):
        client.completions.create(model="tiny-lm", prompt=[1, 2], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="stop strings are not applied"):
        client.completions.create(model="tiny-lm", prompt="x", stop=["\n"])
    # A run without a chat template has no chat signature: said, not a 5xx.
    with pytest.raises(openai.BadRequestError, match="no chat signature"):
        client.chat.completions.create(model="tiny-lm", messages=[
            {"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="no conversation signature"):
        client.chat.completions.create(model="tiny-lm", messages=[
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"},
            {"role": "user", "content": "y"}])
    with pytest.raises(openai.BadRequestError, match="no embed signature"):
        client.embeddings.create(model="tiny-lm", input="hi")
    req = urllib.request.Request(url + "/v1/completions", data=b"{oops",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 400 and "could not parse" in json.loads(e.value.read())[
        "error"]["message"]
    req = urllib.request.Request(url + "/v1/completions", data=b'{"prompt": "x"}',
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    error = json.loads(e.value.read())["error"]
    assert e.value.code == 400 and error["param"] == "model"
    assert error["message"].startswith("you must provide a model parameter")
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(
        {"model": "tiny-lm", "prompt": "x\udc80"}).encode(),
        headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 400 and "lone UTF-16 surrogate \\udc80" in json.loads(
        e.value.read())["error"]["message"]
    assert _get(url + "/v1/nothing")[0] == 404
    assert [m.id for m in client.models.list()] == ["tiny-lm"]
    assert _get(url + "/healthz") == (200, {"status": "ok"})
    assert _get(url + "/readyz") == (200, {"status": "ready"})


def test_an_unreachable_tf_serving_is_503_and_not_ready(exported):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    url, stop = serve_gateway(dead, "tiny", timeout=5)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError) as e:
            client.completions.create(model="tiny", prompt="x", max_tokens=2)
        assert e.value.status_code == 503 and "cannot be reached" in str(e.value)
        assert _get(url + "/readyz")[0] == 503
        assert _get(url + "/healthz")[0] == 200
    finally:
        stop()


def test_gateway_command_refuses_bad_options():
    proc = subprocess.run([sys.executable, "-m", "tfllm.cli", "gateway", "--tf-serving",
                           "localhost:8501", "--model", "m"], capture_output=True, text=True,
                          cwd=REPO, env=quiet_env(), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1].startswith("tfllm gateway: error: --tf-serving must")


def test_a_port_past_65535_is_an_argument_error(capsys):
    from serving.gateway import parse_args

    with pytest.raises(SystemExit) as e:
        parse_args(["--tf-serving", "http://x", "--model", "m", "--port", "70000"])
    assert e.value.code == 2
    assert "--port must be from 1 to 65535, got 70000" in capsys.readouterr().err
