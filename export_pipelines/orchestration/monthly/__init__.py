"""The monthly enterprise dumps: tenant x month partitions, the batch asset, its schedule and
backfills (docs/data-team.md)."""
