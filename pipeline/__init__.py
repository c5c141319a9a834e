"""video-lora-pipeline: curate, caption, cache and train Wan LoRAs from raw video."""

__version__ = "0.1.0"
