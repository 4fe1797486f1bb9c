"""The partner side: the ClientApp, the instructions it accepts, weights handling, tasks."""

from federator.client.app import build_client_app
from federator.client.instructions import Instructions, read_instructions
from federator.client.weights import load_arrays, model_arrays

__all__ = ["Instructions", "build_client_app", "load_arrays", "model_arrays", "read_instructions"]
