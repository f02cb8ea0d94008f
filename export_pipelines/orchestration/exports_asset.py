"""The assets `exports/<resource>`, one per catalog resource: their keys, the export graph's output
that materializes each, and the check that a run exports the resource of the asset it selected. (The
graph and its job are jobs.py's.)"""

import re

import dagster as dg

from export_pipelines.core.requests.catalog import Catalog

EXPORTS_GROUP = "exports"


def export_asset_key(resource: str) -> dg.AssetKey:
    return dg.AssetKey([EXPORTS_GROUP, resource])


def asset_output(resource: str) -> str:
    """The name of the export graph's output that materializes `exports/<resource>`."""
    return re.sub(r"\W", "_", resource)


def refuse_unselected_resource(context: dg.OpExecutionContext, catalog: Catalog, resource: str) -> None:
    """A run materializes the exports asset it selected: "Materialize" on `exports/orders` with
    `resource: customers` in the config is an operator's mistake, refused before anything is read
    or any request row touched. (A resource the catalog does not have is the catalog's error.)"""
    if not context.has_assets_def or resource not in catalog.resources:
        return
    selected = sorted(key.path[-1] for key in context.selected_asset_keys)
    if resource not in selected:
        raise dg.Failure(
            f"resource: {resource!r} is not the exports asset this run materializes (allowed: "
            f"{', '.join(selected)}); materialize exports/{resource}, or change the config's resource",
            allow_retries=False,
        )
