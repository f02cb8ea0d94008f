"""`GET /v1/resources`: what the caller may export — the catalog's resources with their columns,
filter columns and time column (for date ranges), and the formats. The page's request form is
built from it; apps can use it the same way instead of hard-coding the catalog."""

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from export_pipelines.api.auth import Auth
from export_pipelines.api.schemas import CREATE_BODY_SCHEMA, ERRORS, ResourceList
from export_pipelines.api.service import ExportApi
from export_pipelines.api.status import API_VERSION, json_response

FORMATS: list[str] = list(CREATE_BODY_SCHEMA["properties"]["format"]["enum"])


def router(api: ExportApi) -> APIRouter:
    router = APIRouter()
    resources: list[dict[str, Any]] = [
        {
            "name": spec.name,
            "columns": list(spec.columns),
            "filters": list(spec.filters),
            "time_column": spec.time_column,
        }
        for spec in sorted(api.catalog.resources.values(), key=lambda s: s.name)
    ]

    @router.get(
        f"/{API_VERSION}/resources",
        tags=["catalog"],
        response_model=None,
        responses={200: {"model": ResourceList}, **ERRORS},
    )
    def list_resources(who: Auth) -> JSONResponse:
        """The catalog's resources (columns, filters, time column) and the export formats."""
        with api.pool.connection() as conn:
            who.resolve(conn)  # the catalog is shown to API-key holders only
        return json_response({"data": resources, "next_cursor": None, "formats": FORMATS})

    return router
