"""The UMT5 text encoder and its tokenizer: loading, fingerprint, and prompt embeddings.

Real profiles load the ``tokenizer`` and ``text_encoder`` subfolders of the profile's repo.
Tiny profiles take theirs from ``pipeline.models.tiny.umt5``: the tokenizer is written to a
folder and loaded back with ``AutoTokenizer.from_pretrained`` (the same path as real weights);
the encoder is a 2-layer ``UMT5EncoderModel`` with seeded random weights, checked, frozen and
cast like real weights.
"""

from __future__ import annotations

import hashlib

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, UMT5EncoderModel

from pipeline.core.fingerprint import FileHashMemo, folder_fingerprint
from pipeline.models.locate import model_folder
from pipeline.models.profiles import Profile
from pipeline.models.tiny.umt5 import build_tiny_encoder, tiny_text_fingerprint, tiny_tokenizer_folder


def load_tokenizer(profile: Profile) -> PreTrainedTokenizerBase:
    if profile.is_tiny:
        with tiny_tokenizer_folder(profile) as folder:
            return AutoTokenizer.from_pretrained(str(folder))
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
    if profile.is_tiny:
        return tiny_text_fingerprint(profile)
    h = hashlib.sha256()
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
    # one token past the limit tells a truncated prompt, without transformers' "longer than the
    # maximum sequence length" warning that tokenizing it whole would print
    longer = tokenizer(prompts, add_special_tokens=True, truncation=True, max_length=max_length + 1)["input_ids"]
    truncated = [len(ids) > max_length for ids in longer]
    ids = enc.input_ids.to(encoder.device)
    mask = enc.attention_mask.to(encoder.device)
    hidden = encoder(ids, attention_mask=mask).last_hidden_state.float()
    lens = mask.gt(0).sum(dim=1).tolist()
    return [hidden[i, :n].cpu() for i, n in enumerate(lens)], truncated
