"""The arms of the degradation experiment: the plain and residual nets, and nets that start as
the identity without skips (Dirac) or with a zero-initialised residual scale (SkipInit/ReZero).

An arm is a name (``plain``, ``resnet``, ``plain-dirac``, ``resnet-scale``), the kind of net it
builds (plain or residual) and the model options it adds; the paper's two claims are checked
on the ``plain`` and ``resnet`` arms only, the others are shown next to them.
"""

from __future__ import annotations

from typing import Any

from ..errors import ResnetlabError

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("plain", {}),
    "resnet": ("residual", {}),
    "plain-dirac": ("plain", {"init": "dirac"}),
    "resnet-scale": ("residual", {"residual_scale": True}),
}
DEFAULT_VARIANTS = ["plain", "resnet"]
KIND_OF_ARM = {"plain": "plain", "resnet": "residual"}


def check_variants(names: list[str]) -> None:
    """Refuse unknown arms, naming the known ones."""
    bad = [n for n in names if n not in VARIANTS]
    if bad or not names:
        raise ResnetlabError(
            f"unknown variant {bad[0] if bad else '(none)'!r}. Use a comma-separated list of "
            f"{', '.join(VARIANTS)}."
        )


def arm_kind(variant: str) -> str:
    """The ``kind`` recorded for an arm: plain/residual for the paper's arms, else its name."""
    return KIND_OF_ARM.get(variant, variant)


def base_kind(kind: str) -> str:
    """plain or residual: the net an arm (or a recorded kind) builds."""
    return VARIANTS[kind][0] if kind in VARIANTS else kind


def arm_options(kind: str) -> dict[str, Any]:
    """The model options of a recorded kind (none for the paper's arms)."""
    return dict(VARIANTS[kind][1]) if kind in VARIANTS else {}
