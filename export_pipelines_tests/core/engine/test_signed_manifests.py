"""Signed manifests: a delivery verifies (signature, then each file's size and SHA-256), and a changed
byte, a changed file and a changed manifest are each refused, naming what does not hold — by
`export-pipelines verify` on a folder and on URLs, and by the docs' Python snippet."""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import json
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from export_pipelines.cli.main import main
from export_pipelines.core.engine.exporter import run_export
from export_pipelines.core.engine.manifest import clear_success_marker, finalize_export
from export_pipelines.core.engine.plan import plan_export
from export_pipelines.core.engine.signing import generate_signing_key, load_signer
from export_pipelines.core.requests.request import build_request

DOCS = Path(__file__).resolve().parents[3] / "docs" / "verifying.md"


@pytest.fixture(scope="module")
def signer():
    return load_signer(generate_signing_key())


@pytest.fixture(scope="module")
def delivered(source_url, catalog, s3_client, bucket, signer, tmp_path_factory) -> Path:
    """One export of three files, signed, copied object for object into a local folder."""
    prefix = f"sig-{hashlib.sha256(str(id(signer)).encode()).hexdigest()[:8]}"
    request = build_request(
        catalog,
        resource="orders",
        tenant_id="t-001",
        format="csv",
        compression="gzip",
        export_id="signed-1",
        max_rows_per_file=1000,
    )
    plan = plan_export(source_url, catalog, request, prefix)
    clear_success_marker(s3_client, bucket, plan.location)
    outcome = run_export(plan, conninfo=source_url, catalog=catalog, s3_client=s3_client, bucket=bucket)
    finalize_export(s3_client, bucket, plan, outcome, signer=signer)
    folder = tmp_path_factory.mktemp("delivery")
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=plan.location.folder)["Contents"]
    for obj in listed:
        name = obj["Key"].rsplit("/", 1)[-1]
        (folder / name).write_bytes(s3_client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
    return folder


@pytest.fixture
def copy(delivered, tmp_path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(delivered, target)
    return target


@pytest.fixture(scope="module")
def public_key_file(signer, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "export-signing.pub"
    path.write_text(signer.published().public_key + "\n")
    return path


def verify(capsys, *args: str) -> tuple[int, str]:
    code = main(["verify", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_manifest_lists_each_file_with_size_hash_rows_and_snapshot(delivered, signer):
    manifest = json.loads((delivered / "manifest.json").read_bytes())
    assert manifest["signature"] == {"alg": "Ed25519", "kid": signer.kid, "file": "manifest.json.sig"}
    assert manifest["snapshot"]
    for entry in manifest["files"]:
        data = (delivered / entry["key"].rsplit("/", 1)[-1]).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["rows"] > 0 and entry["snapshot"]
    signature = base64.b64decode((delivered / "manifest.json.sig").read_bytes())
    assert len(signature) == 64
    assert sorted(p.name for p in delivered.iterdir()) == sorted(
        [
            *(e["key"].rsplit("/", 1)[-1] for e in manifest["files"]),
            "manifest.json",
            "manifest.json.sig",
            "_SUCCESS",
        ]
    )


def test_untouched_delivery_verifies(copy, public_key_file, capsys):
    code, out = verify(capsys, str(copy), "--public-key", str(public_key_file))
    assert code == 0, out
    assert "OK" in out


def _first_part(folder: Path) -> Path:
    return sorted(folder.glob("part-*"))[0]


def test_a_changed_byte_is_refused(copy, public_key_file, capsys):
    part = _first_part(copy)
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit
    part.write_bytes(bytes(data))
    code, out = verify(capsys, str(copy / "manifest.json"), "--public-key", str(public_key_file))
    assert code == 1
    assert f"{part.name}: SHA-256" in out


def test_a_changed_or_missing_file_is_refused(copy, public_key_file, capsys):
    part = _first_part(copy)
    part.write_bytes(part.read_bytes() + b"extra")
    code, out = verify(capsys, str(copy), "--public-key", str(public_key_file))
    assert code == 1 and f"{part.name}: " in out and "bytes, the manifest says" in out
    part.unlink()
    code, out = verify(capsys, str(copy), "--public-key", str(public_key_file))
    assert code == 1 and f"{part.name}: missing" in out


def test_a_changed_manifest_is_refused(copy, public_key_file, capsys):
    manifest = json.loads((copy / "manifest.json").read_bytes())
    manifest["files"][0]["rows"] += 1
    (copy / "manifest.json").write_bytes(json.dumps(manifest, indent=2).encode())
    code, out = verify(capsys, str(copy), "--public-key", str(public_key_file))
    assert code == 1 and "signature: manifest.json does not match" in out
    # Nor does another key's signature pass, nor none at all.
    (copy / "manifest.json.sig").unlink()
    code, out = verify(capsys, str(copy), "--public-key", str(public_key_file))
    assert code == 1 and "manifest.json.sig: missing" in out


def test_a_key_the_tenant_does_not_trust_is_refused(copy, tmp_path, capsys):
    other = tmp_path / "other.pub"
    other.write_text(load_signer(generate_signing_key()).published().public_key)
    code, out = verify(capsys, str(copy), "--public-key", str(other))
    assert code == 1 and "not among the trusted keys" in out


@pytest.fixture
def served(copy) -> Iterator[str]:
    """The folder over HTTP, as a tenant's own web server or a public bucket would serve it."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(copy))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_verify_by_url_with_the_published_keys(served, copy, signer, capsys):
    (copy / "signing-keys.json").write_text(json.dumps({"keys": [signer.published().as_json()]}))
    code, out = verify(capsys, f"{served}/manifest.json", "--keys-url", f"{served}/signing-keys.json")
    assert code == 0, out
    part = _first_part(copy)
    part.write_bytes(b"x" + part.read_bytes()[1:])
    code, out = verify(capsys, f"{served}/manifest.json", "--keys-url", f"{served}/signing-keys.json")
    assert code == 1 and part.name in out


def _snippet() -> str:
    text = DOCS.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "docs/verifying.md has a python snippet"
    return blocks[0]


def _run_snippet(folder: Path, public_key: str) -> dict[str, Any]:
    scope: dict[str, Any] = {"__name__": "snippet"}
    code = _snippet().replace('PUBLIC_KEY_B64 = "..."', f"PUBLIC_KEY_B64 = {public_key!r}")
    code = code.replace('FOLDER = "delivery"', f"FOLDER = {str(folder)!r}")
    exec(compile(code, str(DOCS), "exec"), scope)
    return scope


def test_docs_snippet_accepts_the_delivery_and_refuses_a_changed_byte(copy, signer):
    public = signer.published().public_key
    scope = _run_snippet(copy, public)
    assert scope["verified"] is True
    part = _first_part(copy)
    data = bytearray(part.read_bytes())
    data[0] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(Exception, match=part.name):
        _run_snippet(copy, public)
