"""The first commands: `resnetlab models` and `resnetlab summary`, and their user errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from resnetlab.cli import main


def test_models_lists_the_registry(capsys) -> None:
    assert main(["models", "resnet5*"]) == 0
    out = capsys.readouterr().out
    assert "resnet50" in out and "25,557,032" in out and "resnet56" in out
    assert "vgg16" not in out


def test_summary_prints_stages_and_total(capsys) -> None:
    assert main(["summary", "resnet50"]) == 0
    out = capsys.readouterr().out
    assert "layer4" in out and "2048 x 7 x 7" in out and "4.09G" in out
    assert "published" in out


def test_summary_of_the_seed_fine_tuning_example(capsys) -> None:
    argv = ["summary", "resnet50", "--num-classes", "2", "--head-dropout", "0.5"]
    assert main([*argv, "--freeze", "layer1,layer2"]) == 0
    out = capsys.readouterr().out
    total = out.splitlines()[-1].split()
    assert total[:2] == ["total", "2"] and total[2:4] == ["23,512,130", "22,076,738"]
    assert "published" not in out


@pytest.mark.slow
def test_user_errors_are_one_line_with_exit_code_2() -> None:
    for argv, needle in [
        (["summary", "resnt50"], "Did you mean resnet50"),
        (["models", "nothing*"], "no model matches"),
        (["summary", "resnet50", "--freeze", "layer9"], "unknown stage 'layer9'"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "resnetlab", *argv], capture_output=True, text=True
        )
        assert result.returncode == 2
        assert needle in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_models_and_summary_show_the_bag_of_tricks_resnets(capsys) -> None:
    assert main(["models", "resnet*d"]) == 0
    out = capsys.readouterr().out
    assert "resnet50d" in out and "25,576,264" in out and "resnet-d" in out
    assert main(["summary", "resnet50d"]) == 0
    out = capsys.readouterr().out
    assert "ResNet-50-D" in out and "25,576,264" in out and "4.33G" in out
    assert "published" not in out  # no figure is quoted for it


def test_summary_of_resnet50c_by_name(capsys) -> None:
    assert main(["summary", "resnet50c"]) == 0
    out = capsys.readouterr().out
    assert "ResNet-50-C" in out and "25,576,264" in out and "28,768" in out  # the deep stem
