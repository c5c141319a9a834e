"""`vlp audit`: which clips made a LoRA, which LoRAs used a source or a clip, and what differs between two LoRAs."""
