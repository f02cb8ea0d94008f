"""`GET /exports`: the tenants' web page (docs/api.md) — static HTML, CSS and plain
JavaScript from export_pipelines/api/static/, no build step and no framework. The page talks to
the same /v1 API with the key the user signs in with (kept in sessionStorage)."""

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import Response

from export_pipelines.api.errors import not_found

# Only these files are served (no path from the URL ever reaches the file system).
ASSETS = {
    "exports.js": "text/javascript; charset=utf-8",
    "exports.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# The page loads only its own script and style and talks only to this origin; downloads are
# navigations to presigned S3 URLs, which connect-src does not govern. No referrer: URLs with an
# event-stream token never leave in a Referer header.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return (files("export_pipelines.api") / "static" / name).read_bytes()


def router() -> APIRouter:
    router = APIRouter(include_in_schema=False)
    # Read once: the files ship with the package and do not change under a running service.
    page = _read("exports.html")
    assets = {name: _read(name) for name in ASSETS}

    @router.get("/exports")
    def exports_page() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    @router.get("/exports/assets/{name}")
    def exports_asset(name: str) -> Response:
        if name not in ASSETS:
            raise not_found("file")
        return Response(assets[name], media_type=ASSETS[name], headers=SECURITY_HEADERS)

    return router
