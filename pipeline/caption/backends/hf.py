"""Caption backend: a Qwen2.5-VL (or any image-text-to-text model with a Qwen-style processor)
run with transformers ``generate``, batched with left padding.

The model is loaded with ``AutoProcessor`` and ``AutoModelForImageTextToText`` from a hub id or
a local folder (the tiny profile is a local folder too) and prompted through its own chat
template. Videos go in as our sampled frames with their ``VideoMetadata`` (so the model's
temporal position ids match the real sampling rate); photos go in as one image.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from pipeline.caption.backends.base import CaptionItem, CaptionOutput, GenerationParams
from pipeline.caption.media import FrameSampling
from pipeline.core.devices import resolve_device, resolve_dtype

log = logging.getLogger("caption")


def count_new_tokens(row: list[int], eos_ids: set[int], pad_id: int) -> int:
    """Generated tokens of one row: up to and including the first end-of-sequence token, else
    every token but the trailing padding (a batch pads rows that finished early)."""
    for i, t in enumerate(row):
        if t in eos_ids:
            return i + 1
    n = len(row)
    while n and row[n - 1] == pad_id:
        n -= 1
    return n


class TransformersCaptioner:
    def __init__(
        self,
        model_path: str,
        generation: GenerationParams,
        sampling: FrameSampling,
        label: str = "",
        device: str = "auto",
        dtype: str = "auto",
        min_pixels: int = 28 * 28 * 4,
        attn_implementation: str = "sdpa",
        ):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.generation = generation
        self.sampling = sampling
        self.label = label or model_path  # the ``model`` column: name@fingerprint
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.min_pixels = int(min_pixels)
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.processor.tokenizer.padding_side = "left"
        self.model = AutoModelForImageTextToText.from_pretrained(
            model_path, dtype=self.dtype, attn_implementation=attn_implementation,
            device_map=str(self.device) if self.device.type == "cuda" else None,  # load straight onto the GPU
        ).to(self.device).eval()
        tok = self.processor.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        gen_cfg = self.model.generation_config
        eos = gen_cfg.eos_token_id if gen_cfg.eos_token_id is not None else tok.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        # Placeholder tokens a caption must never hold (a random-weight model happily emits them).
        vision = ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>"]
        vocab = tok.get_vocab()
        self.suppress = [vocab[t] for t in vision if t in vocab]
        log.info("caption model %s on %s (%s)", model_path, self.device, str(self.dtype).replace("torch.", ""))

    def _messages(self, item: CaptionItem) -> list[dict]:
        part = {"type": "image"} if item.media.kind == "image" else {"type": "video"}
        return [{"role": "user", "content": [part, {"type": "text", "text": item.prompt}]}]

    def _inputs(self, items: list[CaptionItem], max_pixels: int, image_max_pixels: int):
        from transformers.video_utils import VideoMetadata

        texts = [self.processor.apply_chat_template(self._messages(it), tokenize=False, add_generation_prompt=True) for it in items]
        images = [it.media.image for it in items if it.media.kind == "image"]
        videos: list[np.ndarray] = []
        metadata: list[Any] = []
        for it in items:
            m = it.media
            if m.kind != "image":
                frames = m.frames
                assert frames is not None  # a video's Media always has its frames (load_media)
                videos.append(frames)
                metadata.append(VideoMetadata(
                    total_num_frames=m.n_frames, fps=m.clip_fps, width=frames.shape[2], height=frames.shape[1],
                    duration=m.n_frames / m.clip_fps if m.clip_fps else None, frames_indices=m.indices,
                ))
        kwargs: dict[str, Any] = {}
        if videos:
            kwargs["videos"] = videos
            kwargs["videos_kwargs"] = {
                "video_metadata": metadata,
                "do_sample_frames": False,  # the frames are already our sampling
                "size": {"shortest_edge": min(self.min_pixels, max_pixels), "longest_edge": max_pixels},
                "cap_pixels_per_frame": False,
            }
        if images:
            kwargs["images"] = images
            kwargs["images_kwargs"] = {"size": {"shortest_edge": min(self.min_pixels, image_max_pixels), "longest_edge": image_max_pixels}}
        return self.processor(text=texts, padding=True, return_tensors="pt", **kwargs)

    @torch.inference_mode()
    def generate(self, items: list[CaptionItem]) -> list[CaptionOutput]:
        g, s = self.generation, self.sampling
        inputs = self._inputs(items, s.max_pixels, s.image_max_pixels).to(self.device)
        for key in ("pixel_values", "pixel_values_videos"):
            if key in inputs:
                inputs[key] = inputs[key].to(self.dtype)
        gen = {"max_new_tokens": g.max_new_tokens, "min_new_tokens": g.min_new_tokens or None,
               "do_sample": g.do_sample, "pad_token_id": self.pad_id, **g.extra}
        if self.suppress:
            gen["suppress_tokens"] = self.suppress
        if g.do_sample:
            gen.update(temperature=g.temperature, top_p=g.top_p)
            torch.manual_seed(g.seed)
        else:
            gen.update(temperature=None, top_p=None, top_k=None)
        out = self.model.generate(**inputs, **gen)
        new = out[:, inputs["input_ids"].shape[1]:].cpu()
        texts = self.processor.batch_decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        results = []
        for row, text in zip(new.tolist(), texts):
            results.append(CaptionOutput(text=text, new_tokens=count_new_tokens(row, self.eos_ids, self.pad_id)))
        return results
