"""Serving the installed model on the partner's machine (``federator node serve``).

`model` loads a kept release (verified, from safetensors) into a `ServedModel` that turns
validated input rows into predictions; `inputs` is the request edge (JSON → a float32 batch,
with clear errors); `holder` keeps the model in use and swaps it atomically when the store's
``current`` moves; `metrics` is the Prometheus side; `http` the Starlette app around them.
"""
