"""The encode stage: the VAE latents and UMT5 (and CLIP) embeddings of the dataset, into the content-addressed cache."""
