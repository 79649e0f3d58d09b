"""The wheel: it carries every package of the checkout (tfllm, and export/ and serving/ as
tfllm_export and tfllm_serving) and, installed away from the checkout, its `tfllm` command
exports a run and serves it."""

import configparser
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
import zipfile

import pytest

import tfllm
from serving.client import generate_rest
from tests.conftest import REPO, quiet_env

# Source folder -> the name it installs as.
INSTALLED_AS = {"tfllm": "tfllm", "export": "tfllm_export", "serving": "tfllm_serving"}
SERVING_ASSETS = {"Dockerfile", "Dockerfile.gateway", "README.md", "batching.config",
                  "models.config", "monitoring.config", "docker-compose.yml", "gateway.yaml",
                  "tfserving.yaml"}


def _source_files():
    """{path in the wheel: path in the checkout} of every module and serving asset."""
    out = {}
    for top, name in INSTALLED_AS.items():
        for d, dirs, files in os.walk(os.path.join(REPO, top)):
            dirs[:] = [x for x in dirs if x != "__pycache__"]
            for f in files:
                if f.endswith(".py") or (top == "serving" and f in SERVING_ASSETS):
                    rel = os.path.relpath(os.path.join(d, f), os.path.join(REPO, top))
                    out[f"{name}/{rel}"] = os.path.join(d, f)
    return out


def test_setup_cfg_lists_every_package():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    listed = set(cfg["options"]["packages"].split())
    packages = {os.path.dirname(p).replace("/", ".") for p in _source_files()
                if p.endswith("/__init__.py")}
    assert listed == packages
    assert set(cfg["options.package_data"]["tfllm_serving"].replace(",", " ").split()) == \
        {"Dockerfile", "Dockerfile.gateway", "README.md", "*.config", "docker-compose.yml",
         "k8s/*.yaml"}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_installed_wheel_exports_and_serves_outside_the_checkout(tiny_run, tmp_path):
    wheels, target, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    # Built from a copy: setuptools' build/ folder in the checkout may hold modules of an
    # earlier build, and the test must see what this tree makes.
    source = tmp_path / "source"
    for top in INSTALLED_AS:
        shutil.copytree(os.path.join(REPO, top), source / top,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), source / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "--no-build-isolation", "-w", str(wheels), str(source)],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("tfllm-*.whl")
    members = {m for m in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in m}
    assert members == set(_source_files())

    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                              "--target", str(target), str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    # From a folder outside the checkout, with the installed copy first on the path.
    env = dict(quiet_env(), PYTHONPATH=str(target))
    where = subprocess.run(
        [sys.executable, "-c", "import json, tfllm, tfllm_export, tfllm_serving; print(json."
         "dumps([m.__file__ for m in (tfllm, tfllm_export, tfllm_serving)]))"],
        capture_output=True, text=True, cwd=work, env=env, timeout=120)
    assert all(p.startswith(str(target)) for p in json.loads(where.stdout)), where
    command = str(target / "bin" / "tfllm")

    for fmt in ("saved-model", "tflite", "litertlm", "onnx", "hf"):
        helped = subprocess.run([command, "export", fmt, "--help"], capture_output=True,
                                text=True, cwd=work, env=env, timeout=120)
        assert helped.returncode == 0 and f"usage: tfllm export {fmt}" in helped.stdout
    exported = subprocess.run([command, "export", "saved-model", "--run", tiny_run, "--out",
                               "models", "--name", "tiny"], capture_output=True, text=True,
                              cwd=work, env=env, timeout=900)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert exported.stderr == ""  # what a terminal shows: no native log line, no warning
    assert os.path.isdir(work / "models" / "tiny" / "1")
    bad = subprocess.run([command, "export", "onnx", "--run", str(work / "nothing"), "--out",
                          "x.onnx"], capture_output=True, text=True, cwd=work, env=env,
                         timeout=300)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert bad.stderr.startswith("tfllm export onnx: error: run directory")

    port, grpc_port = _free_port(), _free_port()
    # The SavedModel over TF Serving's API and the run over the OpenAI API, one port.
    server = subprocess.Popen([command, "serve", "--model-dir", "models/tiny", "--run",
                               tiny_run, "--model-name", "tiny-run", "--port", str(port),
                               "--grpc-port", str(grpc_port)], cwd=work, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert "serving tiny" in line, server.stderr.read()[-3000:] if not line else line
        assert "OpenAI API" in server.stdout.readline()
        got = generate_rest(f"http://127.0.0.1:{port}", "tiny", ["ROMEO:"],
                            max_new_tokens=8)[0]["text"]
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions", headers={"Content-Type":
                                                                "application/json"},
            data=json.dumps({"model": "tiny-run", "prompt": "ROMEO:", "max_tokens": 8,
                             "temperature": 0}).encode())
        with urllib.request.urlopen(req, timeout=120) as r:
            completion = json.loads(r.read())["choices"][0]["text"]
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert got == tfllm.load(tiny_run).generate(["ROMEO:"], max_new_tokens=8)[0]
    assert completion == got
    # The SIGTERM reached the server itself (`tfllm serve` becomes it): nothing still
    # listens, as a service manager's stop expects.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
