"""The one publisher (tfllm.publish): what it refuses, what it replaces, and that a failure or
a kill never loses or half-writes an output."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import snapshot
from tfllm.publish import MARKER, Output, PublishError, is_ours, marker_path, read_marker


def _publish_dir(path, kind="run", text="new", **kwargs):
    with Output(str(path), kind, **kwargs).staging() as tmp:
        with open(os.path.join(tmp, "data.txt"), "w") as f:
            f.write(text)


def _publish_file(path, data=b"new", kind="tflite", **kwargs):
    with Output(str(path), kind, **kwargs).staging() as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def test_a_directory_output_is_published_marked_and_readable(tmp_path):
    out = tmp_path / "runs" / "a"
    _publish_dir(out)
    assert snapshot(out)["data.txt"] == b"new"
    assert read_marker(str(out))["kind"] == "run" and "staging" not in read_marker(str(out))
    assert is_ours(str(out), "run") and not is_ours(str(out), "saved-model")
    assert os.stat(out).st_mode & 0o055 == 0o055
    assert os.stat(out / "data.txt").st_mode & 0o044 == 0o044
    assert os.listdir(out.parent) == ["a"]  # no staging sibling left
    with pytest.raises(PublishError, match="already exists; pass --overwrite"):
        _publish_dir(out, text="newer")
    _publish_dir(out, text="newer", overwrite=True)
    assert snapshot(out)["data.txt"] == b"newer"
    assert os.listdir(out.parent) == ["a"]


@pytest.mark.parametrize("case", ["folder", "file", "marker_of_another_kind", "symlink",
                                  "malformed_marker"])
def test_what_is_not_ours_is_never_replaced(tmp_path, case):
    out = tmp_path / "out"
    if case == "file":
        out.write_text("notes")
    elif case == "symlink":
        (tmp_path / "real").mkdir()
        os.symlink(tmp_path / "real", out)
    else:
        out.mkdir()
        (out / "config.json").write_text("{}")  # a Hugging Face checkpoint has one too
        if case == "marker_of_another_kind":
            _publish_dir(tmp_path / "sm", kind="saved-model")
            os.replace(tmp_path / "sm" / MARKER, out / MARKER)
        if case == "malformed_marker":
            (out / MARKER).write_text("[1, 2")
    before = snapshot(str(out))
    with pytest.raises(PublishError, match="does not replace it|not a directory|symbolic"):
        _publish_dir(out, overwrite=True)
    assert snapshot(str(out)) == before


@pytest.mark.parametrize("where", ["itself", "inside", "parent"])
def test_out_may_not_overlap_an_input(tmp_path, where):
    run = tmp_path / "runs" / "base"
    _publish_dir(run, text="base")
    out = {"itself": run, "inside": run / "export", "parent": run.parent}[where]
    before = snapshot(str(run))
    with pytest.raises(PublishError, match="the input"):
        _publish_dir(out, overwrite=True, inputs=[str(run)])
    # A path reaching the input through a symbolic link is the input too.
    os.symlink(run, tmp_path / "alias")
    with pytest.raises(PublishError, match="the input"):
        _publish_dir(tmp_path / "alias" / "x", inputs=[str(run)])
    assert snapshot(str(run)) == before


def test_a_failure_while_staging_changes_nothing(tmp_path):
    out = tmp_path / "v"
    _publish_dir(out, text="old")
    before = snapshot(str(out))
    with pytest.raises(RuntimeError):
        with Output(str(out), "run", overwrite=True).staging() as tmp:
            with open(os.path.join(tmp, "data.txt"), "w") as f:
                f.write("half")
            raise RuntimeError("failed half-way")
    assert snapshot(str(out)) == before
    assert os.listdir(tmp_path) == ["v"]


def test_an_empty_directory_is_filled(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    _publish_dir(out)  # nothing to lose: no --overwrite needed
    assert snapshot(str(out))["data.txt"] == b"new"


def test_file_outputs_are_proven_ours_by_their_hash(tmp_path):
    out = tmp_path / "m.tflite"
    _publish_file(out, b"v1")
    marker = read_marker(str(out))
    assert marker["kind"] == "tflite" and len(marker["sha256"]) == 1
    assert os.path.basename(marker_path(str(out))) == ".m.tflite" + MARKER
    with pytest.raises(PublishError, match="--overwrite"):
        _publish_file(out, b"v2")
    _publish_file(out, b"v2", overwrite=True)
    assert out.read_bytes() == b"v2" and is_ours(str(out), "tflite")
    # Someone else's bytes at our name (a copy over it): no longer provably ours.
    out.write_bytes(b"a file the user copied here")
    with pytest.raises(PublishError, match="no tfllm marker"):
        _publish_file(out, b"v3", overwrite=True)
    assert out.read_bytes() == b"a file the user copied here"
    # Ours, but of another kind.
    onnx = tmp_path / "m.onnx"
    _publish_file(onnx, b"onnx", kind="onnx")
    with pytest.raises(PublishError, match="holds an ONNX file"):
        _publish_file(onnx, b"x", kind="tflite", overwrite=True)
    with pytest.raises(PublishError, match="is a directory"):
        _publish_file(tmp_path, overwrite=True)


def test_companions_are_checked_and_published_together(tmp_path):
    out, companion = tmp_path / "m.onnx", tmp_path / "m.decode.onnx"
    companion.write_bytes(b"the user's")
    output = Output(str(out), "onnx", overwrite=True, companions=[str(companion)])
    with pytest.raises(PublishError, match="m.decode.onnx exists"):
        output.check()
    assert not out.exists()
    companion.unlink()
    with output.staging() as tmp:
        open(tmp, "wb").write(b"encoder")
        open(output.staged(str(companion)), "wb").write(b"decoder")
    assert out.read_bytes() == b"encoder" and companion.read_bytes() == b"decoder"
    assert is_ours(str(out), "onnx") and is_ours(str(companion), "onnx")


def test_in_place_writes_a_new_run_directly_and_stages_a_replacement(tmp_path):
    out = tmp_path / "r"
    with Output(str(out), "run").staging(in_place=True) as where:
        assert where == str(out) and is_ours(str(out), "run")  # marked at once: resumable
        (out / "data.txt").write_text("first")
    with Output(str(out), "run", overwrite=True).staging(in_place=True) as where:
        assert where != str(out) and os.path.dirname(where) == str(tmp_path)
        assert (out / "data.txt").read_text() == "first"  # the old run stays until the end
        with open(os.path.join(where, "data.txt"), "w") as f:
            f.write("second")
    assert (out / "data.txt").read_text() == "second"


_KILLED_WRITER = """
import os, sys, time
from tfllm.publish import Output
out = Output(sys.argv[1], sys.argv[2], overwrite=True)
with out.staging() as tmp:
    target = tmp if out.is_file else os.path.join(tmp, "data.txt")
    with open(target, "w") as f:
        f.write("half")
    print("staged", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("kind,name", [("run", "r"), ("litertlm", "m.litertlm")])
def test_a_killed_writer_loses_nothing_and_its_leftover_is_cleaned(tmp_path, kind, name):
    out = tmp_path / name
    if kind == "run":
        _publish_dir(out, text="old")
    else:
        _publish_file(out, b"old", kind=kind)
    before = snapshot(str(out))
    # A hidden folder of the user's with a similar name but no marker is never touched.
    foreign = tmp_path / f".{name}.tfllm-staging-1-mine"
    foreign.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(out), kind],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "staged"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert snapshot(str(out)) == before
    leftovers = sorted(n for n in os.listdir(tmp_path) if ".tfllm-staging-" in n)
    assert len(leftovers) == 2  # the killed writer's and the user's
    if kind == "run":
        _publish_dir(out, text="new", overwrite=True)
        assert snapshot(str(out))["data.txt"] == b"new"
    else:
        _publish_file(out, b"new", kind=kind, overwrite=True)
        assert out.read_bytes() == b"new"
    assert sorted(n for n in os.listdir(tmp_path) if ".tfllm-staging-" in n) == [foreign.name]


