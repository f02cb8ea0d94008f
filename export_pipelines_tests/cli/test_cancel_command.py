"""`export-pipelines cancel`: the operator's door to the same cancel as the API's — the row is
`canceled` at once whatever its active state, a finished export is refused (exit 1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXE = Path(sys.executable).parent / "export-pipelines"


def cancel(source_url: str, rid: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SOURCE_DATABASE_URL": source_url}
    return subprocess.run([str(EXE), "cancel", rid], env=env, capture_output=True, text=True, timeout=120)


def test_cancel_command_cancels_at_once_and_refuses_a_finished_export(store, source_url, pg):
    queued = store.create(tenant_id="t-011", resource="orders")
    assert store.mark_queued(queued, 1)
    done = cancel(source_url, queued)
    assert done.returncode == 0, done.stderr
    assert "canceled" in done.stdout
    row = store.get(queued)
    assert row.status == "canceled" and row.error_code == "canceled"
    history = pg.execute(
        "SELECT to_status FROM export_request_status_history WHERE request_id = %s ORDER BY id", [queued]
    ).fetchall()
    assert [h[0] for h in history] == ["pending", "queued", "canceled"]

    finished = store.create(tenant_id="t-011", resource="orders")
    pg.execute("UPDATE export_requests SET status = 'failed' WHERE id = %s", [finished])
    refused = cancel(source_url, finished)
    assert refused.returncode == 1 and "the export is failed" in refused.stderr
    assert store.get(finished).status == "failed"
