"""`GET /v1/signing-keys`: the public keys manifests are signed with (no API key needed): the current
one and any retired ones still trusted, so a tenant can verify a delivery made before a rotation
(docs/verifying.md)."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from export_pipelines.api.service import ExportApi
from export_pipelines.api.status import API_VERSION, json_response
from export_pipelines.core.engine.signing import PublishedKey, load_public_key, load_signer


def published_keys(api: ExportApi) -> list[PublishedKey]:
    settings = api.settings
    keys = [load_signer(settings.signing_key).published()] if settings.signing_key else []
    for text in settings.signing_keys_retired:
        retired = load_public_key(text)
        if all(k.kid != retired.kid for k in keys):
            keys.append(retired)
    return keys


def router(api: ExportApi) -> APIRouter:
    router = APIRouter()
    # Read once: the keys change with the deployment's settings, not per request.
    document = {"keys": [k.as_json() for k in published_keys(api)]}

    @router.get(f"/{API_VERSION}/signing-keys", tags=["delivery"], response_model=None)
    def signing_keys() -> JSONResponse:
        """The Ed25519 public keys (base64 of the 32 raw bytes) that sign manifest.json."""
        return json_response(document)

    return router
