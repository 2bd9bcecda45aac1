"""Experiment trackers (``--log tensorboard``, ``--log mlflow``) as engine callbacks.

They only observe: losses, errors, lr, images/s, evaluation metrics and the run's settings go
to the tracker, and at the end the run folder's report and records as artifacts. TensorBoard
writes to ``<run>/tensorboard``; MLflow logs to ``$MLFLOW_TRACKING_URI``, else to the local
SQLite store ``$RESNETLAB_HOME/mlflow/mlflow.db`` (artifacts in ``mlflow/artifacts`` beside it),
and records its run in ``<run>/mlflow.json``. A resumed run continues both: the same TensorBoard
folder (events logged after the checkpoint by the interrupted run are purged) and the same
MLflow run (steps it already holds are not logged twice).
"""

from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from ..download import resnetlab_home
from ..errors import ResnetlabError
from ..files import write_json
from .config import TrainConfig, check_trackers
from .state import Callback, TrainResult, TrainState

# The module each tracker needs, and the extra of pyproject.toml that installs it.
NEEDS = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}
TB_FOLDER = "tensorboard"
MLFLOW_RECORD = "mlflow.json"
EXPERIMENT = "resnetlab"  # MLflow experiment, unless $MLFLOW_EXPERIMENT_NAME names another
ARTIFACTS = ("config.json", "run.json", "metrics.csv", "report.html", "report.md")
PARAM_CHARS = 500  # MLflow servers before 2.x refuse longer parameter values


def require(name: str) -> ModuleType:
    """The module behind tracker ``name``, or one line saying which extra installs it."""
    module, extra = NEEDS[name]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ResnetlabError(
            f"--log {name} needs the {extra} package, which is not installed: "
            f"pip install 'resnetlab[{extra}]' (or pip install {extra})."
        ) from None


def flat_settings(config: TrainConfig) -> dict[str, str | int | float | bool]:
    """The settings as scalars (tuples, dicts and None as JSON text), for hparams and params."""
    return {key: value if isinstance(value, str | int | float | bool) else json.dumps(value)
            for key, value in config.to_dict().items()}  # fmt: skip


def scalars(prefix: str, record: dict[str, Any]) -> dict[str, float]:
    """A metrics record as ``prefix/key`` numbers (``kind`` and ``step`` are not metrics)."""
    return {f"{prefix}/{key}": float(value) for key, value in record.items()
            if key not in ("kind", "step") and isinstance(value, int | float)}  # fmt: skip


