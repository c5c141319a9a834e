"""A tiny, random-initialised Qwen2.5-VL with a working processor, built offline.

Tests and the demo caption with it through exactly the code path real weights take: the
model and its processor (byte-level BPE tokenizer trained here with ``tokenizers``,
``Qwen2VLImageProcessor``, ``Qwen2VLVideoProcessor``, a Qwen-style chat template) are saved
with ``save_pretrained`` into a local folder and loaded back with ``AutoProcessor`` and
``AutoModelForImageTextToText``. The folder is keyed by a hash of the build config and the
seed, so the same config always gives the same weights, and a changed config a new folder.

Its captions are gibberish (random weights). The caption backend gets non-empty text from
it through ``min_new_tokens`` (EOS is suppressed until then), see ``TINY_SAMPLING``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from pipeline.core.fs import sha256_json

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# A Qwen-style ChatML template: system turn, user turns whose content is a list of
# {"type": "image"|"video"|"text"} parts, and the assistant header when asked for it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Sentences the tiny byte-level BPE is trained on (caption-like English, so the merges make sense).
CORPUS = [
    "A man rides a bicycle along a dirt path through a green forest.",
    "The camera pans slowly from left to right across a city street at night.",
    "A woman with short brown hair and a red jacket stands in a bright kitchen.",
    "Two cyclists race down a mountain trail while the camera follows them.",
    "A large white rabbit walks across a grassy meadow under a blue sky.",
    "A person talks on a phone inside a moving car; the camera is static.",
    "Describe the subject, the action, the camera motion and the setting in plain sentences.",
    "Describe the person: face, hair, clothing, and the setting of the photo.",
]

DEFAULT_CONFIG = {
    "vocab_size": 512,  # BPE vocabulary incl. byte alphabet and special tokens
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vision_hidden_size": 32,
    "vision_depth": 2,
    "vision_heads": 2,
    "initializer_range": 0.3,  # larger than real models' 0.02, so the answer depends on the input
    "seed": 0,
}


def tiny_config_hash(config: dict | None = None) -> str:
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    return sha256_json({"tiny-qwen2.5-vl": cfg, "corpus": CORPUS, "template": CHAT_TEMPLATE})


def default_cache_dir() -> Path:
    root = os.environ.get("VLP_TINY_MODELS") or os.path.join(tempfile.gettempdir(), "vlp-tiny-models")
    return Path(root)


def build_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_vlm(out_dir: str | os.PathLike, config: dict | None = None) -> Path:
    """Build the tiny model and processor and ``save_pretrained`` them into ``out_dir``."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    cfg = {**DEFAULT_CONFIG, **(config or {})}
    tokenizer = build_tokenizer(cfg["vocab_size"])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    quarter = head_dim // 4
    model_config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": cfg["hidden_size"],
            "intermediate_size": cfg["intermediate_size"],
            "num_hidden_layers": cfg["num_hidden_layers"],
            "num_attention_heads": cfg["num_attention_heads"],
            "num_key_value_heads": cfg["num_key_value_heads"],
            "max_position_embeddings": 4096,
            "initializer_range": cfg["initializer_range"],
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                "mrope_section": [head_dim // 2 - 2 * quarter, quarter, quarter]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": cfg["vision_depth"],
            "hidden_size": cfg["vision_hidden_size"],
            "intermediate_size": 2 * cfg["vision_hidden_size"],
            "num_heads": cfg["vision_heads"],
            "out_hidden_size": cfg["hidden_size"],
            "fullatt_block_indexes": [cfg["vision_depth"] - 1],
            "window_size": 112,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "tokens_per_second": 2,
            "initializer_range": cfg["initializer_range"],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        initializer_range=cfg["initializer_range"],
    )
    torch.manual_seed(cfg["seed"])
    model = Qwen2_5_VLForConditionalGeneration(model_config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=28 * 28 * 64),
        video_processor=Qwen2VLVideoProcessor(min_pixels=28 * 28, max_pixels=28 * 28 * 64),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def tiny_vlm_dir(config: dict | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the tiny model for ``config``; built once (atomically) and reused."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / f"tiny-qwen2.5-vl-{tiny_config_hash(config)[:16]}"
    if (target / "config.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-tiny-", dir=root))
    try:
        build_tiny_vlm(tmp, config)
        try:
            os.replace(tmp, target)
        except OSError:  # another process built it first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
