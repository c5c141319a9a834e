"""Builders of synthetic media, tables, caches and runs shared by the tests (and bench/)."""
