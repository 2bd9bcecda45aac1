"""The receptive-field command: printed table, run folder, gradient check."""

from __future__ import annotations

import json

import pytest

from resnetlab.cli import main


@pytest.mark.slow
def test_cli_resnet20(tmp_path, capsys):
    out = tmp_path / "rf"
    assert main(["receptive-field", "resnet20", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "layer3.2.conv2" in printed and "2 stacked 3×3 = one 5×5: 18 vs 25 C²" in printed
    assert "measured from input gradients" in printed and "agrees" in printed
    result = json.loads((out / "receptive_field.json").read_text())
    assert result["measured"]["rf"] == result["final"]["rf"] == 81
    for name in ("config.json", "run.json", "receptive_field.csv", "stages.csv",
                 "receptive_field.png", "effective_receptive_field.png"):  # fmt: skip
        assert (out / name).is_file(), name


def test_cli_unknown_model(capsys):
    assert main(["receptive-field", "resnet2O"]) == 2
    assert "resnet20" in capsys.readouterr().err
