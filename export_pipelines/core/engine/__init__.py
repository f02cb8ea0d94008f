"""One export, streamed: plan, keyset sources, the reader thread, encoders, multipart uploads,
checkpoints and resume, the manifest, and the janitor (docs/architecture.md)."""
