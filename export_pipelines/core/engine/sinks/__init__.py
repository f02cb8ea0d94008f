"""One writer per destination kind (core/engine/destination_export.py picks it): each runs the
engine into the tenant's storage and writes the manifest, signature and `_SUCCESS` there. `s3` is
the engine's own multipart upload with the tenant's client; `sftp`, `azure_blob` and `gcs` give the
engine a sink per file in its place."""
