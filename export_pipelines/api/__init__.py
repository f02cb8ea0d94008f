"""The tenant-facing export API (README "Export API", DESIGN §3.7): a thin FastAPI service beside
Dagster. It reads and writes export_requests through core/ and never launches runs (the request
sensor does). `create_app(settings)` builds it; `export-pipelines serve` runs it under uvicorn."""

from export_pipelines.api.app import create_app

__all__ = ["create_app"]
