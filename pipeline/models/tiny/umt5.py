"""The tiny profiles' text encoder: a byte-level tokenizer and a 2-layer ``UMT5EncoderModel``.

The tokenizer is built with the ``tokenizers`` library (byte-level BPE, no merges; T5-style
``</s>`` appended) and written to a folder with ``save_pretrained``, so
``pipeline.models.text_encoder`` loads it back with ``AutoTokenizer.from_pretrained`` (the same
path as real weights). The encoder has ``d_model`` = the profile's text_dim and seeded random
weights.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import UMT5Config, UMT5EncoderModel

from pipeline.core.fingerprint import folder_fingerprint, state_dict_fingerprint
from pipeline.models.profiles import Profile

TINY_SEED = 0
TINY_SPECIALS = ["<pad>", "</s>", "<unk>"]


def _tiny_tokenizer_object():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(TINY_SPECIALS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return tok


def save_tiny_tokenizer(folder: str | Path, profile: Profile) -> Path:
    """Write the tiny tokenizer (``tokenizer.json`` + config) to ``folder``."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=_tiny_tokenizer_object(), pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=profile.max_text_tokens,
    )
    fast.save_pretrained(str(folder))
    return Path(folder)


@contextmanager
def tiny_tokenizer_folder(profile: Profile) -> Iterator[Path]:
    """A temporary folder holding the tiny tokenizer (removed on exit)."""
    with tempfile.TemporaryDirectory(prefix="vlp-tiny-tokenizer-") as d:
        yield save_tiny_tokenizer(d, profile)


def tiny_text_config(profile: Profile) -> UMT5Config:
    vocab = len(TINY_SPECIALS) + 256
    return UMT5Config(
        vocab_size=vocab, d_model=profile.text_dim, d_kv=8, d_ff=2 * profile.text_dim, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
        feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
    )


def build_tiny_encoder(profile: Profile) -> UMT5EncoderModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return UMT5EncoderModel(tiny_text_config(profile))


def tiny_text_fingerprint(profile: Profile) -> str:
    """sha256 of the tiny tokenizer's files + the tiny encoder's state dict, config and seed."""
    h = hashlib.sha256()
    with tiny_tokenizer_folder(profile) as folder:
        h.update(folder_fingerprint(folder).encode())
    h.update(state_dict_fingerprint(build_tiny_encoder(profile), {"seed": TINY_SEED, **tiny_text_config(profile).to_dict()}).encode())
    return h.hexdigest()
