"""`export-pipelines demo`: run one tenant's export on the configured Dagster instance and print
what it made (docs/getting-started.md)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from export_pipelines.cli.common import FORMAT_HELP

# A daemon whose queue heartbeat is older than this is taken as stopped.
DAEMON_HEARTBEAT_SECONDS = 60


def cmd_demo(args: argparse.Namespace) -> int:
    """Run tenant_export_job on the configured Dagster instance and print what it made.

    With a daemon serving the instance's run queue, the run goes through that queue like every
    other door (the per-tenant and global caps of dagster.yaml apply, and the run coordinator tags
    it); without one (the first command a newcomer runs) it runs in this process, where no queued
    run can start beside it."""

    from export_pipelines.orchestration.run_config import export_run_config

    run_config = export_run_config(tenant_id=args.tenant, resource=args.resource, format=args.format)
    with demo_instance(args.verbose) as instance:
        if queue_is_served(instance):
            return demo_through_the_queue(instance, run_config, args.timeout)
        return demo_in_process(instance, run_config)


def demo_instance(verbose: bool) -> Any:
    """The Dagster instance of DAGSTER_HOME. Unless verbose, a run it executes in this process logs
    to the console at WARNING only (Dagster's `python_logs: python_log_level`): the run's events
    still all go to the instance's event log, which the demo writes to a file it names."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    instance = dg.DagsterInstance.get()
    if verbose:
        return instance
    home = instance.root_directory
    instance.dispose()
    quiet = {"python_logs": {"python_log_level": "WARNING"}}
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(home, overrides=quiet))


def write_event_log(instance: Any, run_id: str) -> Path:
    """Every event of the run, one line each, in `<DAGSTER_HOME>/logs/demo-<run id>.log`."""
    path = Path(instance.root_directory) / "logs" / f"demo-{run_id}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for entry in instance.all_logs(run_id):
            when = datetime.fromtimestamp(entry.timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")
            kind = entry.dagster_event_type.name if entry.dagster_event_type else "-"
            level = logging.getLevelName(entry.level)
            out.write(f"{when} {level:<7} {entry.step_key or '-'} {kind} {entry.message}\n")
    return path


def queue_is_served(instance: Any) -> bool:
    from dagster._core.run_coordinator import QueuedRunCoordinator

    if not isinstance(instance.run_coordinator, QueuedRunCoordinator):
        return False
    beat = instance.get_daemon_heartbeats().get("QUEUED_RUN_COORDINATOR")
    return beat is not None and time.time() - beat.timestamp < DAEMON_HEARTBEAT_SECONDS


def demo_through_the_queue(instance: Any, run_config: dict[str, Any], timeout: float) -> int:
    import dagster as dg
    from dagster._cli.job import execute_launch_command
    from dagster._cli.workspace.cli_target import WorkspaceOpts

    from export_pipelines.orchestration.monthly.backfills import WORKSPACE

    run = execute_launch_command(
        instance=instance,
        workspace_opts=WorkspaceOpts(workspace=[str(WORKSPACE)]),
        config_json=json.dumps(run_config),
        job_name="tenant_export_job",
    )
    print(f"run {run.run_id} queued (the daemon starts it when the tenant's and the global caps allow)")
    deadline = time.monotonic() + timeout
    while (run := instance.get_run_by_id(run.run_id)) is not None and not run.is_finished:
        if time.monotonic() > deadline:
            print(f"run {run.run_id} still {run.status.value} after {timeout:.0f} s", file=sys.stderr)
            return 1
        time.sleep(0.5)
    if run is None or run.status != dg.DagsterRunStatus.SUCCESS:
        print(f"run {run.run_id if run else '?'} failed; see the Dagster UI", file=sys.stderr)
        return 1
    records = instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    meta = records[-1].event_log_entry.asset_materialization.metadata
    url = meta["download"].value
    print(f"run {run.run_id} succeeded: {meta['rows'].value} rows, {meta['size'].value}")
    print(f"  folder:    {meta['folder'].value}")
    print(f"  link (expires {meta['expires_at'].value}):")
    print(f"  {url}")
    print(f"  event log: {write_event_log(instance, run.run_id)}")
    return 0


def demo_in_process(instance: Any, run_config: dict[str, Any]) -> int:
    import dagster as dg

    from export_pipelines.core.storage.layout import file_extension
    from export_pipelines.definitions import tenant_export_job_with_resources
    from export_pipelines.orchestration.instance.run_coordinator import export_tags

    with dg.execute_job(
        dg.reconstructable(tenant_export_job_with_resources),
        instance=instance,
        run_config=run_config,
        tags=export_tags({}, run_config),  # as the run coordinator tags queued runs
    ) as result:
        log = write_event_log(instance, result.run_id)
        if not result.success:
            print(f"run {result.run_id} failed; its event log: {log} (or the Dagster UI)", file=sys.stderr)
            return 1
        done = result.output_for_node("exports.finalize")
    print(f"run {result.run_id} succeeded: {done.rows} rows, {done.bytes} bytes in {len(done.files)} file(s)")
    for link in done.files:
        print(f"  s3 object: {link.key}  ({link.rows} rows, {link.bytes} bytes)")
    print(f"  manifest:  {done.manifest_key}")
    print(f"  link (expires {done.expires_at:%Y-%m-%d %H:%M} UTC):")
    print(f"  {done.files[0].url}")
    print(f"download it: curl -fSs -o export.{file_extension(done.files[0].key)} '{done.files[0].url}'")
    print(f"  event log: {log}")
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("demo", help="run tenant_export_job for one tenant and print keys, rows, link")
    p.add_argument("--tenant", default="t-big")
    p.add_argument("--resource", default="orders")
    p.add_argument("--format", default="csv", help=FORMAT_HELP)
    p.add_argument(
        "--timeout", type=float, default=600, help="seconds to wait for a queued run (with a daemon)"
    )
    p.set_defaults(func=cmd_demo)
