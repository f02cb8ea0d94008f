"""Signed manifests: an Ed25519 signature over manifest.json's exact bytes, and the check a tenant runs.

`manifest.json.sig` beside the manifest holds the base64 of the 64-byte signature. The manifest names
the key it was signed with (`signature.kid`), so a deployment can rotate its key and keep publishing
the retired public keys: every delivery made before the rotation still verifies (docs/verifying.md).

Verifying is three steps, and the first that fails is named: the signature over the manifest's bytes,
then each file's size, then its SHA-256 (files are looked up beside the manifest, by their name).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from export_pipelines.core.errors import ConfigurationError

ALG = "Ed25519"


def key_id(public_raw: bytes) -> str:
    """A key's id: derived from the public key, so a published key and its id cannot disagree."""
    return "ed25519-" + hashlib.sha256(public_raw).hexdigest()[:16]


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class PublishedKey:
    """A public key as `GET /v1/signing-keys` lists it."""

    kid: str
    public_key: str  # base64 of the 32 raw bytes

    def as_json(self) -> dict[str, str]:
        return {"kid": self.kid, "alg": ALG, "public_key": self.public_key}


@dataclass(frozen=True)
class ManifestSigner:
    """The deployment's signing key (EXPORT_SIGNING_KEY)."""

    private_key: Ed25519PrivateKey

    @property
    def public_raw(self) -> bytes:
        return _raw_public(self.private_key.public_key())

    @property
    def kid(self) -> str:
        return key_id(self.public_raw)

    def published(self) -> PublishedKey:
        return PublishedKey(self.kid, base64.b64encode(self.public_raw).decode())

    def sign(self, data: bytes) -> bytes:
        """The `manifest.json.sig` body: base64 of the 64-byte signature, no newline."""
        return base64.b64encode(self.private_key.sign(data))

    def __repr__(self) -> str:  # never the key itself
        return f"ManifestSigner(kid={self.kid!r})"


def generate_signing_key() -> str:
    """A new key, in EXPORT_SIGNING_KEY's form (base64 of the 32-byte private seed)."""
    raw = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw).decode()


def load_signer(text: str, variable: str = "EXPORT_SIGNING_KEY") -> ManifestSigner:
    """EXPORT_SIGNING_KEY: base64 of the 32-byte private seed, or a PKCS#8 PEM (`openssl genpkey
    -algorithm ed25519`)."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError("not an Ed25519 key")
            return ManifestSigner(key)
        raw = base64.b64decode(text, validate=True)
        return ManifestSigner(Ed25519PrivateKey.from_private_bytes(raw))
    except (ValueError, binascii.Error, TypeError):
        # The value is a secret: the message never quotes it.
        raise ConfigurationError(
            f"{variable}: not an Ed25519 private key; allowed: base64 of the 32-byte seed "
            "(`export-pipelines signing-key generate`) or a PKCS#8 PEM"
        ) from None


def load_public_key(text: str) -> PublishedKey:
    """A public key: base64 of the 32 raw bytes, or a PEM (SubjectPublicKeyInfo)."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError("not an Ed25519 key")
            raw = _raw_public(key)
        else:
            raw = base64.b64decode(text, validate=True)
            Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error, TypeError):
        raise ConfigurationError(
            "public key: not an Ed25519 public key; allowed: base64 of the 32 raw bytes or a PEM"
        ) from None
    return PublishedKey(key_id(raw), base64.b64encode(raw).decode())


def parse_key_list(document: Any) -> dict[str, bytes]:
    """`{"keys": [{kid, alg, public_key}]}` (GET /v1/signing-keys) → kid → raw public key."""
    keys: dict[str, bytes] = {}
    for entry in (document or {}).get("keys", []) if isinstance(document, dict) else []:
        if isinstance(entry, dict) and entry.get("alg") == ALG and isinstance(entry.get("public_key"), str):
            published = load_public_key(entry["public_key"])
            keys[str(entry.get("kid") or published.kid)] = base64.b64decode(published.public_key)
    return keys


class VerificationFailed(Exception):
    """The first thing about a delivery that does not hold, in words a tenant can act on."""


def check_signature(
    manifest_bytes: bytes, signature_text: bytes, keys: Mapping[str, bytes]
) -> dict[str, Any]:
    """The manifest, parsed, if `signature_text` is a valid signature of its exact bytes by one of
    `keys` (the one the manifest names, when it names one)."""
    try:
        signature = base64.b64decode(signature_text.strip(), validate=True)
    except (ValueError, binascii.Error):
        raise VerificationFailed("manifest.json.sig: not base64") from None
    if len(signature) != 64:
        raise VerificationFailed(f"manifest.json.sig: {len(signature)} bytes, an Ed25519 signature has 64")
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError:
        manifest = None
    named = manifest.get("signature", {}).get("kid") if isinstance(manifest, dict) else None
    if named is not None and named not in keys:
        raise VerificationFailed(f"signature: signed with key {named}, which is not among the trusted keys")
    candidates = [keys[named]] if named is not None else list(keys.values())
    for raw in candidates:
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(signature, manifest_bytes)
        except InvalidSignature:
            continue
        if not isinstance(manifest, dict):
            raise VerificationFailed("manifest.json: signed, but not a JSON object")
        return manifest
    raise VerificationFailed(
        "signature: manifest.json does not match manifest.json.sig (altered, or another key)"
    )


def file_name(key: str) -> str:
    """Where a manifest's file lies beside the manifest: its name (export folders are flat)."""
    return key.rsplit("/", 1)[-1]


def check_files(manifest: Mapping[str, Any], open_file: Callable[[str], Iterable[bytes] | None]) -> int:
    """Each file's size and SHA-256 against the manifest; `open_file(name)` streams a file found
    beside the manifest, or None when there is none. Returns how many files were checked."""
    files = manifest.get("files")
    if not isinstance(files, list):
        raise VerificationFailed("manifest.json: no files list")
    for entry in files:
        name = file_name(str(entry.get("key", "")))
        chunks = open_file(name)
        if chunks is None:
            raise VerificationFailed(f"{name}: missing (the manifest lists it)")
        digest, size = hashlib.sha256(), 0
        for chunk in chunks:
            digest.update(chunk)
            size += len(chunk)
        if size != entry.get("bytes"):
            raise VerificationFailed(f"{name}: {size} bytes, the manifest says {entry.get('bytes')}")
        if digest.hexdigest() != entry.get("sha256"):
            raise VerificationFailed(f"{name}: SHA-256 {digest.hexdigest()} differs from the manifest's")
    return len(files)


def verify_delivery(
    manifest_bytes: bytes,
    signature_text: bytes | None,
    keys: Mapping[str, bytes],
    open_file: Callable[[str], Iterable[bytes] | None],
) -> dict[str, Any]:
    """Signature first (nothing in an unsigned manifest is trusted), then every file."""
    if signature_text is None:
        raise VerificationFailed("manifest.json.sig: missing")
    if not keys:
        raise VerificationFailed("signature: no trusted public key given")
    manifest = check_signature(manifest_bytes, signature_text, keys)
    check_files(manifest, open_file)
    return manifest


def read_chunks(path: Any, size: int = 1024 * 1024) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(size):
            yield chunk
