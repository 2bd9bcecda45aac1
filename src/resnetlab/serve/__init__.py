"""``resnetlab serve``: a local web app and JSON API for one model (``pip install
resnetlab[serve]``).

Built on FastAPI and uvicorn: both small and well kept; FastAPI gives typed routes and a JSON
API with little code, and serves a plain HTML page we control (inline CSS and JS, nothing from
a CDN, so it works offline) with no heavy UI runtime behind it. ``model`` holds the model and
its thread-safe prediction (it needs neither); ``batcher`` groups concurrent requests into one
forward pass; ``app`` the routes.
"""

from __future__ import annotations

from .batcher import Batcher, BatchingSettings
from .model import ServedModel, load_served

__all__ = ["Batcher", "BatchingSettings", "ServedModel", "load_served"]
