"""The LoRA adapter: set-up on the transformer through peft, and the two files a run writes.

The files are named after the run (``train.run_name``, see ``experts.Expert.files``): a single-expert
family writes the two files below; Wan 2.2 A14B writes them per expert as
``<run>_high_noise[_comfy].safetensors`` and ``<run>_low_noise[_comfy].safetensors``; snapshots
(``train.save_every``) go to ``snapshots/<run>-step<NNNNN>[...].safetensors``.

- ``<run>.safetensors``: diffusers/peft layout (``transformer.blocks.N.attn1.to_q.lora_A.weight``)
  with the adapter config in the ``lora_adapter_metadata`` entry, as diffusers writes it, so
  ``WanPipeline.load_lora_weights`` restores rank and alpha. That entry is this layout's equivalent
  of the ``.alpha`` keys: diffusers takes alpha from it alone (``.alpha`` tensors in this layout are
  loaded and ignored, checked with diffusers 0.42), so the file has none. (``transformer.load_lora_adapter``
  given the file's path does not read the entry either: alpha falls back to the rank.)
- ``<run>_comfy.safetensors``: original Wan / ComfyUI layout (``diffusion_model.blocks.N.self_attn.q``
  ...), an ``.alpha`` scalar per module.

Both carry ``vlp.*`` metadata (see :func:`lora_metadata`), which ``vlp audit`` reads, the standard
``ss_*`` / ``modelspec.*`` keys of kohya's tools and Stability's model spec (``metadata``), and each its
own ``sshs_model_hash`` (kohya's hash: sha256 of the tensor data after the header, so independent of the
metadata; also as ``modelspec.hash_sha256``, ``0x``-prefixed, as the model spec defines it). kohya's
``sshs_legacy_hash`` is not written: it hashes bytes at a fixed file offset, which the header moves.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save, save_file

from pipeline.core.fs import atomic_path
from pipeline.train.comfy_keys import BLOCK_MODULES, to_comfy

if TYPE_CHECKING:
    from diffusers import WanTransformer3DModel

ADAPTER = "default"
FORMAT_VERSION = "1"

# Every Linear in the attention and the FFN of each block (diffusers names inside a block).
# ``attn2.add_k_proj`` / ``add_v_proj`` (the image keys/values, ComfyUI ``k_img`` / ``v_img``) exist
# only in Wan 2.1 I2V models; in other families they match nothing.
DEFAULT_TARGETS = [
    "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
    "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "attn2.add_k_proj", "attn2.add_v_proj",
    "ffn.net.0.proj", "ffn.net.2",
]


def target_regex(targets: list[str]) -> str:
    """peft ``target_modules`` regex matching exactly these modules of every block."""
    unknown = [t for t in targets if t not in BLOCK_MODULES]
    if unknown:
        raise ValueError(f"unknown LoRA target(s) {unknown}; choose from {sorted(BLOCK_MODULES)}")
    if not targets:
        raise ValueError("train.targets is empty")
    return r"blocks\.\d+\.(" + "|".join(re.escape(t) for t in targets) + ")"


def add_lora(transformer: WanTransformer3DModel, rank: int, alpha: float, dropout: float, targets: list[str],
             seed: int) -> LoraConfig:
    """Add a trainable LoRA adapter (``transformer.add_adapter``), its weights in float32, seeded init."""
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights=True,
                        target_modules=target_regex(targets))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer.add_adapter(config, adapter_name=ADAPTER)
    trainable = 0
    for name, p in transformer.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()
            p.requires_grad_(True)
            trainable += p.numel()
        else:
            p.requires_grad_(False)
    if trainable == 0:
        raise ValueError(f"LoRA targets {targets} matched no module of the transformer")
    return config


def trainable_parameters(transformer: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The LoRA parameters by their full module path (what checkpoints store)."""
    return {n: p for n, p in transformer.named_parameters() if p.requires_grad}


