"""The export's files: `GET /v1/exports/{id}/files` (fresh presigned links, numbered from 1 in
manifest order), `/files/{n}` (302 to one of them) and `/manifest`."""

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse, RedirectResponse

from export_pipelines.api.auth import Auth
from export_pipelines.api.errors import ApiError, not_found
from export_pipelines.api.schemas import ERRORS, ErrorBody, ExportId, FileList
from export_pipelines.api.service import ExportApi
from export_pipelines.api.status import API_VERSION, iso, json_response
from export_pipelines.core.errors import Rejected
from export_pipelines.core.storage.links import Link, read_manifest


def files_document(links: list[Link]) -> dict[str, Any]:
    manifest = links[0]
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
        "next_cursor": None,
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
    def list_files(export_id: ExportId, who: Auth) -> JSONResponse:
        """The manifest's files in order (numbered from 1), each with a fresh presigned URL."""
        row = api.load(who, export_id, position=False).row
        return json_response(files_document(api.links(row)), headers={"Cache-Control": "no-store"})

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
        links = api.links(row)
        if number >= len(links):
            raise not_found("file")
        return RedirectResponse(links[number].url, status_code=302, headers={"Cache-Control": "no-store"})

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
    def get_manifest(export_id: ExportId, who: Auth) -> JSONResponse:
        """The export's manifest.json (files, rows, bytes, sha256, columns and types, snapshot)."""
        row = api.load(who, export_id, position=False).row
        api.links(row)  # same status checks as /files
        try:
            return json_response(read_manifest(api.s3, api.bucket, row.location(settings.prefix)))
        except Rejected as exc:
            raise ApiError(410, "export_expired", str(exc)) from exc

    return router
