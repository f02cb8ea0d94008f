"""What may be asked, and the tables of asking: the catalog, a request and its checks, the request
rows, the fair queue, tenants, their notify targets and API keys (docs/architecture.md)."""
