"""The run directory: --overwrite validates first, never deletes what is not a run, and
a damaged run is reported in one line."""

import os
import shutil

import pytest

from tests.conftest import snapshot
from tfllm import runs
from tfllm.cli import main
from tfllm.errors import RunDirError


def _one_line_error(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def old_run(tiny_run, tmp_path):
    """A copy of a complete run that a failing command must leave as it was."""
    path = str(tmp_path / "old")
    shutil.copytree(tiny_run, path)
    return path


def test_failed_overwrite_keeps_the_old_run(old_run, tmp_path, capsys, labeled_tsv):
    before = snapshot(old_run)
    err = _one_line_error(["train", "--data", f"text:{tmp_path}/missing.txt", "--steps", "5",
                           "--out", old_run, "--overwrite"], capsys)
    assert "no files match" in err
    err = _one_line_error(["train", "--data", f"text:{tmp_path}/missing.txt", "--steps", "5",
                           "--lr", "2", "--out", old_run, "--overwrite"], capsys)
    assert "--lr must be a finite number in (0, 1]" in err
    err = _one_line_error(["finetune", "--from-scratch", "--data", f"tsv:{tmp_path}/none.tsv",
                           "--out", old_run, "--overwrite"], capsys)
    assert "none.tsv" in err
    (tmp_path / "ckpt").mkdir()
    err = _one_line_error(["import-hf", "--checkpoint", str(tmp_path / "ckpt"), "--out",
                           old_run, "--overwrite"], capsys)
    assert "config.json" in err
    assert snapshot(old_run) == before


def test_a_directory_that_is_not_a_run_is_never_deleted(tmp_path, capsys, small_corpus,
                                                        labeled_tsv):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"\xff\xd8 not a run")
    for argv in (["train", "--data", small_corpus, "--steps", "5", "--out", str(mine),
                  "--overwrite"],
                 ["finetune", "--from-scratch", "--data", labeled_tsv, "--out", str(mine),
                  "--overwrite"],
                 ["import-hf", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(mine),
                  "--overwrite"]):
        err = _one_line_error(argv, capsys)
        assert f"{mine} exists and is not a tfllm run (no tfllm marker" in err
        assert "does not replace it, even with --overwrite" in err
    assert (mine / "holiday.jpg").read_bytes() == b"\xff\xd8 not a run"


def test_out_naming_a_file_is_one_line(tmp_path, capsys, small_corpus, labeled_tsv):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    for argv in (["train", "--data", small_corpus, "--out", str(target)],
                 ["finetune", "--from-scratch", "--data", labeled_tsv, "--out", str(target)],
                 ["import-hf", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(target)]):
        assert "is a file, not a directory" in _one_line_error(argv, capsys)
    assert target.read_text() == "keep me"


def test_resume_of_a_missing_or_empty_directory_says_so(tmp_path, capsys):
    err = _one_line_error(["train", "--resume", "--out", str(tmp_path / "nowhere")], capsys)
    assert "--resume" in err and "does not exist" in err
    (tmp_path / "empty").mkdir()
    err = _one_line_error(["train", "--resume", "--out", str(tmp_path / "empty")], capsys)
    assert "is not a tfllm run directory" in err and "--data" not in err


def test_truncated_model_file_is_reported_as_damaged(old_run, capsys):
    path = os.path.join(old_run, runs.MODEL)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(RunDirError, match="damaged or incomplete"):
        runs.load(old_run)
    err = _one_line_error(["generate", "--run", old_run, "--prompt", "A"], capsys)
    assert "model.keras cannot be read" in err and "does not exist" not in err


def test_run_config_is_parsed_once_and_reread_when_rewritten(tmp_path, monkeypatch):
    run = tmp_path / "run"
    runs.write_run_config(str(run), {"objective": "clm", "model": {"max_len": 32}})
    opened = []
    real_open = open

    def counting_open(path, *args, **kwargs):
        if str(path).endswith("config.json"):
            opened.append(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    first = runs.read_run_config(str(run))
    first["model"]["max_len"] = 999  # a caller's change stays its own
    assert runs.read_run_config(str(run))["model"]["max_len"] == 32
    assert len(opened) == 1
    runs.write_run_config(str(run), {"objective": "clm", "model": {"max_len": 64}})
    assert runs.read_run_config(str(run))["model"]["max_len"] == 64
    (run / "config.json").write_text("[1, 2]")
    with pytest.raises(RunDirError, match="must hold a JSON object"):
        runs.read_run_config(str(run))