def test_a_live_writers_staging_is_left_alone(tmp_path):
    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(out), "run"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "staged"
        Output(str(out / ".." / "r2"), "run").check()
        from tfllm.publish import clean_stale

        assert clean_stale(str(out)) == []
        time.sleep(0.1)
        assert any(".tfllm-staging-" in n for n in os.listdir(tmp_path))
    finally:
        proc.kill()
        proc.wait()


def test_an_empty_staging_folder_of_a_dead_process_is_cleaned_and_nothing_else(tmp_path):
    # Killed between creating its staging folder and writing the marker into it.
    from tfllm.publish import clean_stale

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    out = tmp_path / "out"
    empty = tmp_path / f".out.tfllm-staging-{dead}-abc"
    users = tmp_path / f".out.tfllm-staging-{dead}-users"
    alive = tmp_path / f".out.tfllm-staging-{os.getpid()}-mine"
    half = tmp_path / f".out.tfllm-staging-{dead}-def"
    for folder in (empty, users, alive, half):
        folder.mkdir()
    (users / "notes.txt").write_text("mine")
    (half / f"{MARKER}.{dead}.tmp").write_text('{"kind"')  # killed mid-marker
    assert sorted(clean_stale(str(out))) == sorted([empty.name, half.name])
    assert users.is_dir() and (users / "notes.txt").read_text() == "mine" and alive.is_dir()
