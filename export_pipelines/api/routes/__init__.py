"""The export API's routes, one module per resource; each `router(api)` is included by app.py
(docs/api.md)."""
