"""Run folders: atomic files, resumable logs, and the checks on --out and --resume."""

from __future__ import annotations

import json

import pytest

from resnetlab import runfolder
from resnetlab.errors import ResnetlabError
from resnetlab.experiments import runner
from resnetlab.files import write_json


def test_torn_last_line_is_skipped_and_closed(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"a": 1}\n{"b": ')  # a write cut short
    assert runfolder.read_jsonl(log) == [{"a": 1}]
    runfolder.append_jsonl(log, {"c": 3})
    assert runfolder.read_jsonl(log) == [{"a": 1}, {"c": 3}]


def test_writes_leave_no_temporary_files(tmp_path):
    write_json(tmp_path / "x.json", {"k": [1, 2]})
    runfolder.write_csv(tmp_path / "x.csv", [{"a": 1}, {"a": 2, "b": 3}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv", "x.json"]
    assert json.loads((tmp_path / "x.json").read_text()) == {"k": [1, 2]}
    assert (tmp_path / "x.csv").read_text().splitlines() == ["a,b", "1,", "2,3"]


def test_run_folder_rules(tmp_path):
    with pytest.raises(ResnetlabError, match="--out"):
        runner.run_folder("x", None, resume=True)
    folder = runner.run_folder("x", tmp_path / "run")
    folder.mkdir()
    runner.start(folder, {"a": 1}, command="resnetlab x")
    info = json.loads((folder / "run.json").read_text())
    assert info["command"] == "resnetlab x" and info["versions"]["torch"] and info["machine"]["cpu"]
    assert info["status"] == "running" and info["timing"]["started"]
    with pytest.raises(ResnetlabError, match="not empty"):
        runner.run_folder("x", folder)
    runner.start(runner.run_folder("x", folder, resume=True), {"a": 1})
    with pytest.raises(ResnetlabError, match="other settings"):
        runner.start(folder, {"a": 2})
