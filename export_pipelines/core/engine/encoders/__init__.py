"""How each PostgreSQL value becomes bytes in each format: the type contract, the SQL that renders
values, the special-value counts, and one encoder module per format (registry.py names them;
docs/formats.md)."""
