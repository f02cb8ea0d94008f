"""`python -m export_pipelines.cli ...`: the same as the `export-pipelines` command."""

import sys

from export_pipelines.cli.main import main

sys.exit(main())
