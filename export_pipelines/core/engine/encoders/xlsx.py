"""XLSX (format `xlsx`): an Excel workbook written as a stream, with constant memory.

PostgreSQL renders each value with a one-letter cell type (`render_sql.xlsx_tagged`): number,
text, boolean or date serial. Python turns rows into sheet XML (inline strings, so no shared
string table grows in memory) and deflates it into a ZIP stream (`zipstream`) whose bytes go to
S3 as they come. The header row holds the column names: bold, frozen, columns sized to them.
A sheet holds at most 1,048,575 data rows (Excel's limit, plus the header); the next rows go to
a new sheet of the same file (`sheet_layout`, which the manifest repeats). The file, not the part,
is the unit of restart.
"""

from __future__ import annotations

import csv
import io
import re
import sys
from typing import Any

from export_pipelines.core.columns import ColumnInfo
from export_pipelines.core.engine.encoders.base import Encoder, split_complete_records
from export_pipelines.core.engine.encoders.render_sql import TAG_BOOL, TAG_NUMBER, TAG_TEXT, xlsx_tagged
from export_pipelines.core.engine.encoders.type_contract import XLSX_MAX_CELL_CHARS
from export_pipelines.core.engine.encoders.zipstream import ZipStream
from export_pipelines.core.engine.query import ExportQuery, RenderedQuery
from export_pipelines.core.formats import format_spec

# PostgreSQL text values reach 1 GB; the csv module's default field limit is 128 KiB.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
SHEET_DATA_ROWS = 1_048_575  # Excel's 1,048,576 rows, less the header
_T_OPEN = '<t xml:space="preserve">'  # keeps leading/trailing spaces
_SHORT_CELL = 16_383  # escaped text this short is surely within Excel's 32,767-unit cell limit
_MAIN_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL_NS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_XML_DECL = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
STYLE_HEADER, STYLE_DATE = 1, 2

_CONTENT_TYPES = (
    _XML_DECL + '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
    '<Override PartName="/xl/workbook.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
    '<Override PartName="/xl/styles.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/>'
    "</Types>"
)
_ROOT_RELS = (
    _XML_DECL + '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" '
    'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
    'Target="xl/workbook.xml"/></Relationships>'
)
# Fonts: regular, bold. Cell formats: 0 default, 1 bold header, 2 date (yyyy-mm-dd).
_STYLES = (
    _XML_DECL + f'<styleSheet xmlns="{_MAIN_NS}">'
    '<numFmts count="1"><numFmt numFmtId="164" formatCode="yyyy\\-mm\\-dd"/></numFmts>'
    '<fonts count="2"><font><sz val="11"/><name val="Calibri"/></font>'
    '<font><b/><sz val="11"/><name val="Calibri"/></font></fonts>'
    '<fills count="2"><fill><patternFill patternType="none"/></fill>'
    '<fill><patternFill patternType="gray125"/></fill></fills>'
    '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
    '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
    '<cellXfs count="3"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
    '<xf numFmtId="0" fontId="1" fillId="0" borderId="0" xfId="0" applyFont="1"/>'
    '<xf numFmtId="164" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/></cellXfs>'
    '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
    "</styleSheet>"
)

# XML 1.0 cannot carry these characters even as references: Excel's own escape is _xHHHH_
# (ECMA-376 ST_Xstring), and a literal "_xHHHH_" in the text must then escape its underscore.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]|_(?=x[0-9A-Fa-f]{4}_)")
_NEEDS_ESCAPE = re.compile("[&<>\r\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]|_x[0-9A-Fa-f]{4}_")


def sheet_layout(rows: int) -> list[dict[str, Any]]:
    """The sheets of an XLSX file with this many data rows: names and rows, in order."""
    sheets = []
    number, left = 1, rows
    while True:
        take = min(left, SHEET_DATA_ROWS)
        sheets.append({"name": sheet_name(number), "rows": take})
        left -= take
        number += 1
        if left <= 0:
            return sheets


def sheet_name(number: int) -> str:
    return f"Sheet{number}"


