"""The tenant-facing export API (docs/api.md): a thin FastAPI service beside Dagster. It reads and
writes export_requests through core's stores and never launches runs (the request sensor does).
app.create_app(settings) builds it; `export-pipelines serve` runs it under uvicorn."""
