import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

import tfllm
from serving.client import ServingError, generate_grpc, generate_rest, main as client_main, \
    predict_rest
from tests.conftest import REPO, quiet_env

PROMPTS = ["ROMEO:", "KING:\nO"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    port, grpc_port = _free_port(), _free_port()
    log = tmp_path_factory.mktemp("server") / "stderr.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "serving.dev_server", "--model-dir",
                                 exported["model_dir"], "--port", str(port), "--grpc-port",
                                 str(grpc_port), "--max-batch", "4", "--max-body-bytes", "4096",
                                 "--idle-timeout", "2"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True)
    line = proc.stdout.readline()  # "serving ... on http://..." once loaded
    assert "serving tiny" in line, log.read_text()[-3000:]
    yield {"url": f"http://127.0.0.1:{port}", "grpc": f"127.0.0.1:{grpc_port}", "proc": proc}
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def expected(tiny_run):
    return tfllm.load(tiny_run).generate(PROMPTS, max_new_tokens=10)


def _post(url, path, data, headers=None):
    req = urllib.request.Request(url + path, data=data,
                                 headers=headers or {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_rest_and_grpc_give_the_keras_text(server, expected):
    rest = generate_rest(server["url"], "tiny", PROMPTS, max_new_tokens=10)
    assert [r["text"] for r in rest] == expected
    grpc = generate_grpc(server["grpc"], "tiny", PROMPTS, max_new_tokens=10)
    assert [r["text"] for r in grpc] == expected
    assert [r["num_generated"] for r in grpc] == [r["num_generated"] for r in rest]


def test_columnar_format_and_versions(server, expected):
    inputs = {"prompt": PROMPTS, "max_new_tokens": [10, 10], "temperature": [0.0, 0.0],
              "top_k": [0, 0], "top_p": [1.0, 1.0], "seed": [0, 0]}
    out = predict_rest(server["url"], "tiny", inputs=inputs, version=1)
    assert out["outputs"]["text"] == expected
    scored = predict_rest(server["url"], "tiny", instances=["ROMEO:"], signature="score")
    assert scored["predictions"][0]["num_tokens"] == 5


def test_status_and_metadata(server):
    with urllib.request.urlopen(server["url"] + "/v1/models/tiny", timeout=30) as r:
        status = json.loads(r.read())
    assert status["model_version_status"][0] == {
        "version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    with urllib.request.urlopen(server["url"] + "/v1/models/tiny/metadata", timeout=30) as r:
        meta = json.loads(r.read())
    sigs = meta["metadata"]["signature_def"]["signature_def"]
    assert set(sigs) == {"generate", "generate_yes", "score", "serving_default"}
    assert sigs["generate"]["inputs"]["prompt"]["dtype"] == "DT_STRING"


def test_32_concurrent_requests(server, expected):
    def one(i):
        prompt = PROMPTS[i % 2]
        return generate_rest(server["url"], "tiny", [prompt], max_new_tokens=10)[0]["text"]

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(one, range(32)))
    assert results == [expected[i % 2] for i in range(32)]


@pytest.mark.parametrize("path, body, status, match", [
    ("/v1/models/tiny:predict", {"signature_name": "generate",
                                 "instances": [{"prompt": "x", "max_new_tokens": 3}]},
     400, "missing"),
    ("/v1/models/tiny:predict", {"signature_name": "generate", "instances": [
        {"prompt": "x", "max_new_tokens": "three", "temperature": 0.0, "top_k": 0,
         "top_p": 1.0, "seed": 0}]}, 400, "expected int32"),
    ("/v1/models/tiny:predict", {"signature_name": "generate", "instances": [
        {"prompt": 7, "max_new_tokens": 3, "temperature": 0.0, "top_k": 0,
         "top_p": 1.0, "seed": 0}]}, 400, "expected a string"),
    ("/v1/models/tiny:predict", {"signature_name": "score", "instances": [["a", "b"]]},
     400, "expected a string, got list"),
    ("/v1/models/nope:predict", {"instances": ["x"]}, 404, "Servable not found"),
    ("/v1/models/tiny/versions/7:predict", {"instances": ["x"]}, 404, "Servable not found"),
    ("/v1/models/tiny:predict", {"signature_name": "bogus", "instances": ["x"]}, 400,
     "not found in signature def"),
    ("/v1/models/tiny:predict", {"signature_name": ["score"], "instances": ["x"]}, 400,
     "signature_name must be a string, got list"),
    ("/v1/models/tiny:predict", {"signature_name": {"a": 1}, "instances": ["x"]}, 400,
     "signature_name must be a string, got dict"),
    ("/v1/models/tiny:predict", {"signature_name": "score", "instances": ["a"] * 5}, 400,
     "exceeds this server's limit of 4"),
    ("/v1/models/tiny:predict", {"signature_name": "generate", "instances": [
        {"prompt": "ROMEO: " * 10, "max_new_tokens": 10, "temperature": 0.0, "top_k": 0,
         "top_p": 1.0, "seed": 0}]}, 400, "exceed the model context"),
])
def test_bad_requests_get_4xx_and_the_server_keeps_serving(server, path, body, status, match,
                                                          expected):
    code, answer = _post(server["url"], path, json.dumps(body).encode())
    assert code == status and match in answer["error"]
    assert generate_rest(server["url"], "tiny", PROMPTS[:1], max_new_tokens=10)[0]["text"] == \
        expected[0]


def test_non_json_and_oversized_bodies(server, expected):
    code, answer = _post(server["url"], "/v1/models/tiny:predict", b"{not json")
    assert code == 400 and "JSON" in answer["error"]
    code, answer = _post(server["url"], "/v1/models/tiny:predict",
                         json.dumps({"instances": ["x" * 5000]}).encode())
    assert code == 413 and "exceeds the limit" in answer["error"]
    assert generate_rest(server["url"], "tiny", PROMPTS[:1], max_new_tokens=10)[0]["text"] == \
        expected[0]
    with pytest.raises(ServingError, match="INVALID_ARGUMENT"):
        generate_grpc(server["grpc"], "tiny", ["ROMEO: " * 10], max_new_tokens=10)


def test_client_cli(server, expected, capsys):
    assert client_main(["--url", server["url"], "--model", "tiny", "--prompt", "ROMEO:",
                        "--max-new-tokens", "10"]) == 0
    assert capsys.readouterr().out == "ROMEO:" + expected[0] + "\n"
    assert client_main(["--grpc", server["grpc"], "--model", "tiny", "--prompt", "ROMEO:",
                        "--max-new-tokens", "10", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == expected[0]
    assert client_main(["--url", server["url"], "--model", "missing", "--prompt", "x"]) == 1
    assert "HTTP 404" in capsys.readouterr().err


def test_json_schema_signature_over_rest_and_grpc(server, tiny_run):
    """generate_yes (the export's --json-schema yes=FILE): what `generate(json_schema=)`
    gives, over both protocols; a max_new_tokens below the schema's shortest answer is the
    client's error (400 / INVALID_ARGUMENT), not the server's."""
    from tests.conftest import YES_SCHEMA

    prompts = ["ROMEO:", "Is it so?"]
    want = tfllm.load(tiny_run).generate(prompts, max_new_tokens=6, json_schema=YES_SCHEMA)
    assert set(want) <= {"true", "false"}
    rest = generate_rest(server["url"], "tiny", prompts, signature="generate_yes",
                         max_new_tokens=6)
    grpc = generate_grpc(server["grpc"], "tiny", prompts, signature="generate_yes",
                         max_new_tokens=6)
    assert [r["text"] for r in rest] == [r["text"] for r in grpc] == want
    with pytest.raises(ServingError, match="HTTP 400.*max_new_tokens must be at least"):
        generate_rest(server["url"], "tiny", prompts, signature="generate_yes",
                      max_new_tokens=2)
    with pytest.raises(ServingError, match="INVALID_ARGUMENT.*max_new_tokens must be at"):
        generate_grpc(server["grpc"], "tiny", prompts, signature="generate_yes",
                      max_new_tokens=2)


# -- hostile framing and input: 4xx and a closed connection, never 500 or a stuck thread ----

def _raw(url, data, wait=10.0, pause_after=None):
    """Send raw bytes; returns (status or None, whether the server closed the connection)."""
    import time

    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before the whole body is sent
        if pause_after:
            time.sleep(pause_after)
        received = b""
        closed = False
        start = time.time()
        while time.time() - start < wait:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
    status = int(received.split()[1]) if received.startswith(b"HTTP/") else None
    return status, closed, received


_HEAD = b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize("framing, status", [
    (b"Content-Length: -1\r\n\r\n" + b"x" * 3_000_000, 400),
    (b"Content-Length: 12abc\r\n\r\n{}", 400),
    (b"\r\n{}", 411),
    (b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 411),
    (b"Content-Length: 99999999999999999999999\r\n\r\n{}", 400),
    (b"Content-Length: 5000000\r\n\r\n" + b"x" * 100, 413),
])
def test_malformed_framing_gets_4xx_and_a_closed_connection(server, framing, status,
                                                             expected):
    got, closed, _ = _raw(server["url"], _HEAD + framing)
    assert (got, closed) == (status, True)
    assert generate_rest(server["url"], "tiny", PROMPTS[:1], max_new_tokens=10)[0]["text"] == \
        expected[0]


def test_slow_and_idle_clients_are_cut_off(server, expected):
    # Promises 100 bytes, sends 2, then stalls: 408 once the idle timeout (2 s) passes.
    got, closed, _ = _raw(server["url"], _HEAD + b"Content-Length: 100\r\n\r\n{}", wait=15)
    assert (got, closed) == (408, True)
    # Connects and never sends a byte: closed without an answer.
    got, closed, data = _raw(server["url"], b"", wait=15)
    assert closed and data == b""
    assert generate_rest(server["url"], "tiny", PROMPTS[:1], max_new_tokens=10)[0]["text"] == \
        expected[0]


def _generate_row(**overrides):
    row = {"prompt": "ROMEO:", "max_new_tokens": 3, "temperature": 0.0, "top_k": 0,
           "top_p": 1.0, "seed": 0}
    row.update(overrides)
    return json.dumps({"signature_name": "generate", "instances": [row]}).encode()


@pytest.mark.parametrize("body, match", [
    (_generate_row(max_new_tokens=10 ** 30), "outside the int32 range"),
    (_generate_row(max_new_tokens=10 ** 400), "outside the int32 range"),
    (_generate_row(max_new_tokens=2_147_483_647), "max_new_tokens must be from 1 to 31"),
    (_generate_row(seed=-2 ** 40), "outside the int32 range"),
    (_generate_row(max_new_tokens=3.5), "expected int32"),
    (_generate_row().replace(b'"temperature": 0.0', b'"temperature": 1e999'),
     "temperature must be a finite number"),
    (_generate_row().replace(b'"temperature": 0.0', b'"temperature": NaN'),
     "temperature must be a finite number"),
    (_generate_row(top_p=0.0), "top_p must be > 0 and <= 1"),
    (_generate_row(top_k=-3), "top_k must be >= 0"),
    (b"[" * 2000 + b"]" * 2000, "nested too deeply"),
    (_generate_row(prompt="RO\ud800"), "lone UTF-16 surrogate \\ud800"),
    (json.dumps({"signature_name": "score", "inputs": {"text": [{"b64": "***"}]}}).encode(),
     "input 'text'"),
])
def test_absurd_values_are_client_errors(server, body, match):
    code, answer = _post(server["url"], "/v1/models/tiny:predict", body)
    assert code == 400, answer
    assert match in answer["error"]


def test_port_in_use_is_one_line(server, exported):
    port = server["url"].rsplit(":", 1)[1]
    proc = subprocess.run([sys.executable, "-m", "serving.dev_server", "--model-dir",
                           exported["model_dir"], "--port", port, "--grpc-port", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=quiet_env())
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.startswith("dev_server: error: cannot listen on") and "--port" in err
    assert "Traceback" not in err


def test_unknown_methods_and_garbage_are_4xx(server):
    assert _raw(server["url"], b"BREW /v1/models/tiny HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 405
    status, closed, data = _raw(server["url"], b"\x00\xff\x10 garbage\r\n\r\n")
    assert closed and b"Error code: 400" in data  # HTTP/0.9 framing: no status line


def _get(url, path):
    with urllib.request.urlopen(url + path, timeout=60) as r:
        return json.loads(r.read())


def test_a_damaged_version_is_reported_and_the_others_serve(exported, tmp_path, expected):
    """TF Serving's version policy: the newest version that loads serves; a damaged one is
    listed with its error; new versions are picked up and removed ones dropped without a
    restart."""
    import shutil
    import time

    model_dir = tmp_path / "tiny"
    shutil.copytree(exported["path"], model_dir / "1")
    shutil.copytree(exported["path"], model_dir / "2")
    (model_dir / "2" / "saved_model.pb").write_bytes(b"not a protobuf")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serving.dev_server", "--model-dir",
                             str(model_dir), "--port", str(port), "--grpc-port", "0",
                             "--poll-seconds", "0.5"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        line = proc.stdout.readline()
        assert "versions [1]" in line and "version 2 failed to load" in line, line
        status = _get(url, "/v1/models/tiny")["model_version_status"]
        assert [(v["version"], v["state"]) for v in status] == [("2", "END"), ("1", "AVAILABLE")]
        assert "cannot load the SavedModel" in status[0]["status"]["error_message"]
        assert generate_rest(url, "tiny", PROMPTS[:1], max_new_tokens=10)[0]["text"] == \
            expected[0]
        # A new version published in one rename is served once the poll sees it.
        shutil.copytree(exported["path"], tmp_path / ".3.staging")
        (tmp_path / ".3.staging").rename(model_dir / "3")
        assert "version 3 loaded" in proc.stdout.readline()
        assert _get(url, "/v1/models/tiny/metadata")["model_spec"]["version"] == "3"
        shutil.rmtree(model_dir / "3")
        assert "version 3 removed" in proc.stdout.readline()
        deadline = time.time() + 10
        while _get(url, "/v1/models/tiny/metadata")["model_spec"]["version"] != "1":
            assert time.time() < deadline
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_client_resetting_mid_request_line_leaves_no_traceback(capsys):
    """A client that resets its connection halfway through a request line (a probe, a
    client giving up) is not a server error: nothing in the server's log, and it serves on."""
    import socket
    import struct
    import threading
    import time

    from serving.dev_server import make_http_server

    server = make_http_server(None, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        s = socket.create_connection(server.server_address)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.send(b"GET /v1/mo")
        s.close()  # with a zero linger: a reset
        time.sleep(0.5)
        with socket.create_connection(server.server_address) as s:
            s.sendall(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(64).startswith(b"HTTP/1.")
    finally:
        server.shutdown()
        server.server_close()
    assert "Traceback" not in capsys.readouterr().err
