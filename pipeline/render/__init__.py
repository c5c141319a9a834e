"""The render stage: decode the sample latents the train stage made (``train.samples``) to mp4 with the family's VAE."""
