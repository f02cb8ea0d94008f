"""PDF (format `pdf`): a printable report of the export, for people rather than machines.

A title block (tenant, resource, filters, generated at, rows), then one table: the header row
repeated on every page, landscape A4 when the columns are many, long cells wrapped, page numbers
in the footer. Values are the type contract's text forms, as CSV writes them (PostgreSQL renders
them: `CsvEncoder.render_query`); NULL is an empty cell; a cell is cut after PDF_MAX_CELL_CHARS.

Laid out by reportlab (platypus). A PDF is laid out as a whole, so the encoder keeps the file's
rows and writes the document in `finish()`: memory is bounded by the row cap
(EXPORT_PDF_MAX_ROWS, default 10,000), which `plan.check_pdf_rows` enforces when the export is planned.
The file, not the part, is the unit of restart (as for XLSX).
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

from export_pipelines.core.columns import ColumnInfo
from export_pipelines.core.engine.encoders.base import Encoder, split_complete_records
from export_pipelines.core.engine.encoders.csv import CsvEncoder

# A longer value would fill pages with one cell; no row may be taller than a page.
from export_pipelines.core.engine.encoders.type_contract import (
    PDF_MANY_LINES,
    PDF_MAX_CELL_CHARS,
    PDF_MAX_CELL_LINES,
)
from export_pipelines.core.engine.query import ExportQuery
from export_pipelines.core.formats import format_spec

FONT, FONT_BOLD, FONT_SIZE = "ExportVera", "ExportVeraBd", 7
LANDSCAPE_FROM_COLUMNS = 7
MIN_CHARS, WIDTH_CHARS = 8, 60  # column widths: at least 8 digits wide (or less if all fit)


def cell_text(value: str) -> str:
    if len(value) <= PDF_MAX_CELL_CHARS:
        return value
    return value[:PDF_MAX_CELL_CHARS] + f"… ({len(value) - PDF_MAX_CELL_CHARS:,} more characters)"


def _fonts() -> tuple[str, str]:
    """Bitstream Vera, shipped inside reportlab: a TrueType font, so any Latin text extracts."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    if FONT not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(TTFont(FONT, "Vera.ttf"))
        pdfmetrics.registerFont(TTFont(FONT_BOLD, "VeraBd.ttf"))
    return FONT, FONT_BOLD


class PdfEncoder(Encoder):
    spec = format_spec("pdf")
    input_kind = "pg_csv"
    input_chunk_bytes = 64 * 1024  # progress every few hundred rows (base.py)

    def __init__(self, columns: list[ColumnInfo], compression: str) -> None:
        super().__init__(columns, compression)
        self._rows: list[list[str | None]] = []
        self._partial = ""
        self._title: dict[str, str] = {}
        self._line_cuts = [0] * len(columns)

    @property
    def extension(self) -> str:
        return "pdf"

    @classmethod
    def render_query(cls, query: ExportQuery) -> ExportQuery:
        return CsvEncoder.render_query(query)  # the text forms of the csv column

    def describe(self, context: dict[str, str]) -> None:
        """The report's title block: tenant, resource, filters, generated at."""
        self._title = dict(context)

    def begin(self) -> bytes:
        return b""

    def encode(self, batch: bytes | memoryview) -> bytes:
        # Sources hand over whole CSV records; keep an unfinished tail, just in case.
        complete, self._partial = split_complete_records(self._partial + bytes(batch).decode("utf-8"))
        for record in csv.reader(io.StringIO(complete, newline="")):
            self._rows.append(record)
        return b""

    def finish(self) -> bytes:
        return render_pdf([c.name for c in self.columns], self._rows, self._title, self._line_cuts)

    def special_counts(self) -> dict[str, dict[str, int]]:
        # Only the layout knows how many lines a cell wraps to; PostgreSQL counts the 1,000-character cut.
        return {c.name: {PDF_MANY_LINES: n} for c, n in zip(self.columns, self._line_cuts, strict=True) if n}


def _widths(header: list[str], rows: list[list[Any]], total: float, font: str, bold: str) -> list[float]:
    """Column widths summing to total: each column's natural width (its longest header word or
    value, values counted to WIDTH_CHARS characters, from the first rows) when they all fit; else
    every column gets at least the width of MIN_CHARS digits (or its natural width, if smaller: an
    id is not one character per line) and the room left goes to the columns with long values."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    pad = 6  # left and right padding
    sample = rows[:500]
    natural = []
    for i, name in enumerate(header):
        words = max((stringWidth(w, bold, FONT_SIZE) for w in name.split() or [""]), default=0.0)
        values = max((stringWidth((r[i] or "")[:WIDTH_CHARS], font, FONT_SIZE) for r in sample), default=0.0)
        natural.append(max(words, values) + pad)
    floor = [min(n, stringWidth("0" * MIN_CHARS, font, FONT_SIZE) + pad) for n in natural]
    if sum(natural) <= total:
        return [n * total / sum(natural) for n in natural]
    if sum(floor) >= total:
        return [f * total / sum(floor) for f in floor]
    room, wants = total - sum(floor), [n - f for n, f in zip(natural, floor, strict=True)]
    return [f + room * w / sum(wants) for f, w in zip(floor, wants, strict=True)]


def _break_word(line: str, face: str, width: float) -> list[str]:
    """A line still too wide (a word longer than the column: digits, base64) broken by characters."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    if stringWidth(line, face, FONT_SIZE) <= width:
        return [line]
    out, current, used = [], "", 0.0
    for ch in line:
        w = stringWidth(ch, face, FONT_SIZE)
        if current and used + w > width:
            out.append(current)
            current, used = "", 0.0
        current += ch
        used += w
    return [*out, current]


