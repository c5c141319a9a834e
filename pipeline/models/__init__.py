"""Model loading for each profile (see ``pipeline.models.profiles``): the VAE, the text encoder and,
from the train stage, the transformer. For a tiny profile every loader takes its model from
``pipeline.models.tiny`` (built from a config with seeded random weights) and then runs the same
code path as for real weights, so tests run it offline."""
