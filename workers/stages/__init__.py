"""Pipeline stages: deals, ingest, refresh."""