def render_pdf(
    header: list[str], rows: list[list[str]], title: dict[str, str], line_cuts: list[int] | None = None
) -> bytes:
    """The PDF; `line_cuts[i]` counts column i's cells cut at PDF_MAX_CELL_LINES (cells already
    cut at PDF_MAX_CELL_CHARS are not counted again)."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import mm
    from reportlab.lib.utils import simpleSplit
    from reportlab.platypus import LongTable, Paragraph, SimpleDocTemplate, Spacer, TableStyle
    from reportlab.platypus.doctemplate import LayoutError

    font, bold = _fonts()
    wide = len(header) >= LANDSCAPE_FROM_COLUMNS
    page = landscape(A4) if wide else A4
    margin = 12 * mm
    out = io.BytesIO()
    doc = SimpleDocTemplate(
        out,
        pagesize=page,
        leftMargin=margin,
        rightMargin=margin,
        topMargin=margin,
        bottomMargin=margin + 4 * mm,
        title=f"{title.get('resource', '')} export for {title.get('tenant', '')}",
        author="export_pipelines",
        invariant=True,  # no creation time or random id: a resumed file is byte-identical
    )
    widths = _widths(header, rows, doc.width, font, bold)

    def wrap(value: str | None, width: float, face: str, column: int | None = None) -> str:
        if not value:
            return ""
        # Tabs, CR and other controls would print as boxes: spaces keep the layout readable.
        text = cell_text(value).replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
        lines: list[str] = []
        for line in text.split("\n"):
            for part in simpleSplit(line, face, FONT_SIZE, width - 6) or [""]:
                lines += _break_word(part, face, width - 6)
        if len(lines) > PDF_MAX_CELL_LINES:
            lines = [*lines[: PDF_MAX_CELL_LINES - 1], "… (cut)"]
            if line_cuts is not None and column is not None and len(value) <= PDF_MAX_CELL_CHARS:
                line_cuts[column] += 1
        return "\n".join(lines)

    data = [[wrap(h, w, bold) for h, w in zip(header, widths, strict=True)]]
    data += [[wrap(v, w, font, i) for i, (v, w) in enumerate(zip(r, widths, strict=True))] for r in rows]
    table = LongTable(data, colWidths=widths, repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (-1, -1), font, FONT_SIZE, FONT_SIZE + 1.5),
                ("FONT", (0, 0), (-1, 0), bold, FONT_SIZE, FONT_SIZE + 1.5),
                ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#dde4ee")),
                ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f5f7fa")]),
                ("GRID", (0, 0), (-1, -1), 0.25, colors.HexColor("#9aa5b1")),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LEFTPADDING", (0, 0), (-1, -1), 3),
                ("RIGHTPADDING", (0, 0), (-1, -1), 3),
                ("TOPPADDING", (0, 0), (-1, -1), 1.5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
            ]
        )
    )
    h1 = ParagraphStyle("h1", fontName=bold, fontSize=13, leading=16)
    meta = ParagraphStyle("meta", fontName=font, fontSize=8, leading=10.5)

    def esc(text: str) -> str:
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    lines = [
        f"Tenant: {esc(title.get('tenant', ''))}",
        f"Filters: {esc(title.get('filters', '') or 'none')}",
        f"Generated at: {esc(title.get('generated_at', '') or _now())}",
        f"Rows: {len(rows):,}",
    ]
    story = [
        Paragraph(f"{esc(title.get('resource', 'Export'))} export", h1),
        Spacer(1, 2 * mm),
        *[Paragraph(line, meta) for line in lines],
        Spacer(1, 4 * mm),
        table,
    ]

    def footer(canvas: Any, document: Any) -> None:
        canvas.saveState()
        canvas.setFont(font, 7)
        canvas.drawRightString(page[0] - margin, margin - 2 * mm, f"Page {document.page}")
        canvas.drawString(margin, margin - 2 * mm, f"{title.get('resource', '')} · {title.get('tenant', '')}")
        canvas.restoreState()

    try:
        doc.build(story, onFirstPage=footer, onLaterPages=footer)
    except LayoutError as exc:  # a row taller than a page: cannot happen with the cell cut
        raise RuntimeError(f"pdf layout failed: {exc}") from exc
    return out.getvalue()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
