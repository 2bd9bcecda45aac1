"""Measurements on models: gradient flow, receptive fields and throughput."""

from .gradients import gradient_profile, layer_response_stds, seed_mlp_gradients
from .receptive_field import (
    effective_receptive_field,
    measured_receptive_field,
    receptive_field_table,
    stacked_3x3,
)
from .throughput import measure_throughput

__all__ = [
    "effective_receptive_field",
    "gradient_profile",
    "layer_response_stds",
    "measure_throughput",
    "measured_receptive_field",
    "receptive_field_table",
    "seed_mlp_gradients",
    "stacked_3x3",
]