def column_letters(index: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


def _escape_char(match: re.Match[str]) -> str:
    found = match.group(0)
    return "_x005F_" if found == "_" else f"_x{ord(found):04X}_"


def xml_text(value: str) -> str:
    """Text for a <t> element: XML-escaped, CR kept (as a character reference), no illegal chars."""
    if not _NEEDS_ESCAPE.search(value):
        return value
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    value = _NOT_XML.sub(_escape_char, value)
    # A raw CR would be read back as LF (XML end-of-line handling); a reference survives.
    return value.replace("\r", "&#13;")


_UNESCAPE = re.compile(r"&amp;|&lt;|&gt;|&#13;|_x([0-9A-F]{4})_")
_UNESCAPED = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&#13;": "\r"}


def xml_unescape(value: str) -> str:
    """The inverse of xml_text (for the rare cell that must be cut to Excel's limit)."""
    return _UNESCAPE.sub(lambda m: _UNESCAPED.get(m.group(0)) or chr(int(m.group(1), 16)), value)


def excel_cell_text(value: str) -> str:
    """Excel's cell limit is 32,767 UTF-16 units: longer text is cut there (never mid-character)."""
    if len(value) <= XLSX_MAX_CELL_CHARS // 2:
        return value
    units = value.encode("utf-16-le")
    if len(units) <= 2 * XLSX_MAX_CELL_CHARS:
        return value
    return units[: 2 * XLSX_MAX_CELL_CHARS].decode("utf-16-le", errors="ignore")


def _inline(ref: str, text: str, style: str = "") -> str:
    return f'<c r="{ref}"{style} t="inlineStr"><is><t xml:space="preserve">{text}</t></is></c>'


class XlsxEncoder(Encoder):
    spec = format_spec("xlsx")
    input_kind = "pg_csv"
    input_chunk_bytes = 64 * 1024  # progress every few hundred rows (base.py)

    def __init__(self, columns: list[ColumnInfo], compression: str) -> None:
        super().__init__(columns, compression)
        self._zip = ZipStream()
        self._letters = [column_letters(i) for i in range(len(columns))]
        self._sheets = 0
        self._sheet_rows = 0  # data rows in the open sheet
        self._partial = ""  # text after the last complete record (sources send whole rows)

    @classmethod
    def render_query(cls, query: ExportQuery) -> ExportQuery:
        columns = [query.types[c] for c in query.request.columns]
        return RenderedQuery(
            query.spec, query.request, query.types, expressions=tuple(xlsx_tagged(c) for c in columns)
        )

    def _open_sheet(self) -> bytes:
        self._sheets += 1
        self._sheet_rows = 0
        widths = "".join(
            f'<col min="{i}" max="{i}" width="{max(10, min(60, len(c.name) + 4))}" customWidth="1"/>'
            for i, c in enumerate(self.columns, start=1)
        )
        header = "".join(
            _inline(f"{letter}1", xml_text(c.name), f' s="{STYLE_HEADER}"')
            for letter, c in zip(self._letters, self.columns, strict=True)
        )
        head = (
            _XML_DECL + f'<worksheet xmlns="{_MAIN_NS}" xmlns:r="{_REL_NS}">'
            '<sheetViews><sheetView workbookViewId="0">'
            '<pane ySplit="1" topLeftCell="A2" activePane="bottomLeft" state="frozen"/>'
            '<selection pane="bottomLeft"/></sheetView></sheetViews>'
            '<sheetFormatPr defaultRowHeight="15"/>'
            f"<cols>{widths}</cols><sheetData>"
            f'<row r="1">{header}</row>'
        )
        return self._zip.start(f"xl/worksheets/sheet{self._sheets}.xml") + self._zip.write(head.encode())

    def _close_sheet(self) -> bytes:
        return self._zip.write(b"</sheetData></worksheet>") + self._zip.end()

    def begin(self) -> bytes:
        out = self._zip.add("[Content_Types].xml", _CONTENT_TYPES.encode())
        out += self._zip.add("_rels/.rels", _ROOT_RELS.encode())
        out += self._zip.add("xl/styles.xml", _STYLES.encode())
        return out + self._open_sheet()

    def _complete_records(self, text: str) -> str:
        """The leading complete CSV records of `text`; keeps the rest for the next chunk."""
        complete, self._partial = split_complete_records(self._partial + text)
        return complete

    def encode(self, batch: bytes | memoryview) -> bytes:
        text = self._complete_records(bytes(batch).decode("utf-8"))
        # XML-escape the whole chunk at once (C-speed replaces): the escapes contain no CSV
        # syntax, and CR only occurs inside quoted values, so the records parse the same.
        text = xml_text(text)
        out = bytearray()
        rows: list[str] = []
        letters = self._letters
        for record in csv.reader(io.StringIO(text, newline="")):
            if self._sheet_rows == SHEET_DATA_ROWS:
                out += self._zip.write("".join(rows).encode())
                rows = []
                out += self._close_sheet() + self._open_sheet()
            self._sheet_rows += 1
            n = self._sheet_rows + 1  # row 1 is the header
            cells = []
            for letter, value in zip(letters, record, strict=True):
                if not value:
                    continue  # NULL: every rendered non-NULL value starts with its tag
                tag = value[0]
                if tag == TAG_TEXT:
                    body = value[1:]
                    if len(body) > _SHORT_CELL:
                        body = xml_text(excel_cell_text(xml_unescape(body)))
                    cells.append(
                        f'<c r="{letter}{n}" t="inlineStr"><is><t xml:space="preserve">{body}</t></is></c>'
                    )
                elif tag == TAG_NUMBER:
                    cells.append(f'<c r="{letter}{n}"><v>{value[1:]}</v></c>')
                elif tag == TAG_BOOL:
                    cells.append(f'<c r="{letter}{n}" t="b"><v>{value[1:]}</v></c>')
                else:  # TAG_DATE
                    cells.append(f'<c r="{letter}{n}" s="{STYLE_DATE}"><v>{value[1:]}</v></c>')
            rows.append(f'<row r="{n}">{"".join(cells)}</row>')
        out += self._zip.write("".join(rows).encode())
        return bytes(out)

    def finish(self) -> bytes:
        out = self._close_sheet()
        sheets = "".join(
            f'<sheet name="{sheet_name(i)}" sheetId="{i}" r:id="rId{i}"/>' for i in range(1, self._sheets + 1)
        )
        workbook = (
            _XML_DECL + f'<workbook xmlns="{_MAIN_NS}" xmlns:r="{_REL_NS}">'
            f"<bookViews><workbookView/></bookViews><sheets>{sheets}</sheets></workbook>"
        )
        rel_type = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
        rels = "".join(
            f'<Relationship Id="rId{i}" Type="{rel_type}/worksheet" Target="worksheets/sheet{i}.xml"/>'
            for i in range(1, self._sheets + 1)
        )
        rels += f'<Relationship Id="rId{self._sheets + 1}" Type="{rel_type}/styles" Target="styles.xml"/>'
        workbook_rels = (
            _XML_DECL + '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            f"{rels}</Relationships>"
        )
        out += self._zip.add("xl/workbook.xml", workbook.encode())
        out += self._zip.add("xl/_rels/workbook.xml.rels", workbook_rels.encode())
        return out + self._zip.close()