class TensorBoardCallback(Callback):
    """Event files in ``<run>/tensorboard``: train and eval scalars, hparams, the report text."""

    def __init__(self, out_dir: str | Path, config: TrainConfig) -> None:
        self.folder = Path(out_dir) / TB_FOLDER
        self.config = config
        self.tensorboard = require("tensorboard")
        self.summary = importlib.import_module(f"{NEEDS['tensorboard'][0]}.summary")
        self.writer: Any = None

    def on_start(self, state: TrainState) -> None:
        if not state.dist.main:
            return
        resumed = state.step > 0
        # Resuming at step S: events the interrupted run wrote after S are hidden (purged).
        self.writer = self.tensorboard.SummaryWriter(
            str(self.folder), purge_step=state.step + 1 if resumed else None
        )
        if not resumed:
            metrics = {f"eval/{split}_error": 0.0 for split in self.config.eval_splits}
            for summary in self.summary.hparams(flat_settings(self.config), metrics):
                self.writer.file_writer.add_summary(summary)
            text = json.dumps(self.config.to_dict(), indent=2)
            self.writer.add_text("config", f"```\n{text}\n```", 0)

    def on_log(self, state: TrainState, record: dict[str, Any]) -> None:
        self._write("train", state, record)

    def on_eval(self, state: TrainState, record: dict[str, Any]) -> None:
        self._write("eval", state, {k: v for k, v in record.items() if k != "epoch"})

    def _write(self, prefix: str, state: TrainState, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for tag, value in scalars(prefix, record).items():
            self.writer.add_scalar(tag, value, record.get("step", state.step))
        self.writer.flush()  # once per log interval: live in TensorBoard, little lost on a kill

    def on_end(self, state: TrainState, result: TrainResult) -> None:
        if self.writer is None:
            return
        report = Path(result.out_dir) / "report.md"
        if report.is_file():
            self.writer.add_text("report", report.read_text(), state.step)
        self.writer.close()
        self.writer = None


class MLflowCallback(Callback):
    """One MLflow run per run folder: params, train/eval metrics by step, artifacts at the end."""

    def __init__(self, out_dir: str | Path, config: TrainConfig) -> None:
        self.out = Path(out_dir)
        self.config = config
        self.mlflow = require("mlflow")
        self.client: Any = None
        self.run_id: str | None = None
        self.logged: dict[str, int] = {}  # resumed: the last step the MLflow run holds per kind

    def on_start(self, state: TrainState) -> None:
        if not state.dist.main:
            return
        saved = read_record(self.out) if self.config.resume else None
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (saved or {}).get("tracking_uri") \
            or default_tracking_uri()  # fmt: skip
        self.client = self.mlflow.tracking.MlflowClient(uri)
        if saved is not None:
            self.run_id = str(saved["run_id"])
            self._check_run(uri)
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, f"resnetlab.resumed_at_step.{state.step}", "true")
            self.logged = {kind: self._last_step(kind) for kind in ("train", "eval")}
            return
        run = self.client.create_run(
            self._experiment_id(uri), run_name=self.out.name,
            tags={"resnetlab.model": self.config.model, "resnetlab.data": self.config.data,
                  "resnetlab.run_folder": str(self.out.resolve())},
        )  # fmt: skip
        self.run_id = run.info.run_id
        Param = self.mlflow.entities.Param
        params = [Param(k, str(v)[:PARAM_CHARS]) for k, v in flat_settings(self.config).items()]
        self.client.log_batch(self.run_id, params=params)
        write_json(self.out / MLFLOW_RECORD, {"run_id": self.run_id, "tracking_uri": uri,
                                             "experiment_id": run.info.experiment_id})  # fmt: skip

    def _experiment_id(self, uri: str) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return self.client.create_experiment(name, artifact_location=artifact_location(uri))

    def _check_run(self, uri: str) -> None:
        try:
            self.client.get_run(self.run_id)
        except self.mlflow.exceptions.MlflowException:
            raise ResnetlabError(
                f"the MLflow run {self.run_id} recorded in {self.out / MLFLOW_RECORD} is not in "
                f"the store {uri}; set MLFLOW_TRACKING_URI to the store it was logged to, or "
                f"delete {MLFLOW_RECORD} to continue in a new MLflow run."
            ) from None

    def _last_step(self, kind: str) -> int:
        """The last step of this kind the run holds (its first metric of that kind tells)."""
        run = self.client.get_run(self.run_id)
        keys = sorted(k for k in run.data.metrics if k.startswith(f"{kind}/"))
        if not keys:
            return -1
        return max(m.step for m in self.client.get_metric_history(self.run_id, keys[0]))

    def on_log(self, state: TrainState, record: dict[str, Any]) -> None:
        self._write("train", state, record)

    def on_eval(self, state: TrainState, record: dict[str, Any]) -> None:
        self._write("eval", state, {k: v for k, v in record.items() if k != "epoch"})

    def _write(self, kind: str, state: TrainState, record: dict[str, Any]) -> None:
        step = int(record.get("step", state.step))
        if self.client is None or step <= self.logged.get(kind, -1):
            return
        now = int(time.time() * 1000)
        Metric = self.mlflow.entities.Metric
        metrics = [Metric(k, v, now, step) for k, v in scalars(kind, record).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def on_end(self, state: TrainState, result: TrainResult) -> None:
        if self.client is None:
            return
        log_artifacts(self.client, str(self.run_id), Path(result.out_dir))
        self.client.set_terminated(self.run_id, "FINISHED")
        self.client = None


Tracker = TensorBoardCallback | MLflowCallback
FACTORIES: dict[str, type[Tracker]] = {"tensorboard": TensorBoardCallback, "mlflow": MLflowCallback}


def tracker_callbacks(
    names: tuple[str, ...] | list[str], out_dir: str | Path, config: TrainConfig
) -> list[Tracker]:
    """The callbacks for ``--log NAME,...`` (each name once); a missing package fails here."""
    check_trackers(names)
    return [FACTORIES[name](out_dir, config) for name in dict.fromkeys(names)]


def default_tracking_uri() -> str:
    """The local SQLite store under ``$RESNETLAB_HOME`` (MLflow 3 retired plain-file stores)."""
    folder = resnetlab_home() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'mlflow.db').resolve()}"


def artifact_location(uri: str) -> str | None:
    """A local SQLite store keeps artifacts in ``artifacts/`` beside its file (MLflow would
    use ``./mlruns`` in the working folder); a server keeps its own artifact root (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()


def read_record(out_dir: str | Path) -> dict[str, Any] | None:
    """``<run>/mlflow.json`` (the MLflow run of this folder), or None when there is none."""
    path = Path(out_dir) / MLFLOW_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def log_artifacts(client: Any, run_id: str, out_dir: Path) -> list[str]:
    """Upload the report (when the run folder has one) and the run's records; their names."""
    names = [name for name in ARTIFACTS if (out_dir / name).is_file()]
    for name in names:
        client.log_artifact(run_id, str(out_dir / name))
    return names


def attach_report(out_dir: str | Path) -> list[str]:
    """Upload a report written after training ended to the folder's MLflow run, if it has one."""
    saved = read_record(out_dir)
    if saved is None:
        return []
    mlflow = require("mlflow")
    uri = os.environ.get("MLFLOW_TRACKING_URI") or saved["tracking_uri"]
    return log_artifacts(mlflow.tracking.MlflowClient(uri), saved["run_id"], Path(out_dir))
