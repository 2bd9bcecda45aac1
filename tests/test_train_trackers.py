"""``--log tensorboard|mlflow``: read back what the trackers wrote, a resume included."""

from __future__ import annotations

import json
import socket
import sys
import time

import pytest

import resnetlab.train.setup as train_setup
from resnetlab.cli import main
from resnetlab.errors import ResnetlabError
from resnetlab.models import CifarResNet
from resnetlab.train import Callback, TrainConfig, train
from resnetlab.train.trackers import (
    MLflowCallback,
    TensorBoardCallback,
    attach_report,
    default_tracking_uri,
    read_record,
)
from test_train_engine import bundle, config


class CrashAt(Callback):
    """Fails at a step after a log but before the next checkpoint, as a killed run would."""

    def __init__(self, step: int, error: type[BaseException] = RuntimeError) -> None:
        self.step, self.error = step, error

    def on_step(self, state) -> None:
        if state.step == self.step:
            raise self.error("simulated crash")


class WritesReport(Callback):
    """Stands in for a report written at the end of the run, before the trackers' on_end."""

    def on_end(self, state, result) -> None:
        (result.out_dir / "report.html").write_text("<html>report</html>")


def settings(tmp_path, log, **changes):
    values = dict(max_iters=8, eval_every=4, checkpoint_every=4, log_every=2, batch_size=16)
    return config(tmp_path, log=log, **{**values, **changes})


def tiny(**changes):
    return train(model=CifarResNet(8, num_classes=4), data=bundle(n=64, size=8), **changes)


def crash_then_resume(tmp_path, log, end=()):
    """Steps 1-7 (checkpoint at 4, logs at 2, 4, 6), a crash, then a resume to step 8."""
    with pytest.raises(RuntimeError, match="simulated crash"):
        tiny(config=settings(tmp_path, log), callbacks=[CrashAt(7)])
    return tiny(config=settings(tmp_path, log, resume=True), callbacks=end)


def jsonl(run, kind):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if r["kind"] == kind}


@pytest.mark.slow
def test_tensorboard_events_read_back_and_a_resume_continues_the_folder(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    crash_then_resume(tmp_path, ("tensorboard",))
    run = tmp_path / "run"
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one folder
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/error", "train/lr", "train/images_per_s"} <= tags
    assert {"eval/val_error", "eval/test_error", "eval/val_loss"} <= tags
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [2, 4, 6, 8]  # step 6 of the crashed run was purged
    train_records, eval_records = jsonl(run, "train"), jsonl(run, "eval")
    for event in loss:
        assert event.value == pytest.approx(train_records[event.step]["loss"], rel=1e-6)
    for event in events.Scalars("train/lr"):
        assert event.value == pytest.approx(train_records[event.step]["lr"], rel=1e-6)
    errors = events.Scalars("eval/val_error")
    assert [e.step for e in errors] == [4, 8]
    for event in errors:
        assert event.value == pytest.approx(eval_records[event.step]["val_error"], rel=1e-6)
    assert events.PluginTagToContent("hparams")  # the run's settings, for the HParams tab
    assert "config/text_summary" in events.Tags()["tensors"]


@pytest.mark.slow
def test_mlflow_run_holds_params_metrics_artifacts_and_a_resume_continues_it(
    tmp_path, home, monkeypatch
):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # honoured instead of the default store
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "trackers-test")
    crash_then_resume(tmp_path, ("mlflow",), end=[WritesReport()])
    run = tmp_path / "run"
    record = read_record(run)
    assert record["tracking_uri"] == uri
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("trackers-test")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [
        record["run_id"]
    ]  # the resume continued the same MLflow run
    mlrun = client.get_run(record["run_id"])
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["lr"] == "0.05" and mlrun.data.params["log"] == '["mlflow"]'
    assert mlrun.data.params["model"] == "resnet20"
    train_records, eval_records = jsonl(run, "train"), jsonl(run, "eval")
    history = client.get_metric_history(record["run_id"], "train/loss")
    assert sorted(m.step for m in history) == [2, 4, 6, 8]  # no step twice
    for metric in history:
        assert metric.value == pytest.approx(train_records[metric.step]["loss"], rel=1e-9)
    images = client.get_metric_history(record["run_id"], "train/images_per_s")
    assert len(images) == 4 and all(m.value > 0 for m in images)
    errors = client.get_metric_history(record["run_id"], "eval/test_error")
    assert sorted((m.step, m.value) for m in errors) == [
        (s, pytest.approx(eval_records[s]["test_error"])) for s in (4, 8)
    ]
    assert mlrun.info.artifact_uri.startswith((tmp_path / "artifacts").resolve().as_uri())
    artifacts = {a.path for a in client.list_artifacts(record["run_id"])}
    assert {"config.json", "run.json", "metrics.csv", "report.html"} <= artifacts
    (run / "report.md").write_text("# report\n")  # a report written after training ended
    assert "report.md" in attach_report(run)
    assert "report.md" in {a.path for a in client.list_artifacts(record["run_id"])}


