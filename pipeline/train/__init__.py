"""The train stage: a Wan LoRA trained from cached latents and prompt embeddings alone.

One concept per module: ``config`` (the ``train`` params), ``data`` (samples, held-out split,
bucket batches, collation), ``timesteps`` (flow-matching timestep sampling), ``lora`` (adapter
set-up and the saved files), ``conditioning`` (what each family's transformer sees: I2V
channels and image embeddings, TI2V's clean first frame), ``experts`` (Wan 2.2 A14B: which
transformer, timestep range and file names), ``comfy_keys`` (the original Wan / ComfyUI key layout),
``checkpoint`` (resume), ``estimate`` (peak memory and step time before the run), ``loop``
(the training loop), ``manifest`` (every sample a LoRA saw), ``run`` (tables in, run folder
out), ``cli`` (``vlp train``, ``vlp train-estimate``).
"""
