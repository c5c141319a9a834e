"""The UMT5 text encoder and its tokenizer: loading, fingerprint, and prompt embeddings.

Real profiles load the ``tokenizer`` and ``text_encoder`` subfolders of the profile's repo.
The tiny profile builds a byte-level BPE tokenizer (no merges; T5-style ``</s>`` appended)
with the ``tokenizers`` library, saves it to a folder and loads it back with
``AutoTokenizer.from_pretrained`` (the same path as real weights), and a 2-layer
``UMT5EncoderModel`` with ``d_model`` = the profile's text_dim and seeded random weights.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, UMT5Config, UMT5EncoderModel

from pipeline.fingerprint import FileHashMemo, folder_fingerprint, state_dict_fingerprint
from pipeline.models.locate import model_folder
from pipeline.profiles import Profile

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


def load_tokenizer(profile: Profile) -> PreTrainedTokenizerBase:
    if profile.is_tiny:
        with tempfile.TemporaryDirectory(prefix="vlp-tiny-tokenizer-") as d:
            return AutoTokenizer.from_pretrained(str(save_tiny_tokenizer(d, profile)))
    return AutoTokenizer.from_pretrained(str(model_folder(profile, "tokenizer")))


def load_text_encoder(
    profile: Profile, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[PreTrainedTokenizerBase, UMT5EncoderModel]:
    """(tokenizer, encoder) for the profile; the encoder frozen, in eval mode, on ``device`` in ``dtype``."""
    tokenizer = load_tokenizer(profile)
    if profile.is_tiny:
        encoder = build_tiny_encoder(profile)
    else:
        encoder = UMT5EncoderModel.from_pretrained(str(model_folder(profile, "text_encoder")), dtype=dtype)
    if encoder.config.d_model != profile.text_dim:
        raise ValueError(f"{profile.name}: text encoder d_model {encoder.config.d_model} != profile text_dim {profile.text_dim}")
    encoder.requires_grad_(False)
    return tokenizer, encoder.to(device=device, dtype=dtype).eval()


def text_fingerprint(profile: Profile, memo: FileHashMemo | None = None) -> str:
    """sha256 of tokenizer files + text encoder weights."""
    h = hashlib.sha256()
    if profile.is_tiny:
        with tempfile.TemporaryDirectory(prefix="vlp-tiny-tokenizer-") as d:
            h.update(folder_fingerprint(save_tiny_tokenizer(d, profile)).encode())
        h.update(state_dict_fingerprint(build_tiny_encoder(profile), {"seed": TINY_SEED, **tiny_text_config(profile).to_dict()}).encode())
    else:
        h.update(folder_fingerprint(model_folder(profile, "tokenizer"), memo).encode())
        h.update(folder_fingerprint(model_folder(profile, "text_encoder"), memo).encode())
    return h.hexdigest()


def text_encoder_id(profile: Profile, fingerprint: str) -> str:
    return f"{profile.repo or 'tiny'}/text_encoder@{fingerprint[:16]}"


def clean_prompt(text: str) -> str:
    """The clean-up ``WanPipeline`` applies to every prompt (html unescape, ftfy when installed,
    whitespace collapsed), so training embeddings match what inference computes."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    return prompt_clean(text)


@torch.no_grad()
def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, encoder: UMT5EncoderModel, prompts: list[str], max_length: int
) -> tuple[list[torch.Tensor], list[bool]]:
    """Prompt embeddings as ``WanPipeline`` computes them, padding trimmed: one [L, D] tensor per prompt
    (float32), L = real token count (with ``</s>``). Also whether each prompt was truncated."""
    prompts = [clean_prompt(p) for p in prompts]
    enc = tokenizer(
        prompts, padding="max_length", max_length=max_length, truncation=True,
        add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
    )
    full = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    truncated = [len(ids) > max_length for ids in full]
    ids = enc.input_ids.to(encoder.device)
    mask = enc.attention_mask.to(encoder.device)
    hidden = encoder(ids, attention_mask=mask).last_hidden_state.float()
    lens = mask.gt(0).sum(dim=1).tolist()
    return [hidden[i, :n].cpu() for i, n in enumerate(lens)], truncated
