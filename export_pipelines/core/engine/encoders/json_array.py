"""JSON (format `json`): one array of row objects, streamed: `[`, rows joined by `,\n`, `]`.

Rows come from PostgreSQL exactly as for JSON Lines (one object per line, no raw newline inside
one), so turning lines into array elements is a byte replace per chunk. A resumed file only
needs to know that a row was already written, to put the separator before the next one.
"""

from __future__ import annotations

from typing import Any

from export_pipelines.core.engine.encoders.jsonl import JsonlEncoder
from export_pipelines.core.formats import format_spec


class JsonArrayEncoder(JsonlEncoder):
    spec = format_spec("json")

    def __init__(self, columns: Any, compression: str) -> None:
        super().__init__(columns, compression)
        self._wrote_row = False
        self._partial = b""  # an unfinished line (sources hand over whole rows; this is a safety net)

    def begin(self) -> bytes:
        return self.compressor.write(b"[")

    def resume(self) -> bytes:
        # Earlier parts hold "[" and at least one row (a part always ends after a whole range).
        self._wrote_row = True
        return super().resume()

    def encode(self, batch: bytes | memoryview) -> bytes:
        data = self._partial + bytes(batch)
        end = data.rfind(b"\n") + 1
        lines, self._partial = data[:end], data[end:]
        if not lines:
            return b""
        separator = b",\n" if self._wrote_row else b"\n"
        self._wrote_row = True
        # Whole lines ending in "\n": drop the last one, join the rest with ",".
        return self.compressor.write(separator + lines[:-1].replace(b"\n", b",\n"))

    def finish(self) -> bytes:
        closing = b"\n]\n" if self._wrote_row else b"]\n"
        return self.compressor.write(closing) + self.compressor.finish()
