"""Evaluation of a trained classifier: metrics, calibration, the operating point, uncertainty,
logits over a loader or a batch of images, and the plots of each."""
