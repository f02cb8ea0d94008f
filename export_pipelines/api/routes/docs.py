"""`/docs` (Swagger UI) and `/redoc`: the API's documentation pages, with their scripts and styles
served from the installed package (fastapi-offline ships Swagger UI and ReDoc with their licences),
never from a CDN: a script from elsewhere would run on the origin whose pages hold the tenants' keys."""

from importlib.resources import files

from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

from export_pipelines.api.errors import not_found

ASSET_PATH = "/docs/assets"
# Only these files are served (no path from the URL reaches the file system).
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


def _read(name: str) -> bytes:
    return (files("fastapi_offline") / "static" / name).read_bytes()


def router(title: str, openapi_url: str = "/openapi.json") -> APIRouter:
    router = APIRouter(include_in_schema=False)
    assets = {name: _read(name) for name in ASSETS}  # read once: they ship with the package

    @router.get("/docs")
    def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{ASSET_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSET_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSET_PATH}/favicon.png",
        )
        page.headers.update(HEADERS)
        return page

    @router.get("/redoc")
    def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{ASSET_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSET_PATH}/favicon.png",
            with_google_fonts=False,
        )
        page.headers.update(HEADERS)
        return page

    @router.get(ASSET_PATH + "/{name}")
    def asset(name: str) -> Response:
        if name not in ASSETS:
            raise not_found("file")
        return Response(
            assets[name], media_type=ASSETS[name], headers={**HEADERS, "Cache-Control": "max-age=3600"}
        )

    return router
