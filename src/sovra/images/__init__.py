"""OS images: streaming ingest, inspection, conversion, boot tests, signing, catalogue, policy."""
