"""The filter stage: rules and duplicate detection over clips and scores; every rejection has a reason."""
