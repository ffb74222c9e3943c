"""Nightly retraining: data checks, warm start, gates and an MLflow model registry."""
