"""Development tooling: the local PostgreSQL and S3 stack and the demo data. Not part of the runtime."""
