"""What ``evaluate`` adds for a reviewer: the manifest columns a subgroup analysis reads, and
an evaluation on data other than the run's own recorded in its model card as an external
validation (which data, its fingerprint, split, images, date, metrics and the drop from the
internal test figures).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifact import Trained
from ..card import CARD_NAME, EXTERNAL_METRICS, add_external_validation
from ..console import say
from ..data.manifest import columns_of
from ..data.tensors import fingerprint
from ..errors import ResnetlabError
from ..runfolder import now


def subgroup_columns(part: Any, names: tuple[str, ...], data: str) -> dict[str, list[str]]:
    """{column: value per image} of the split for the named manifest columns; a name the
    manifest lacks, or data without a manifest, is one line naming the columns there are."""
    available = columns_of(part)
    wanted = [n.strip().lower() for n in names if n.strip()]
    missing = [n for n in wanted if n not in available]
    if missing:
        there = ", ".join(sorted(available)) if available else "none (no manifest.csv with "
        "columns beyond path,label,group,split)"  # fmt: skip
        raise ResnetlabError(
            f"--subgroups: {data} has no column {missing[0]!r}; its manifest's other columns "
            f"are: {there}; name one of those, or add the column to manifest.csv."
        )
    return {n: available[n] for n in wanted}


def internal_figures(card: dict[str, Any]) -> dict[str, float]:
    """The run's own test figures the external ones are compared with."""
    test = (card.get("metrics") or {}).get("test") or {}
    rates = ((card.get("clinical") or {}).get("test") or {}).get("at_threshold") or {}
    values = {"roc_auc": test.get("roc_auc"), "accuracy": test.get("accuracy"),
              "sensitivity": rates.get("sensitivity"),
              "specificity": rates.get("specificity")}  # fmt: skip
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float)}


def external_entry(
    card: dict[str, Any], data: str, source: str, split: str, metrics: dict[str, Any]
) -> dict[str, Any]:
    """The card's record of an evaluation on other data: AUC, sensitivity, specificity and
    accuracy, and how far each fell from the run's own test figures (internal - external)."""
    rates = ((metrics.get("clinical") or {}).get(split) or {}).get("at_threshold") or {}
    found = {"roc_auc": metrics.get("roc_auc"), "accuracy": metrics.get("accuracy"),
             "sensitivity": rates.get("sensitivity"),
             "specificity": rates.get("specificity")}  # fmt: skip
    values = {k: _number(found[k]) for k, _ in EXTERNAL_METRICS}
    internal = internal_figures(card)
    path = Path(source)
    return {
        "data": str(path.resolve()) if path.exists() else str(data),
        "name": path.name if path.exists() else str(data),
        "fingerprint": fingerprint(path) if path.exists() else None,
        "split": split,
        "images": int(metrics["n"]),
        "date": now(),
        "metrics": values,
        "internal_test": internal,
        "drop": {k: internal[k] - v for k, v in values.items() if v is not None and k in internal},
    }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def record_external(loaded: Trained, entry: dict[str, Any]) -> bool:
    """Add ``entry`` to the run's model card; a model without a run folder (a name or Hub id)
    or an older folder without a card is left alone, said in one line."""
    if loaded.run is None or not (Path(loaded.run) / CARD_NAME).is_file():
        say(f"external validation not recorded: {loaded.label} has no run folder with "
            f"{CARD_NAME} to record it in")  # fmt: skip
        return False
    add_external_validation(Path(loaded.run), entry)
    say(f"external validation on {entry['name']} ({entry['split']}) recorded in "
        f"{Path(loaded.run) / CARD_NAME}")  # fmt: skip
    return True
