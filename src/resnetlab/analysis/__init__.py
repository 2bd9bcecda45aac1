"""Measurements on models: gradient flow, receptive fields, throughput, saved activations and
representation similarity (linear CKA) and the Hessian of the loss."""

from .cka import CkaAccumulator, CkaResult, hsic_matrix, linear_cka, minibatch_cka
from .gradients import gradient_profile, layer_response_stds, seed_mlp_gradients
from .hessian import (
    LossHessian,
    eigenvalue_density,
    hutchinson_trace,
    lanczos,
    top_eigenvalues,
)
from .memory import saved_activation_bytes
from .receptive_field import (
    effective_receptive_field,
    measured_receptive_field,
    receptive_field_table,
    stacked_3x3,
)
from .throughput import measure_throughput

__all__ = [
    "CkaAccumulator",
    "CkaResult",
    "LossHessian",
    "effective_receptive_field",
    "eigenvalue_density",
    "gradient_profile",
    "hsic_matrix",
    "hutchinson_trace",
    "lanczos",
    "layer_response_stds",
    "linear_cka",
    "measure_throughput",
    "measured_receptive_field",
    "minibatch_cka",
    "receptive_field_table",
    "saved_activation_bytes",
    "seed_mlp_gradients",
    "stacked_3x3",
    "top_eigenvalues",
]