def lora_state_dict(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """diffusers/peft keys without prefix: ``blocks.0.attn1.to_q.lora_A.weight`` -> tensor."""
    return {k: v.detach() for k, v in get_peft_model_state_dict(transformer, adapter_name=ADAPTER).items()}


def lora_metadata(*, run_name: str, profile: str, family: str, base_model: str, rank: int, alpha: float,
                  targets: list[str], steps: int, manifest_sha256: str, expert: str = "",
                  consent: dict | None = None) -> dict[str, str]:
    """The ``vlp.*`` safetensors metadata both LoRA files carry. ``consent``: what the trained clips'
    records say (``pipeline.core.consent.summary`` of the manifest's trained rows), as ``vlp.consent`` JSON;
    the manifest's sha256 (``vlp.manifest_sha256``) proves it, ``vlp audit`` recomputes it."""
    extra = {"vlp.consent": json.dumps(consent, sort_keys=True)} if consent is not None else {}
    return {
        "vlp.format": FORMAT_VERSION,
        "vlp.run_name": run_name,
        "vlp.profile": profile,
        "vlp.family": family,
        "vlp.base_model": base_model,
        "vlp.rank": str(rank),
        "vlp.alpha": str(alpha),
        "vlp.targets": json.dumps(list(targets)),
        "vlp.steps": str(steps),
        "vlp.manifest_sha256": manifest_sha256,
        "vlp.expert": expert,
        **extra,
    }


def _adapter_metadata(config: LoraConfig) -> str:
    """The adapter config as diffusers stores it (``transformer.``-prefixed keys, JSON). Dropout is a
    training setting: it is stored as 0, since peft would otherwise add dropout modules in training
    mode to an inference model that loads the file."""
    cfg = {**config.to_dict(), "lora_dropout": 0.0}
    packed = {f"transformer.{k}": (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}
    return json.dumps(packed, indent=2, sort_keys=True, default=str)


def save_lora_files(out_dir: str | Path, state_dict: dict[str, torch.Tensor], config: LoraConfig,
                    metadata: dict[str, str], dtype: torch.dtype, diffusers_name: str, comfy_name: str) -> tuple[Path, Path]:
    """Write the diffusers and the ComfyUI file (atomically) as ``out_dir / diffusers_name`` and
    ``out_dir / comfy_name`` (``experts.Expert.files`` / ``snapshot_files``); returns their paths."""
    out_dir = Path(out_dir)
    weights = {k: v.detach().to("cpu", dtype).contiguous() for k, v in state_dict.items()}
    diffusers_sd = {f"transformer.{k}": v for k, v in weights.items()}
    comfy_sd = to_comfy(weights, config.lora_alpha)
    paths = (out_dir / diffusers_name, out_dir / comfy_name)
    metas = ({"format": "pt", "lora_adapter_metadata": _adapter_metadata(config), **metadata},
             {"format": "pt", **metadata})
    for path, sd, meta in zip(paths, (diffusers_sd, comfy_sd), metas):
        digest = tensor_data_sha256(sd)
        with atomic_path(path) as tmp:
            save_file(sd, str(tmp), metadata={**meta, "sshs_model_hash": digest, "modelspec.hash_sha256": f"0x{digest}"})
    return paths


def tensor_data_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """kohya's ``sshs_model_hash``: sha256 (hex) of the safetensors bytes after the header (the 8-byte
    length and the JSON), i.e. of the tensor data alone, which the metadata does not change."""
    blob = save(state_dict)
    return hashlib.sha256(memoryview(blob)[8 + int.from_bytes(blob[:8], "little"):]).hexdigest()


def load_lora_file(transformer: WanTransformer3DModel, path: str | Path, rank: int, alpha: float,
                   targets: list[str]) -> None:
    """Add the adapter ``add_lora`` makes to a frozen ``transformer`` and load a diffusers-layout file
    ``save_lora_files`` wrote into it, frozen (for inference: the other Wan 2.2 A14B expert's LoRA
    in sample videos). Keys that do not match the adapter are an error naming the file."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    add_lora(transformer, rank, alpha, 0.0, targets, 0)
    weights = {k.removeprefix("transformer."): v for k, v in load_file(str(path)).items()}
    result = set_peft_model_state_dict(transformer, weights, adapter_name=ADAPTER)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise ValueError(f"{path}: LoRA keys do not match rank {rank} / targets {targets}: "
                         f"{(result.unexpected_keys or missing)[:2]}")
    transformer.requires_grad_(False)
