"""Every run tag the project sets or reads, in one place."""

# The tenant a run exports for; dagster.yaml limits runs per unique value of this tag.
TENANT = "tenant"
# What a run exports, for the data team's view (set on every door's runs by run_coordinator.py).
RESOURCE = "export/resource"
FORMAT = "export/format"
EXPORT_ID = "export/id"
# The export_requests row a run serves, and which attempt of it (the run key is id:attempt).
REQUEST_ID = "export/request_id"
ATTEMPT = "export/attempt"
# The export's S3 folder, set by count_rows: lets the failure sensor clean up a dead run's uploads.
FOLDER = "export/folder"
# What the run's header shows the data team (Dagster lists a run's tags at the top of its page): how
# the export ended ("succeeded", "failed (<code>)", "canceled"), and for a success the summary, the
# one link that gets the files and when that link expires.
OUTCOME = "export/outcome"
ERROR = "export/error"
RESULT = "export/result"
DOWNLOAD = "export/download"
LINKS_EXPIRE = "export/links_expire"
# A retry or re-execution copies its parent's tags: these describe the parent's end, not its own.
RESULT_TAGS = (OUTCOME, ERROR, RESULT, DOWNLOAD, LINKS_EXPIRE)
# Dagster's own: set on a failed run once the daemon decided whether it will be retried.
WILL_RETRY = "dagster/will_retry"
# Dagster's per-run cap on run retries: the cancel sensor sets 0 before it stops a canceled export's run.
MAX_RETRIES = "dagster/max_retries"
# Dagster's own: a run's partition key (tenant x month keys read "YYYY-MM-01|tenant").
PARTITION = "dagster/partition"
# Dagster's own: the first and last partition of a run covering a range of partitions (a monthly
# batch, a backfill under a BackfillPolicy).
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
# A feed's delivery: its feed, its number, its mode, and the snapshot range it covers (the previous
# delivery's snapshot, set when planned; its own, set when finalized).
FEED_ID = "export/feed_id"
FEED_SEQUENCE = "export/feed_sequence"
FEED_MODE = "export/feed_mode"
FEED_PREVIOUS_SNAPSHOT = "export/feed_previous_snapshot"
FEED_SNAPSHOT = "export/feed_snapshot"
