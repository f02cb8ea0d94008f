"""The Dagster layer: a module per concern (tags, partitions, run config, resources, ops, jobs,
sensors, schedules, backfills), assembled by `definitions.build_definitions(settings)`."""
