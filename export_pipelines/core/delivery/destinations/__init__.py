"""Tenants' own destinations: what they are (config.py), their table (destination_store.py), their
credentials at rest (secrets.py), and the writers that reach them (s3.py, sftp.py) behind one
interface (writer.py)."""
