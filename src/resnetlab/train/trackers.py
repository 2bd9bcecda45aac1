"""Experiment trackers (``--log tensorboard``, ``--log mlflow``) as engine callbacks.

They only observe: losses, errors, lr, images/s, evaluation metrics and the run's settings go
to the tracker, and at the end the run folder's report and records as artifacts. TensorBoard
writes to ``<run>/tensorboard``; MLflow logs to ``$MLFLOW_TRACKING_URI``, else to the local
SQLite store ``$RESNETLAB_HOME/mlflow/mlflow.db`` (artifacts in ``mlflow/artifacts`` beside it),
and records its run in ``<run>/mlflow.json``. A resumed run continues both: the same TensorBoard
folder (events logged after the checkpoint by the interrupted run are purged) and the same
MLflow run (steps it already holds are not logged twice).

A tracker observes; its failure is never the run's. The MLflow store is reached while the run
is prepared, so a store that cannot be used at all is one line (exit 2) before any work; after
that every call to a tracker is fail-soft (:class:`Tracker`): its first failure prints one
warning line and turns it off, and training, evaluation and the report go on.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import socket
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch.distributed as torch_dist

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
WHY_CHARS = 300  # a failure's reason in a warning or error line, cut to this length
CONNECT_TIMEOUT_S = 10  # to reach an http(s) store; MLflow's own client retries for minutes


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


def reason(exc: BaseException) -> str:
    """An exception as one short line: its type and message, whitespace collapsed."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= WHY_CHARS else text[: WHY_CHARS - 3] + "..."


def warn(tracker: str, doing: str, exc: BaseException) -> None:
    """One line on stderr: what a tracker could not do, and why; the run goes on."""
    print(f"resnetlab: warning: --log {tracker} could not {doing} ({reason(exc)}); the run "
          "goes on without it, its run folder holds everything", file=sys.stderr)  # fmt: skip


def is_main_process() -> bool:
    """Rank 0 under torchrun (the process group exists while a run is prepared), else True."""
    return not (torch_dist.is_available() and torch_dist.is_initialized()) or \
        torch_dist.get_rank() == 0  # fmt: skip


class Tracker(Callback):
    """An observing callback whose every call is fail-soft, in this one place: the first
    failure prints one warning line and turns the tracker off (no further calls, so a service
    that went away costs the run at most one timeout); nothing it raises reaches the engine.

    Subclasses implement ``start``, ``write`` (a train or eval record), ``finish`` and
    ``abort`` (the run stopped early: ``status`` as run.json records it).
    """

    name = ""

    def __init__(self, out_dir: str | Path, config: TrainConfig) -> None:
        self.out = Path(out_dir)
        self.config = config
        self.active = False  # started on the main process and not failed since

    def start(self, state: TrainState) -> None: ...
    def write(self, kind: str, state: TrainState, record: dict[str, Any]) -> None: ...
    def finish(self, state: TrainState, result: TrainResult) -> None: ...
    def abort(self, status: str) -> None: ...

    def on_start(self, state: TrainState) -> None:
        if state.dist.main:
            self.active = True
            self._soft("start", self.start, state)

    def on_log(self, state: TrainState, record: dict[str, Any]) -> None:
        self._soft("log the train metrics", self.write, "train", state, record)

    def on_eval(self, state: TrainState, record: dict[str, Any]) -> None:
        record = {k: v for k, v in record.items() if k != "epoch"}
        self._soft("log the evaluation", self.write, "eval", state, record)

    def on_end(self, state: TrainState, result: TrainResult) -> None:
        self._soft("finish its run", self.finish, state, result)
        self.active = False

    def on_abort(self, state: TrainState, status: str) -> None:
        self._soft("record how the run ended", self.abort, status)
        self.active = False

    def _soft(self, doing: str, call: Callable[..., None], *args: Any) -> None:
        if not self.active:
            return
        try:
            call(*args)
        except Exception as exc:  # whatever the service or its client raises
            self.active = False
            warn(self.name, doing, exc)
            self.abandon()

    def abandon(self) -> None:
        """Release what the tracker holds after a failure (errors here are ignored)."""


