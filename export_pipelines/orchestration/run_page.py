"""What a run's page shows the data team: sizes and durations as people read them, the progress
line, the run's summary and its download links: in the run's header (its tags, which Dagster shows
at the top of the page) and as the materialization of the asset `exports/<resource>`."""

from __future__ import annotations

from typing import Any

import dagster as dg

from export_pipelines.core.engine.plan import ExportPlan
from export_pipelines.core.results import ExportProgress, FinalizedExport
from export_pipelines.orchestration import tags


def human_size(n: int) -> str:
    """Bytes as people read them (decimal units, as S3 consoles show sizes), with the precision
    the number has: 512 B, 26 KB, 9.4 KB, 1.4 MB, 120 MB, 2.1 GB (never "0.0 MB" for 26 KB)."""
    value, unit = float(n), "B"
    for next_unit in ("KB", "MB", "GB", "TB"):
        if value < 999.5:  # what would round to 1,000 reads better one unit up
            break
        value, unit = value / 1000, next_unit
    if unit == "B":
        return f"{n} B"
    return f"{value:.1f} {unit}" if value < 9.95 else f"{value:,.0f} {unit}"


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def progress_line(p: ExportProgress, elapsed: float) -> str:
    """One log line per uploaded part and about once a second while rows are encoded: percent,
    rows, size uploaded, rows/s, ETA (the count's rows left at the rate so far), the file and its
    parts, and the key being written."""
    pct = f" ({100 * p.rows_exported / p.rows_total:.1f}%)" if p.rows_total else ""
    rate = p.rows_exported / elapsed if elapsed > 0 else 0.0
    left = max(p.rows_total - p.rows_exported, 0)
    eta = duration(left / rate) if rate > 0 and p.rows_total else "unknown"
    return (
        f"progress: {p.rows_exported}/{p.rows_total} rows{pct}, {human_size(p.bytes_written)} uploaded, "
        f"{rate:,.0f} rows/s, ETA {eta}; file {p.files_completed + 1}: {p.parts_uploaded} part(s) "
        f"uploaded so far; writing {p.file_key}"
    )


def readable_summary(rows: int, size: int, seconds: float) -> dict[str, Any]:
    """The human half of an op's metadata, beside the raw counts scripts read."""
    return {
        "size": human_size(size),
        "duration": duration(seconds),
        "throughput": (
            f"{rows / seconds:,.0f} rows/s, {human_size(round(size / seconds))}/s" if seconds > 0 else "-"
        ),
    }


# Links shown on the run's page, one click away (not in the finalize output's long metadata).
MAX_LINKED_FILES = 20


def download_links(plan: ExportPlan, done: FinalizedExport) -> dict[str, Any]:
    """The metadata of the export's materialization of `exports/<resource>` (the export graph's
    last output): Dagster's run page lists a run's materializations with their metadata, links
    clickable, in the run's own event log and on the asset's page (every export of that resource,
    newest first)."""
    req = plan.request
    links: dict[str, Any] = {
        "download": dg.MetadataValue.url(done.files[0].url if len(done.files) == 1 else done.manifest_url),
        "manifest": dg.MetadataValue.url(done.manifest_url),
    }
    for number, link in enumerate(done.files[:MAX_LINKED_FILES], start=1):
        links[f"file {number}"] = dg.MetadataValue.url(link.url)
    return {
        "summary": (
            f"{req.tenant_id}: {done.rows} rows, {human_size(done.bytes)} in {len(done.files)} file(s); "
            f"links expire {done.expires_at:%Y-%m-%d %H:%M} UTC"
        ),
        **links,
        "tenant": req.tenant_id,
        "export_id": req.export_id,
        "format": req.format,
        "rows": done.rows,
        "size": human_size(done.bytes),
        "expires_at": done.expires_at.isoformat(),
        "folder": plan.location.folder,
    }


def result_tags(done: FinalizedExport) -> dict[str, str]:
    """A finished export in the run's header: the summary and the one link that gets the files (the
    file, or the manifest listing several). The presigned link, although it expires: there is no
    stable URL of an export the data team can open without a tenant's API key, so the expiry sits
    beside it (`export-pipelines relink <id>` issues a fresh one for a request's export)."""
    return {
        tags.OUTCOME: "succeeded",
        tags.RESULT: f"{done.rows:,} rows, {human_size(done.bytes)} in {len(done.files)} file(s)",
        tags.DOWNLOAD: done.download_url,
        tags.LINKS_EXPIRE: f"{done.expires_at:%Y-%m-%d %H:%M} UTC",
    }
