"""Curation stages: probe (what the raw files are), split (scene cuts into clips), score (motion,
quality) and filter (keep or reject, with a reason).
"""
