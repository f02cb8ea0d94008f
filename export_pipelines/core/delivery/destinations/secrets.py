"""Destination credentials at rest: a Fernet token under EXPORT_SECRETS_KEY (several keys, newest
first, through MultiFernet: older keys still decrypt, `rotate` re-encrypts with the newest).

What leaves this module is either the token (for the table) or a fingerprint (for the API and logs):
the plain credentials live only in the memory of the writer that uses them.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from export_pipelines.core.errors import ConfigurationError


class SecretBox:
    def __init__(self, keys_text: str | None) -> None:
        keys = [k.strip() for k in (keys_text or "").split(",") if k.strip()]
        if not keys:
            raise ConfigurationError(
                "EXPORT_SECRETS_KEY is not set: destination credentials cannot be stored or read"
            )
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])
        except (ValueError, TypeError):
            raise ConfigurationError(
                "EXPORT_SECRETS_KEY: not a list of Fernet keys (32 url-safe base64 bytes each, "
                "comma-separated, newest first)"
            ) from None

    def encrypt(self, credentials: dict[str, Any]) -> bytes:
        return self._fernet.encrypt(json.dumps(credentials, sort_keys=True).encode())

    def decrypt(self, token: bytes) -> dict[str, Any]:
        try:
            return dict(json.loads(self._fernet.decrypt(bytes(token))))
        except InvalidToken:
            raise ConfigurationError(
                "destination credentials: no key of EXPORT_SECRETS_KEY decrypts them (was a key "
                "removed before `export-pipelines secrets rotate` ran?)"
            ) from None

    def rotate(self, token: bytes) -> bytes:
        """The token re-encrypted under the newest key (MultiFernet.rotate)."""
        try:
            return self._fernet.rotate(bytes(token))
        except InvalidToken:
            raise ConfigurationError(
                "destination credentials: no key of EXPORT_SECRETS_KEY decrypts them"
            ) from None

    def __repr__(self) -> str:
        return "SecretBox(***)"


# Identifiers, not secrets: their last four characters help a tenant tell which key is stored.
_IDENTIFIERS = ("access_key_id", "account_name", "username")


def fingerprint(credentials: dict[str, Any]) -> str:
    """What GET shows instead of the credentials: the fields that are set, and the last four
    characters of the identifiers among them. Secret values contribute nothing, not even a hash
    (a hash of a short password could be guessed back)."""
    if not credentials:
        return "none"
    shown = []
    for name in sorted(credentials):
        value = str(credentials[name])
        shown.append(f"{name}=…{value[-4:]}" if name in _IDENTIFIERS and len(value) > 4 else f"{name}=set")
    return ", ".join(shown)
