"""The export's files: `GET /v1/exports/{id}/files` (fresh presigned links, numbered from 1 in
manifest order, a page at a time: `limit` and the `next_cursor` of the previous page), `/files/{n}`
(302 to one of them; only that one is signed) and `/manifest`."""

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse, RedirectResponse, Response

from export_pipelines.api.auth import Auth
from export_pipelines.api.errors import ApiError, not_found
from export_pipelines.api.schemas import ERRORS, ErrorBody, ExportId, FileList
from export_pipelines.api.service import ExportApi
from export_pipelines.api.status import API_VERSION, iso, json_response
from export_pipelines.core.errors import Rejected
from export_pipelines.core.storage.links import Link, read_manifest_bytes, read_manifest_signature

DEFAULT_FILES_PAGE = 100
MAX_FILES_PAGE = 1000


def files_document(links: list[Link], total: int | None = None) -> dict[str, Any]:
    """The page of links; `next_cursor` names the page after it (None: this was the last)."""
    manifest = links[0]
    last = links[-1].number
    more = total is not None and last < total
    return {
        "data": [
            {
                "number": link.number,
                "filename": link.filename,
                "rows": link.rows,
                "bytes": link.bytes,
                "sha256": link.sha256,
                "url": link.url,
                "expires_at": iso(link.expires_at),
            }
            for link in links[1:]
        ],
        "next_cursor": str(last + 1) if more else None,
        "manifest_url": manifest.url,
        "expires_at": iso(manifest.expires_at),
    }


def router(api: ExportApi) -> APIRouter:
    router = APIRouter()
    settings = api.settings

    @router.get(
        f"/{API_VERSION}/exports/{{export_id}}/files",
        tags=["files"],
        response_model=None,
        responses={
            200: {"model": FileList},
            409: {"model": ErrorBody, "description": "not succeeded (yet)"},
            410: {"model": ErrorBody, "description": "the files were deleted"},
            **ERRORS,
        },
    )
    def list_files(
        export_id: ExportId,
        who: Auth,
        limit: Annotated[
            int, Query(ge=1, le=MAX_FILES_PAGE, description="files per page")
        ] = DEFAULT_FILES_PAGE,
        cursor: Annotated[
            str | None,
            Query(max_length=12, pattern=r"^[1-9][0-9]*$", description="next_cursor of the page before"),
        ] = None,
    ) -> JSONResponse:
        """The manifest's files in order (numbered from 1), a page at a time, each with a fresh
        presigned URL (only the page's files are signed)."""
        row = api.load(who, export_id, position=False).row
        links, total = api.links(row, first=int(cursor or 1), limit=limit)
        return json_response(files_document(links, total), headers={"Cache-Control": "no-store"})

    @router.get(
        f"/{API_VERSION}/exports/{{export_id}}/files/{{number}}",
        tags=["files"],
        response_class=RedirectResponse,
        status_code=302,
        responses={
            302: {"description": "redirect to a fresh presigned URL"},
            409: {"model": ErrorBody, "description": "not succeeded (yet)"},
            410: {"model": ErrorBody, "description": "the files were deleted"},
            **ERRORS,
        },
    )
    def download_file(
        export_id: ExportId, number: Annotated[int, Path(ge=1, le=1_000_000)], who: Auth
    ) -> RedirectResponse:
        """302 to a fresh presigned URL of file `number` (from 1, manifest order)."""
        row = api.load(who, export_id, position=False).row
        links, total = api.links(row, first=number, limit=1)
        if number > total:
            raise not_found("file")
        return RedirectResponse(links[1].url, status_code=302, headers={"Cache-Control": "no-store"})

    @router.get(
        f"/{API_VERSION}/exports/{{export_id}}/manifest",
        tags=["files"],
        response_model=None,
        responses={
            200: {"description": "the export's manifest.json", "content": {"application/json": {}}},
            409: {"model": ErrorBody, "description": "not succeeded (yet)"},
            410: {"model": ErrorBody, "description": "the files were deleted"},
            **ERRORS,
        },
    )
    def get_manifest(export_id: ExportId, who: Auth) -> Response:
        """The export's manifest.json (files, rows, bytes, sha256, columns and types, snapshot), its
        exact bytes: what `manifest.sig` signs."""
        row = api.load(who, export_id, position=False).row
        api.links(row, limit=0)  # same status checks as /files
        try:
            with api.storage() as s3:
                body = read_manifest_bytes(s3, api.bucket, row.location(settings.prefix))
        except Rejected as exc:
            raise ApiError(410, "export_expired", str(exc)) from exc
        return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})

    @router.get(
        f"/{API_VERSION}/exports/{{export_id}}/manifest.sig",
        tags=["files"],
        response_model=None,
        responses={
            200: {
                "description": "base64 of the Ed25519 signature over the manifest's exact bytes",
                "content": {"text/plain": {}},
            },
            404: {"model": ErrorBody, "description": "no such export, or its manifest is not signed"},
            409: {"model": ErrorBody, "description": "not succeeded (yet)"},
            410: {"model": ErrorBody, "description": "the files were deleted"},
            **ERRORS,
        },
    )
    def get_manifest_signature(export_id: ExportId, who: Auth) -> Response:
        """The manifest's signature: check it against `GET /v1/signing-keys` (docs: Verifying a
        delivery)."""
        row = api.load(who, export_id, position=False).row
        api.links(row, limit=0)  # same status checks as /files
        location = row.location(settings.prefix)
        try:
            with api.storage() as s3:
                read_manifest_bytes(s3, api.bucket, location)  # complete, and this export's
                signature = read_manifest_signature(s3, api.bucket, location)
        except Rejected as exc:
            raise ApiError(410, "export_expired", str(exc)) from exc
        if signature is None:
            raise not_found("signature")
        return Response(signature, media_type="text/plain", headers={"Cache-Control": "no-store"})

    return router
