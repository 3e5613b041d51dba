"""`latent-onnx serve`: a local HTTP API (/v1) and a browser page (/) over the Python API.

Needs the `serve` extra (FastAPI, uvicorn): `pip install 'latent-onnx[serve]'`. `serve.app` imports
them; `serve.schema` (the request fields and limits) does not.
"""
