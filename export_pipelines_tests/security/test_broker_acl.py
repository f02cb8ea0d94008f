"""The Redis broker of the several-machines set-up (scripts/broker.sh): Celery logs in as an ACL user
of least privilege, the default user is off, and the env file holding the password is the owner's only."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu import Connection

from export_pipelines_tests.support.api_helpers import free_port
from export_pipelines_tests.support.daemon import ROOT


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> Iterator[tuple[dict[str, str], Path, int]]:
    state = tmp_path_factory.mktemp("broker")
    port = free_port()
    env = {**os.environ, "EXPORT_BROKER_DIR": str(state), "EXPORT_BROKER_PORT": str(port)}
    started = subprocess.run(
        [str(ROOT / "scripts" / "broker.sh"), "start"], env=env, capture_output=True, text=True, timeout=300
    )
    assert started.returncode == 0, started.stderr
    urls = dict(
        line.removeprefix("export ").replace("'", "").split("=", 1) for line in started.stdout.splitlines()
    )
    try:
        yield urls, state, port
    finally:
        subprocess.run(
            [str(ROOT / "scripts" / "broker.sh"), "stop"], env=env, capture_output=True, timeout=60
        )


def test_celery_works_as_the_acl_user_and_nothing_more(broker):
    """Fails on the old broker: the default user could do anything, CONFIG and FLUSHALL included."""
    urls, _, port = broker
    with Connection(urls["DAGSTER_CELERY_BROKER_URL"]) as conn:
        queue = conn.SimpleQueue("acl-test")
        queue.put({"run": 1})
        message = queue.get(timeout=10)
        assert message.payload == {"run": 1}
        message.ack()
        queue.close()
    with Connection(urls["DAGSTER_CELERY_BROKER_URL"]) as conn:
        # A worker's broadcast queue (what `celery inspect ping` and the run launcher's control use):
        # kombu binds it with a Lua script that calls TIME.
        conn.default_channel.queue_declare("acl-test.pidbox", arguments={"x-expires": 60_000})
        conn.default_channel.exchange_declare("acl-test.pidbox-x", type="fanout")
        conn.default_channel.queue_bind("acl-test.pidbox", "acl-test.pidbox-x", routing_key="")
    backend = redis.Redis.from_url(urls["DAGSTER_CELERY_BACKEND_URL"])
    backend.set("celery-task-meta-x", "{}", ex=60)
    assert backend.get("celery-task-meta-x") == b"{}"
    with backend.pubsub() as pubsub:
        pubsub.subscribe("celery-task-meta-x")
    for command in (
        ("CONFIG", "GET", "*"),
        ("FLUSHALL",),
        ("ACL", "LIST"),
        ("KEYS", "*"),
        ("SAVE",),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            backend.execute_command(*command)
    password = urls["DAGSTER_CELERY_BROKER_URL"].split(":")[2].split("@")[0]
    with pytest.raises((redis.exceptions.AuthenticationError, redis.exceptions.ResponseError)):
        redis.Redis(port=port, password=password).ping()  # the default user, with the password
    with pytest.raises((redis.exceptions.AuthenticationError, redis.exceptions.ResponseError)):
        redis.Redis(port=port).ping()  # no login at all


def test_the_env_file_is_the_owners_only(broker):
    """Fails on the old broker: the documented env file was written by the shell, world-readable."""
    urls, state, _ = broker
    env_file = state / "broker.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert urls["DAGSTER_CELERY_BROKER_URL"] in env_file.read_text()
