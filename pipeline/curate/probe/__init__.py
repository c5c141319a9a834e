"""The list and probe stages: list data/raw without opening anything, then probe each media file into data/sources.parquet."""