@pytest.mark.slow
def test_mlflow_default_store_is_under_resnetlab_home(tmp_path, home, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    tiny(config=settings(tmp_path, ("mlflow",), max_iters=2, eval_splits=("val",)))
    record = read_record(tmp_path / "run")
    assert record["tracking_uri"] == default_tracking_uri()
    assert (home / "mlflow" / "mlflow.db").is_file()
    client = MlflowClient(record["tracking_uri"])
    artifact_uri = client.get_run(record["run_id"]).info.artifact_uri
    assert artifact_uri.startswith((home / "mlflow" / "artifacts").resolve().as_uri())
    assert (home / "mlflow" / "artifacts").is_dir()


@pytest.mark.parametrize(
    ("name", "module"), [("mlflow", "mlflow"), ("tensorboard", "torch.utils.tensorboard")]
)
def test_a_tracker_whose_package_is_missing_names_its_extra(tmp_path, capsys, monkeypatch,
                                                             name, module):  # fmt: skip
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    with pytest.raises(ResnetlabError, match=rf"pip install 'resnetlab\[{name}\]'"):
        train(config(tmp_path, log=(name,)), data=bundle())
    code = main(["train", "--out", str(tmp_path / "cli"), "--log", name, "--max-iters", "1"])
    err = capsys.readouterr().err
    assert code == 2 and f"resnetlab[{name}]" in err and len(err.strip().splitlines()) == 1


def test_unknown_tracker_lists_the_valid_ones(tmp_path, capsys):
    with pytest.raises(ResnetlabError, match="valid: tensorboard, mlflow"):
        TrainConfig(log=("wandb",))
    assert main(["train", "--out", str(tmp_path / "x"), "--log", "tensorboard,wandb"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'wandb'" in err and "valid: tensorboard, mlflow" in err and "\n" not in err
    assert TrainConfig(log="tensorboard,mlflow").log == ("tensorboard", "mlflow")


def test_trackers_observe_only_so_cuda_graphs_stay_allowed(tmp_path, monkeypatch):
    seen = []
    real = train_setup.make_plan

    def spy(*args, hooked, **kwargs):
        seen.append(hooked)
        return real(*args, hooked=hooked, **kwargs)

    monkeypatch.setattr(train_setup, "make_plan", spy)
    tiny(config=settings(tmp_path, ("tensorboard",), max_iters=2, eval_splits=("val",)))
    assert seen == [False]  # with only trackers the run is not "hooked"
    hooks = [name for name in vars(Callback) if name.startswith("on_")]
    for tracker in (TensorBoardCallback, MLflowCallback):
        assert all(callable(getattr(tracker, hook)) for hook in hooks), tracker


def test_finetune_and_degradation_take_log(tmp_path, capsys):
    from resnetlab.cli import build_parser
    from resnetlab.cli.finetune import _options
    from resnetlab.finetune.finetune import engine_config

    args = build_parser().parse_args(["finetune", "data", "--out", str(tmp_path / "f"),
                                      "--log", "tensorboard,mlflow"])  # fmt: skip
    options = _options(args, "finetune")
    assert options.log == ("tensorboard", "mlflow")
    prep = type("Prep", (), {"mean": (0.5,), "std": (0.25,), "crop": 32})()
    phase = engine_config(options, 0.01, 1.0, 4, 8, prep, None, tmp_path / "f" / "phase")
    assert phase.log == ("tensorboard", "mlflow")
    assert main(["finetune", "data", "--out", str(tmp_path / "g"), "--log", "wandb"]) == 2
    assert "valid: tensorboard, mlflow" in capsys.readouterr().err
    assert main(["degradation", "--data", "synthetic", "--out", str(tmp_path / "d"),
                 "--log", "tensorbord"]) == 2  # fmt: skip
    assert "valid: tensorboard, mlflow" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before any work


@pytest.mark.slow
def test_train_command_attaches_its_report_to_the_mlflow_run(tmp_path, home, monkeypatch):
    """``resnetlab train`` renders its report after training; the MLflow run still gets it."""
    from mlflow.tracking import MlflowClient

    from resnetlab.cli import main
    from test_train_length import write_npz

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    data, out = tmp_path / "set.npz", tmp_path / "run"
    write_npz(data)
    argv = ["train", "--model", "resnet20", "--data", str(data), "--out", str(out),
            "--batch-size", "8", "--max-iters", "2", "--log-every", "1", "--no-progress",
            "--log", "mlflow"]  # fmt: skip
    assert main(argv) == 0
    assert (out / "report.html").is_file()
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(read_record(out)["run_id"])}
    assert {"report.html", "config.json", "run.json"} <= artifacts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def warnings_in(err: str) -> list[str]:
    """The tracker warning lines of a stderr, after checking it holds no traceback."""
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("resnetlab: warning: --log")]


@pytest.mark.slow
def test_an_artifact_store_that_cannot_be_written_is_a_warning_not_the_runs_failure(
    tmp_path, home, monkeypatch, capsys
):
    """Training, the test evaluation, per_class.json and the report all happen; a resume too."""
    from mlflow.tracking import MlflowClient

    from test_train_length import write_npz

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    (tmp_path / "artifacts").write_text("a file where the artifact folder belongs")
    data, out = tmp_path / "set.npz", tmp_path / "run"
    write_npz(data)
    argv = ["train", "--model", "resnet20", "--data", str(data), "--out", str(out),
            "--batch-size", "8", "--max-iters", "2", "--log-every", "1", "--no-progress",
            "--log", "mlflow"]  # fmt: skip
    assert main(argv) == 0
    lines = warnings_in(capsys.readouterr().err)
    assert lines and all("mlflow" in line and "the run goes on" in line for line in lines)
    assert (out / "per_class.json").is_file() and (out / "report.html").is_file()
    client = MlflowClient(uri)
    run_id = read_record(out)["run_id"]
    assert client.get_run(run_id).info.status == "FINISHED"  # the tracking store still works
    assert len(client.get_metric_history(run_id, "train/loss")) == 2
    assert main([*argv[:-2], "--max-iters", "3", "--resume"]) == 0  # continues the MLflow run
    assert warnings_in(capsys.readouterr().err)
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == [1, 2, 3]
    assert json.loads((out / "run.json").read_text())["status"] == "completed"


class Failing:
    """A stand-in for a tracker's client or writer whose every call raises, naming the calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            self.calls.append(name)
            raise OSError(28, "No space left on device\nsecond line")

        return fail


def test_a_tracker_that_fails_mid_run_warns_once_and_the_run_goes_on(tmp_path, capsys):
    """Every tracker call is fail-soft: the first failure is one line and turns it off."""
    failing = Failing()

    class BrokenAfterStart(Callback):
        def on_start(self, state) -> None:  # runs after the trackers' on_start
            tracker.writer = failing

    short = settings(tmp_path, (), max_iters=4, eval_every=2, eval_splits=("val",))
    tracker = TensorBoardCallback(tmp_path / "run", short)
    result = tiny(config=short, callbacks=[tracker, BrokenAfterStart()])
    assert result.steps == 4 and (tmp_path / "run" / "last.pt").is_file()
    lines = warnings_in(capsys.readouterr().err)
    assert len(lines) == 1 and "No space left on device second line" in lines[0]
    assert "--log tensorboard could not log the train metrics" in lines[0]
    assert failing.calls == ["add_scalar", "close"]  # turned off after the first failure


def test_a_tracker_that_fails_to_start_is_a_warning(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "run" / "tensorboard"))

    monkeypatch.setattr("torch.utils.tensorboard.SummaryWriter", refuse)
    result = tiny(config=settings(tmp_path, ("tensorboard",), max_iters=2, eval_splits=("val",)))
    assert result.steps == 2
    lines = warnings_in(capsys.readouterr().err)
    assert len(lines) == 1 and "could not start (PermissionError" in lines[0]


def test_an_mlflow_store_nothing_answers_at_is_one_line_before_any_work(
    tmp_path, home, monkeypatch, capsys
):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "run"
    started = time.monotonic()
    code = main(["train", "--out", str(out), "--log", "mlflow", "--max-iters", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert uri in err and "MLFLOW_TRACKING_URI" in err and "Connection" in err
    assert time.monotonic() - started < 30  # not MLflow's minutes of retries
    assert not out.exists()  # refused before the run folder was made


def test_attaching_the_report_is_fail_soft(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    run.mkdir()
    record = {"run_id": "x", "tracking_uri": f"http://127.0.0.1:{free_port()}"}
    (run / "mlflow.json").write_text(json.dumps(record))
    (run / "report.html").write_text("<html></html>")
    started = time.monotonic()
    assert attach_report(run) == []
    assert time.monotonic() - started < 30  # not MLflow's minutes of retries
    lines = warnings_in(capsys.readouterr().err)
    assert len(lines) == 1 and "attach the report" in lines[0]


def test_a_resume_with_a_broken_mlflow_record_is_one_line(tmp_path, home, capsys):
    config_ = settings(tmp_path, ("mlflow",), resume=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mlflow.json").write_text("{not json")
    with pytest.raises(ResnetlabError, match="is not a record of an MLflow run; delete it"):
        MLflowCallback(tmp_path / "run", config_)


@pytest.mark.slow
def test_an_mlflow_run_that_stops_early_is_marked_failed_or_killed(tmp_path, home, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    status = {}
    for error in (RuntimeError, KeyboardInterrupt):
        folder = tmp_path / error.__name__
        with pytest.raises(error, match="simulated crash"):
            tiny(config=settings(folder, ("mlflow",)), callbacks=[CrashAt(5, error)])
        status[error] = MlflowClient(uri).get_run(read_record(folder / "run")["run_id"]).info
    assert status[RuntimeError].status == "FAILED" and status[KeyboardInterrupt].status == "KILLED"
    assert status[RuntimeError].end_time is not None
    tiny(config=settings(tmp_path / "RuntimeError", ("mlflow",), resume=True))
    run_id = read_record(tmp_path / "RuntimeError" / "run")["run_id"]
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"