class TensorBoardCallback(Tracker):
    """Event files in ``<run>/tensorboard``: train and eval scalars, hparams, the report text."""

    name = "tensorboard"

    def __init__(self, out_dir: str | Path, config: TrainConfig) -> None:
        super().__init__(out_dir, config)
        self.folder = self.out / TB_FOLDER
        self.tensorboard = require("tensorboard")
        self.summary = importlib.import_module(f"{NEEDS['tensorboard'][0]}.summary")
        self.writer: Any = None

    def start(self, state: TrainState) -> None:
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

    def write(self, kind: str, state: TrainState, record: dict[str, Any]) -> None:
        for tag, value in scalars(kind, record).items():
            self.writer.add_scalar(tag, value, record.get("step", state.step))
        self.writer.flush()  # once per log interval: live in TensorBoard, little lost on a kill

    def finish(self, state: TrainState, result: TrainResult) -> None:
        report = Path(result.out_dir) / "report.md"
        if report.is_file():
            self.writer.add_text("report", report.read_text(), state.step)
        self.writer.close()
        self.writer = None

    def abort(self, status: str) -> None:
        self.writer.close()  # what was logged is kept; a resume purges what follows its step
        self.writer = None

    def abandon(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
            self.writer = None


class MLflowCallback(Tracker):
    """One MLflow run per run folder: params, train/eval metrics by step, artifacts at the end.

    The store is reached when the callback is made (while the run is prepared, before any
    work): one that cannot be used, or a resumed run's MLflow run missing from it, is one line.
    """

    name = "mlflow"

    def __init__(self, out_dir: str | Path, config: TrainConfig) -> None:
        super().__init__(out_dir, config)
        self.mlflow = require("mlflow")
        self.client: Any = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.logged: dict[str, int] = {}  # resumed: the last step the MLflow run holds per kind
        self.saved: dict[str, Any] | None = None
        self.uri: str | None = None
        if is_main_process():
            self._connect()

    def _connect(self) -> None:
        """Reach the store; on a resume find the folder's MLflow run, else the experiment."""
        self.saved = checked_record(self.out) if self.config.resume else None
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (self.saved or {}).get("tracking_uri")
        try:
            self.uri = str(uri) if uri else default_tracking_uri()
            check_reachable(self.uri)
            self.client = self.mlflow.tracking.MlflowClient(self.uri)
            if self.saved is not None:
                self.run_id = str(self.saved["run_id"])
                self.client.get_run(self.run_id)
            else:
                self.experiment_id = self._experiment_id(self.uri)
        except Exception as exc:
            missing = getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"
            if self.saved is not None and missing:
                raise ResnetlabError(
                    f"the MLflow run {self.run_id} recorded in {self.out / MLFLOW_RECORD} is not "
                    f"in the store {self.uri}; set MLFLOW_TRACKING_URI to the store it was logged "
                    f"to, or delete {MLFLOW_RECORD} to continue in a new MLflow run."
                ) from None
            where = self.uri or "under $RESNETLAB_HOME"
            raise ResnetlabError(
                f"--log mlflow cannot use the MLflow store {where} ({reason(exc)}); start "
                "its server or set MLFLOW_TRACKING_URI to a store that works, or drop "
                "--log mlflow."
            ) from None

    def start(self, state: TrainState) -> None:
        if self.saved is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, f"resnetlab.resumed_at_step.{state.step}", "true")
            self.logged = {kind: self._last_step(kind) for kind in ("train", "eval")}
            return
        run = self.client.create_run(
            self.experiment_id, run_name=self.out.name,
            tags={"resnetlab.model": self.config.model, "resnetlab.data": self.config.data,
                  "resnetlab.run_folder": str(self.out.resolve())},
        )  # fmt: skip
        self.run_id = run.info.run_id
        Param = self.mlflow.entities.Param
        params = [Param(k, str(v)[:PARAM_CHARS]) for k, v in flat_settings(self.config).items()]
        self.client.log_batch(self.run_id, params=params)
        write_json(self.out / MLFLOW_RECORD, {"run_id": self.run_id, "tracking_uri": self.uri,
                                             "experiment_id": run.info.experiment_id})  # fmt: skip

    def _experiment_id(self, uri: str) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return self.client.create_experiment(name, artifact_location=artifact_location(uri))

    def _last_step(self, kind: str) -> int:
        """The last step of this kind the run holds (its first metric of that kind tells)."""
        run = self.client.get_run(self.run_id)
        keys = sorted(k for k in run.data.metrics if k.startswith(f"{kind}/"))
        if not keys:
            return -1
        return max(m.step for m in self.client.get_metric_history(self.run_id, keys[0]))

    def write(self, kind: str, state: TrainState, record: dict[str, Any]) -> None:
        step = int(record.get("step", state.step))
        if step <= self.logged.get(kind, -1):
            return
        now = int(time.time() * 1000)
        Metric = self.mlflow.entities.Metric
        metrics = [Metric(k, v, now, step) for k, v in scalars(kind, record).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, state: TrainState, result: TrainResult) -> None:
        try:  # the artifact store may fail where the tracking store does not
            log_artifacts(self.client, str(self.run_id), Path(result.out_dir))
        finally:
            self.client.set_terminated(self.run_id, "FINISHED")

    def abort(self, status: str) -> None:
        """FAILED for an error or a divergence, KILLED for Ctrl-C or SIGTERM (a resume
        marks the run RUNNING again)."""
        stopped = status.startswith("interrupted")
        self.client.set_terminated(self.run_id, "KILLED" if stopped else "FAILED")


FACTORIES: dict[str, type[Tracker]] = {"tensorboard": TensorBoardCallback, "mlflow": MLflowCallback}


def tracker_callbacks(
    names: tuple[str, ...] | list[str], out_dir: str | Path, config: TrainConfig
) -> list[Tracker]:
    """The callbacks for ``--log NAME,...`` (each name once); a missing package, or an MLflow
    store that cannot be used, fails here (one line, before any work)."""
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


def check_reachable(uri: str) -> None:
    """Refuse an http(s) store nothing answers at, at once (MLflow would retry for minutes).
    Through a proxy the proxy connects, so nothing is checked here."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    if parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(
        parts.hostname
    ):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S):
        pass


def checked_record(out_dir: Path) -> dict[str, Any] | None:
    """:func:`read_record`, with a file that is not a record refused in one line."""
    try:
        saved = read_record(out_dir)
    except ValueError:  # not JSON, or not UTF-8
        saved = {}
    if saved is None or (isinstance(saved, dict) and {"run_id", "tracking_uri"} <= saved.keys()):
        return saved
    raise ResnetlabError(
        f"{out_dir / MLFLOW_RECORD} is not a record of an MLflow run; delete it to continue "
        "in a new MLflow run."
    )


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
    """Upload a report written after training ended to the folder's MLflow run, if it has one;
    fail-soft like every tracker call (a failure is one warning line and no names)."""
    try:
        saved = read_record(out_dir)
        if saved is None:
            return []
        mlflow = require("mlflow")
        uri = os.environ.get("MLFLOW_TRACKING_URI") or saved["tracking_uri"]
        check_reachable(uri)
        return log_artifacts(mlflow.tracking.MlflowClient(uri), saved["run_id"], Path(out_dir))
    except Exception as exc:
        warn("mlflow", "attach the report to its run", exc)
        return []
