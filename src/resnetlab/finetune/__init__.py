"""Fine-tuning: the two-phase recipe on the training engine, model cards, prediction,
evaluation with the practitioner's metric set, and the learning-rate range test.
"""

from ..artifact import Trained, export_input_size, load_trained, run_summary
from ..card import read_card, write_card
from ..data.preprocess import Preprocessing, prepare_images
from ..evaluation.logits import format_metrics, image_probabilities
from ..evaluation.metrics import classification_metrics, roc_curve
from .evaluate import evaluate_run
from .finetune import finetune
from .lr_find import LrFindResult, lr_find
from .options import FinetuneOptions, FinetuneResult, saved_options
from .predict import Prediction, expand_inputs, predict_files, render

__all__ = [
    "FinetuneOptions",
    "FinetuneResult",
    "LrFindResult",
    "Prediction",
    "Preprocessing",
    "Trained",
    "classification_metrics",
    "evaluate_run",
    "expand_inputs",
    "export_input_size",
    "finetune",
    "format_metrics",
    "image_probabilities",
    "load_trained",
    "lr_find",
    "predict_files",
    "prepare_images",
    "read_card",
    "render",
    "roc_curve",
    "run_summary",
    "saved_options",
    "write_card",
]
