"""`GET /v1/signing-keys` on the real API server: readable without an API key, the current key and
the retired ones still trusted, each with the id a manifest names."""

from __future__ import annotations

import base64
import dataclasses

import httpx

from export_pipelines.core.engine.signing import generate_signing_key, load_signer
from export_pipelines_tests.support.api_helpers import api_settings, serve


def test_published_keys_without_an_api_key(stack_env, source_url, bucket):
    current, retired = load_signer(generate_signing_key()), load_signer(generate_signing_key())
    settings = dataclasses.replace(
        api_settings(stack_env, source_url, bucket, "keys"),
        signing_key=base64.b64encode(current.private_key.private_bytes_raw()).decode(),
        signing_keys_retired=(retired.published().public_key,),
    )
    with serve(settings) as api:
        answer = httpx.get(f"{api.url}/v1/signing-keys", timeout=30)
    assert answer.status_code == 200
    assert answer.json() == {
        "keys": [
            {"kid": current.kid, "alg": "Ed25519", "public_key": current.published().public_key},
            {"kid": retired.kid, "alg": "Ed25519", "public_key": retired.published().public_key},
        ]
    }
    assert len(base64.b64decode(answer.json()["keys"][0]["public_key"])) == 32
