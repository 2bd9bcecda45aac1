"""Figures for run folders: matplotlib on the non-interactive Agg backend, saved as PNG
atomically (an interrupted run never leaves half a picture behind)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from .files import atomic_write


def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 130) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    with atomic_write(path) as handle:
        handle.write(buffer.getvalue())
    return Path(path)
