"""HTTP API: S3 event notifications and health."""
