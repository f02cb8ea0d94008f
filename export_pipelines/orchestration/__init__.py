"""The Dagster layer: a module per concern (tags, run config, resources, ops, jobs, sensors, the
submitter), the monthly dumps in monthly/, what dagster.yaml loads in instance/; assembled by
`definitions.build_definitions(settings)`."""
