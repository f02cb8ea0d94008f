"""export_pipelines: tenant exports from PostgreSQL to S3 files, as a Dagster code location, an HTTP
API and a command line; core/ is the plain-Python heart the other three are faces of
(docs/architecture.md)."""
