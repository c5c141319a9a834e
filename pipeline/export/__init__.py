"""`vlp export`: kept clips, .txt captions and a dataset TOML for musubi-tuner / diffusion-pipe."""
