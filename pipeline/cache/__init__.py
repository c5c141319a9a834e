"""The content-addressed store of latents and prompt embeddings (safetensors, one file per key) and `vlp cache`."""
