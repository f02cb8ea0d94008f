"""`export-pipelines feeds …`: the API's verbs on the command line, with the same checks."""

from __future__ import annotations

import json

import psycopg

from export_pipelines.cli.main import main

TENANT = "t-013"


def test_feed_verbs(source_url, capsys):
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("DELETE FROM export_requests WHERE tenant_id = %s", [TENANT])
    assert (
        main(["feeds", "create", "--tenant", TENANT, "--resource", "orders", "--frequency", "fortnightly"])
        == 2
    )
    assert (
        "frequency: 'fortnightly' is not a frequency; allowed: daily, hourly, manual"
        in capsys.readouterr().err
    )

    assert main(["feeds", "create", "--tenant", TENANT, "--resource", "orders", "--frequency", "manual"]) == 0
    feed = json.loads(capsys.readouterr().out)
    assert feed["mode"] == "incremental" and feed["next_due_at"] is None
    assert main(["feeds", "list", "--tenant", TENANT]) == 0
    assert feed["id"] in [f["id"] for f in json.loads(capsys.readouterr().out)]

    assert main(["feeds", "run", feed["id"], "--tenant", TENANT]) == 0
    delivery = json.loads(capsys.readouterr().out)
    assert (delivery["feed_id"], delivery["sequence"], delivery["status"]) == (feed["id"], 1, "pending")
    assert main(["feeds", "run", feed["id"], "--tenant", TENANT]) == 1
    assert "still in progress; one delivery at a time" in capsys.readouterr().err

    assert main(["feeds", "update", feed["id"], "--tenant", TENANT, "--frequency", "weekly"]) == 0
    assert json.loads(capsys.readouterr().out)["frequency"] == "weekly"
    assert main(["feeds", "show", feed["id"], "--tenant", "t-other"]) == 1  # another tenant's: not found
    assert main(["feeds", "delete", feed["id"], "--tenant", TENANT]) == 0
    assert main(["feeds", "show", feed["id"], "--tenant", TENANT]) == 1
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("DELETE FROM export_requests WHERE tenant_id = %s", [TENANT])
