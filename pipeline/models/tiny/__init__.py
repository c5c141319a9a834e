"""Offline stand-ins for the ``tiny*`` profiles: small models built from configs with seeded random
weights (the same in every process), one module per model: ``vae`` (Wan 2.1 / 2.2 VAE), ``umt5``
(tokenizer and text encoder), ``clip`` (Wan 2.1 I2V image encoder and processor), ``transformer``
(the denoising transformer of each family) and ``vlm`` (the Qwen2.5-VL caption model). The real
loaders in ``pipeline.models`` (and the caption backend for ``vlm``) call into them for a tiny
profile and treat what they build like downloaded weights from then on."""
