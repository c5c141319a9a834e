"""Model loading for each profile (see ``pipeline.profiles``): the VAE, the text encoder and,
from the train stage, the transformer. Every loader builds the tiny profile's models from a
config with seeded random weights, so tests run the same code path offline."""
