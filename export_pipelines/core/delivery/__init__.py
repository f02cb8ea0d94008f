"""Telling people an export ended: the notices' words, the deliveries table, sending webhooks and
mail with retries, and where a webhook may go (docs/architecture.md)."""
