"""JSON and JSONL read by the customer's default parsers: Python's json.loads, JavaScript's
JSON.parse (Node.js) and pandas' read_json (in .venv-readers). Every number column is read exactly
or is a string of PostgreSQL's exact text (type contract), and no column mixes types."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from export_pipelines_tests.support import type_zoo
from export_pipelines_tests.support.zoo_expect import NUMBERS, export, file_bytes

ROOT = Path(__file__).resolve().parents[4]
READERS_PY = ROOT / ".venv-readers" / "bin" / "python"
# On CI the customer readers must be there (scripts/test_readers.sh, test_tools.sh): a missing one fails, never skips.
ON_CI = os.environ.get("CI") == "true"
JSON_NUMBERS = {"c_smallint", "c_integer"}  # everything else numeric is a string
STRING_NUMBERS = (NUMBERS | {"id"}) - JSON_NUMBERS
NODE = """
const fs = require('fs');
const [path, fmt] = process.argv.slice(1);
const text = fs.readFileSync(path, 'utf8');
const rows = fmt === 'jsonl' ? text.split('\\n').filter(Boolean).map(l => JSON.parse(l)) : JSON.parse(text);
const tag = (k, v) => typeof v === 'number' ? {n: Object.is(v, -0) ? '-0' : String(v)} : v;
process.stdout.write(JSON.stringify(rows, tag));
"""
PANDAS = """
import json, sys
import pandas as pd
path, fmt = sys.argv[1:3]
df = pd.read_json(path, lines=fmt == "jsonl", dtype=False)
out = {c: [None if v is None or (isinstance(v, float) and v != v) else str(v) for v in df[c].tolist()]
       for c in sys.argv[3:] or df.columns}
print(json.dumps({"columns": list(df.columns), "values": out}))
"""


def _kinds(values):
    return {type(v).__name__ for v in values if v is not None}


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_default_json_readers_read_every_number_exactly(
    fmt, zoo, pg_rows, source_url, s3_client, bucket, prefix, tmp_path
):
    for tenant, rows in pg_rows.items():
        manifest = export(
            zoo, source_url, s3_client, bucket, f"{prefix}-{tenant}", tenant_id=tenant, format=fmt
        )
        raw = file_bytes(s3_client, bucket, manifest)
        path = tmp_path / f"{tenant}.{fmt}"
        path.write_bytes(raw)
        text = raw.decode()
        py = [json.loads(line) for line in text.splitlines()] if fmt == "jsonl" else json.loads(text)
        assert len(py) == len(rows)
        for col in type_zoo.COLUMNS:
            if col not in ("c_jsonb", "c_json"):  # nested JSON values differ by nature
                assert len(_kinds(o[col] for o in py)) <= 1, (col, _kinds(o[col] for o in py))
        for obj, row in zip(py, rows, strict=True):
            for col in JSON_NUMBERS:
                assert obj[col] == (None if row[col] is None else int(row[col])), (col, row["id"])
            for col in STRING_NUMBERS:
                assert obj[col] == row[col], (col, row["id"], obj[col], row[col])
        if shutil.which("node") or ON_CI:
            js = json.loads(
                subprocess.run(
                    ["node", "-e", NODE, str(path), fmt], check=True, capture_output=True, text=True
                ).stdout
            )
            for obj, row in zip(js, rows, strict=True):
                for col in JSON_NUMBERS:
                    assert obj[col] == (None if row[col] is None else {"n": row[col]}), (col, row["id"])
                for col in STRING_NUMBERS:
                    assert obj[col] == row[col], (col, row["id"], obj[col], row[col])
        if READERS_PY.exists() or ON_CI:
            got = json.loads(
                subprocess.run(
                    [str(READERS_PY), "-c", PANDAS, str(path), fmt, *sorted(NUMBERS | {"id"})],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
            )
            assert got["columns"] == list(type_zoo.COLUMNS)
            for col in STRING_NUMBERS:
                assert got["values"][col] == [r[col] for r in rows], col
            for col in JSON_NUMBERS:
                want = [None if r[col] is None else str(int(r[col])) for r in rows]
                have = [None if v is None else str(int(float(v))) for v in got["values"][col]]
                assert have == want, col
