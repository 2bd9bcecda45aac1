"""One voice: results on stdout, messages and progress on stderr, ``--quiet`` silencing both,
and a progress bar that writes a line every 5 % (not every step) when it is not on a terminal."""

from __future__ import annotations

import io

import pytest

from resnetlab import console
from resnetlab.cli import main
from resnetlab.console import Bar, say
from resnetlab.train import train
from test_train_length import small, toy_bundle, write_npz


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def loud():
    """Each test starts with messages on and leaves them as it found them."""
    old = console.set_quiet(False)
    yield
    console.set_quiet(old)


def test_say_writes_a_line_to_stderr_and_quiet_silences_it(capsys) -> None:
    say("run folder", "runs/a")
    assert capsys.readouterr() == ("", "run folder runs/a\n")
    console.set_quiet(True)
    say("not shown")
    assert capsys.readouterr() == ("", "")


def test_a_bar_in_a_log_writes_a_line_every_5_percent_and_the_end() -> None:
    log = io.StringIO()
    with Bar(total=300, desc="train", file=log) as bar:
        for _ in range(300):
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and log.getvalue().endswith("\n")
    assert len(lines) == 21  # 0 %, 5 %, ..., 100 %
    assert [line.split("%")[0].split()[-1] for line in lines[:3]] == ["0", "5", "10"]
    assert "300/300" in lines[-1] and all(line.startswith("train:") for line in lines)


def test_a_bar_in_a_log_ends_with_the_last_count_even_when_not_kept() -> None:
    log = io.StringIO()
    for _ in Bar(range(7), desc="points", leave=False, file=log):
        pass
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert len(lines) == 8 and "7/7" in lines[-1]  # each item is a band of its own
    log = io.StringIO()
    with Bar(desc="bytes", file=log) as bar:  # no total: a line a minute at most, and the end
        bar.update(10)
        bar.update(5)
    assert [line.split(" ")[1] for line in log.getvalue().splitlines()] == ["0it", "15it"]


def test_a_bar_on_a_terminal_is_redrawn_in_place() -> None:
    screen = Terminal()
    with Bar(total=300, file=screen, mininterval=0, miniters=1) as bar:
        for _ in range(300):
            bar.update(1)
    assert screen.getvalue().count("\r") > 100  # tqdm's own drawing, unchanged


def test_quiet_turns_every_bar_off() -> None:
    console.set_quiet(True)
    log = io.StringIO()
    with Bar(total=10, file=log) as bar:
        bar.update(10)
    assert log.getvalue() == ""


def test_a_training_run_in_a_log_writes_a_few_progress_lines(tmp_path, capsys) -> None:
    """40 steps with the bar on, stderr captured (not a terminal): 21 bar lines (0 %, 5 %, ...,
    100 %), not an update per step joined by carriage returns."""
    config = small(tmp_path, max_iters=40, batch_size=2, log_every=20, progress=True)
    train(config, data=toy_bundle())
    err = capsys.readouterr().err
    bar_lines = [line for line in err.splitlines() if line.startswith("train:")]
    assert "\r" not in err and len(bar_lines) == 21, err
    assert "40/40" in bar_lines[-1] and "loss=" in bar_lines[-1]


def test_quiet_works_before_and_after_the_command(tmp_path, capsys) -> None:
    for argv in (["--quiet", "models", "resnet5*"], ["models", "resnet5*", "--quiet"]):
        assert main(argv) == 0
        assert "resnet50c" in capsys.readouterr().out  # results stay on stdout
    assert not console.is_quiet()  # main restores the state it found
    run = str(tmp_path / "run")
    argv = ["train", "--model", "resnet20", "--data", "synthetic", "--out", run]
    assert main(argv) == 2
    assert "resnetlab train: error:" in capsys.readouterr().err  # errors are never silenced
    assert main(["--quiet", *argv]) == 2
    assert "resnetlab train: error:" in capsys.readouterr().err


def test_quiet_training_prints_its_results_and_nothing_else(tmp_path, capsys) -> None:
    data = tmp_path / "set.npz"
    write_npz(data, n_train=16)

    def argv(out: str) -> list[str]:
        return ["train", "--model", "resnet20", "--data", str(data), "--out", str(tmp_path / out),
                "--max-iters", "2", "--batch-size", "4", "--eval-every", "2"]  # fmt: skip

    assert main([*argv("quiet"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "run folder:" in out and "report:" in out
    assert main(argv("loud")) == 0
    err = capsys.readouterr().err
    assert "training resnet20 for 2 iterations" in err and "train:" in err
