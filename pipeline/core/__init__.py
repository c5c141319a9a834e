"""Shared by every stage: table schemas, params and settings, paths, logging, errors, devices, fingerprints, the frame reader."""
