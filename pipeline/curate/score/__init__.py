"""The score stage: each clip decoded once into small grey frames, then every scorer on them."""
