"""PostgreSQL and S3 plumbing: connections, the store base, every table's DDL, S3 objects, object
names and presigned links (docs/architecture.md)."""
