"""The streaming core, plain Python (no Dagster, FastAPI, argparse or settings): its wings import
downward only, engine → requests → delivery → storage → the leaves (docs/architecture.md)."""
