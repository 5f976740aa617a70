"""Serving a trained model over HTTP: Vertex AI's custom-container contract on TensorFlow 2.21.

`python -m trainer.serve` (trainer/serve/__main__.py) runs it locally; the Dockerfile's `serve` target is the
container. Layers: `model` (the SavedModel, the request checks; TensorFlow only), `predictor` (CPR's Predictor),
`handler` (CPR's Handler: requests merged into model calls), `server` (CPR's model server, readiness and errors).
"""
