"""What the split made one: the formats table, file naming in layout, S3 prefix deletion."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from export_pipelines.core.columns import ColumnInfo
from export_pipelines.core.engine.encoders.registry import encoder_class
from export_pipelines.core.formats import FORMATS, format_names
from export_pipelines.core.storage.layout import ExportLocation, attachment, download_name, file_extension
from export_pipelines.core.storage.s3 import delete_prefix

COLUMNS = [ColumnInfo("id", "bigint", "int8", -1)]


def test_every_format_has_an_encoder_that_follows_the_table():
    assert format_names() == ("csv", "csv_excel", "jsonl", "json", "parquet", "xlsx", "pdf")
    for name, spec in FORMATS.items():
        cls = encoder_class(name)
        assert cls.spec is spec and cls.format == name
        assert cls.compressions == spec.compressions and cls.default_compression == spec.compressions[0]
        assert cls.resumable == (spec.resumable_at == "part")
        for compression in spec.compressions:
            encoder = cls(COLUMNS, compression)
            assert encoder.extension == spec.extensions[compression]
            assert encoder.content_type == spec.content_types[compression]


@pytest.mark.parametrize(
    ("fmt", "compression"), [(name, c) for name, spec in FORMATS.items() for c in spec.compressions]
)
def test_file_extension_reads_back_every_format_and_compression(fmt: str, compression: str):
    extension = FORMATS[fmt].extensions[compression]
    key = ExportLocation("exports", "t.1/ä", "orders", "exp.2024-01").file_key(7, extension)
    assert file_extension(key) == extension


def test_file_extensions_by_compression():
    assert FORMATS["csv"].extensions == {"gzip": "csv.gz", "zstd": "csv.zst", "none": "csv"}
    assert FORMATS["csv_excel"].extensions["none"] == "csv"
    assert FORMATS["parquet"].extensions == {"zstd": "parquet", "snappy": "parquet", "none": "parquet"}
    assert FORMATS["xlsx"].extensions == {"none": "xlsx"}


def test_download_name_is_header_safe():
    plain = ExportLocation("exports", "t-003", "orders", "exp_1.a")
    assert download_name(plain, 1, "csv.gz") == "orders-t-003-exp_1.a-00001.csv.gz"
    assert attachment("orders-t-003-exp_1.a-00001.csv.gz") == (
        'attachment; filename="orders-t-003-exp_1.a-00001.csv.gz"'
    )
    hostile = ExportLocation("exports", 'ä/b"c\\d e;', "orders", "x")
    name = download_name(hostile, 12, "parquet")
    # Letters stay (UTF-8); separators, quotes, backslashes and spaces never reach the header.
    assert name == "orders-ä_b_c_d_e_-x-00012.parquet"
    header = attachment(name)
    assert header.isascii()
    assert header == (
        'attachment; filename="orders-a_b_c_d_e_-x-00012.parquet"; '
        "filename*=UTF-8''orders-%C3%A4_b_c_d_e_-x-00012.parquet"
    )


def test_delete_prefix_deletes_more_than_one_batch(s3_client: Any, bucket: str, prefix: str):
    folder = ExportLocation(prefix, "t-001", "orders", "export").folder
    keys = [f"{folder}obj-{i:05d}" for i in range(1_050)]
    keep = f"{folder}manifest.json"
    sibling = f"{folder[:-1]}-2/part-00001.csv"  # same string prefix without the '/': must stay

    def put(key: str) -> None:
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"x")

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(put, [*keys, keep, sibling]))
    assert delete_prefix(s3_client, bucket, folder, frozenset({keep})) == len(keys)
    left = [
        obj["Key"]
        for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for obj in page.get("Contents", [])
    ]
    assert sorted(left) == sorted([keep, sibling])
    assert delete_prefix(s3_client, bucket, folder) == 1
    with pytest.raises(ValueError, match="must end with '/'"):
        delete_prefix(s3_client, bucket, folder[:-1])
    # Only an export's folder: never a tenant's, the exports prefix or the bucket.
    for wide in (f"{prefix}/", f"{prefix}/tenant=t-001/", f"{prefix}/tenant=t-001/orders/"):
        with pytest.raises(ValueError, match="is not an export folder"):
            delete_prefix(s3_client, bucket, wide)
    assert delete_prefix(s3_client, bucket, folder) == 0
