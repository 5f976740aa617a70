"""Scheduled retraining as a Kubeflow Pipelines v2 pipeline (Vertex AI Pipelines): spec.py (the pipeline),
steps.py (what each step does), vertex.py (run and schedule requests), __main__.py (compile, submit, schedule)."""
