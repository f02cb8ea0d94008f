"""What dagster.yaml and the Celery workers load, not the code location: the run coordinator, the
instance storage, the Celery launcher and app (docs/operations.md)."""
