"""The train stage's settings (``params.yaml`` group ``train``), with their defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from pipeline.core import sample_size
from pipeline.core.config import ParamsError, load_settings
from pipeline.train.lora import DEFAULT_TARGETS
from pipeline.train.timesteps import TimestepSampler

# Settings that change how a run is recorded, not the LoRA it makes: a checkpoint written under
# other values of these is still resumed.
# (``expert`` picks which experts train; each expert's checkpoints are its own.)
# The memory plan is bookkeeping too: swap and offload give bitwise the same LoRA, FFN chunks the
# same up to float rounding, so a run may resume on another card with another plan.
# ``steps`` too: raising it resumes the newest checkpoint and trains on (a schedule that depends on
# the total is re-derived); lowering it resumes the newest checkpoint at or before it.
BOOKKEEPING = {"run_name", "cache_dir", "checkpoint_every", "keep_checkpoints", "remove_stale_checkpoints", "steps",
               "log_with", "save_every", "samples", "sample_every", "sample_frames", "sample_width", "sample_height",
               "sample_steps", "sample_guidance", "sample_seed", "eval_every", "eval_timesteps",
               "eval_max_samples", "eval_seed", "save_dtype", "device", "progress", "expert",
               "blocks_to_swap", "offload_activations", "ffn_chunks", "vram_budget_gib", "verify_cache"}


@dataclass
class TrainConfig:
    run_name: str = "default"
    cache_dir: str | None = None  # the cache store to read; None: encode.cache_dir
    # LoRA
    rank: int = 32
    alpha: float = 32.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    # optimisation
    steps: int = 200
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    optimizer: str = "auto"  # auto | adamw | adamw8bit
    lr_scheduler: str = "constant"  # any diffusers.optimization scheduler: constant, cosine, linear, ...
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    seed: int = 42
    # timesteps
    timestep_sampling: str = "shift"
    shift: float = 3.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    sigmoid_scale: float = 1.0
    min_t: float = 0.0
    max_t: float = 1.0
    # memory
    gradient_checkpointing: bool = True
    base_storage: str = "bf16"  # bf16 | fp8 (float8_e4m3fn storage, bf16 compute) | fp32
    device: str = "auto"
    blocks_to_swap: int | str = "auto"  # auto | N: blocks whose frozen weights stream from host memory
    offload_activations: bool | str = "auto"  # auto | true | false: block inputs kept in host memory
    ffn_chunks: int | str = "auto"  # auto | N: each block's FFN over N token chunks
    vram_budget_gib: float | None = None  # memory to plan for; None: the GPU's free memory
    # data
    repeats: dict[str, int] = field(default_factory=lambda: {"video": 1, "image": 1})
    dataset_repeats: dict[str, int] = field(default_factory=dict)
    image_batch_fraction: float | None = None
    caption_dropout: float = 0.0  # share of samples trained on the empty prompt (cached by encode)
    log_with: str = "none"  # none | tensorboard: live logging beside the DVC plots
    save_every: int = 0  # write loadable LoRA snapshots every N steps (0 = only the final files)
    # sample videos while training (latents; the render stage decodes them)
    samples: list = field(default_factory=list)  # prompts, or {prompt: ..., image: ...}; encode caches their embeddings
    sample_every: int = 0  # steps between samples (and at the last step); 0 = none
    sample_frames: int = sample_size.FRAMES
    sample_width: int = sample_size.WIDTH
    sample_height: int = sample_size.HEIGHT
    sample_steps: int = 20  # denoising steps
    sample_guidance: float = 5.0
    sample_seed: int = 42
    verify_cache: bool = True  # check each cache entry's stored sha256 before training; damaged samples are skipped
    # held out + eval
    held_out_fraction: float = 0.1
    held_out_clips: list[str] = field(default_factory=list)
    held_out_by: str = "clip"
    eval_every: int = 50
    eval_timesteps: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    eval_max_samples: int = 16
    eval_seed: int = 0
    # outputs
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    remove_stale_checkpoints: bool = False  # delete checkpoints this run does not resume (else kept in checkpoints/stale/)
    save_dtype: str = "bfloat16"
    expert: str = "both"  # Wan 2.2 A14B: "high" | "low" | "both" (in turn); ignored by single-expert families
    ti2v_mode: str = "i2v"  # Wan 2.2 TI2V-5B videos: "i2v" (clean first frame) | "t2v" | "mixed" (per sample); ignored by other families
    progress: bool = True

    @classmethod
    def from_params(cls, p: dict | None) -> TrainConfig:
        """From the ``train`` group; a null value keeps the default (``image_batch_fraction: null`` is its default)."""
        return load_settings(cls, {k: v for k, v in (p or {}).items() if v is not None}, "train")

    def check(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.rank < 1 or self.steps < 1 or self.grad_accum < 1 or self.batch_size < 1:
            raise ParamsError("train: rank, steps, grad_accum and batch_size must be >= 1")
        if self.base_storage not in ("bf16", "fp8", "fp32"):
            raise ParamsError(f"train.base_storage must be bf16, fp8 or fp32, got '{self.base_storage}'")
        if self.optimizer not in ("auto", "adamw", "adamw8bit"):
            raise ParamsError(f"train.optimizer must be auto, adamw or adamw8bit, got '{self.optimizer}'")
        if not 0.0 <= self.held_out_fraction < 1.0:
            raise ParamsError(f"train.held_out_fraction must be in [0, 1), got {self.held_out_fraction}")
        if self.expert not in ("high", "low", "both"):
            raise ParamsError(f"train.expert must be high, low or both, got '{self.expert}'")
        if self.ti2v_mode not in ("i2v", "t2v", "mixed"):
            raise ParamsError(f"train.ti2v_mode must be i2v, t2v or mixed, got {self.ti2v_mode!r}")
        self._validate_samples()
        if isinstance(self.save_every, bool) or not isinstance(self.save_every, int) or self.save_every < 0:
            raise ParamsError(f"train.save_every must be a number of steps >= 0, got {self.save_every!r}")
        if self.log_with not in ("none", "tensorboard"):
            raise ParamsError(f"train.log_with must be none or tensorboard, got '{self.log_with}'")
        if isinstance(self.caption_dropout, bool) or not 0.0 <= self.caption_dropout < 1.0:
            raise ParamsError(f"train.caption_dropout must be in [0, 1), got {self.caption_dropout!r}")
        if not isinstance(self.verify_cache, bool):
            raise ParamsError(f"train.verify_cache must be true or false, got {self.verify_cache!r}")
        self._validate_memory()
        try:
            self.sampler()  # checks the timestep settings
        except ValueError as e:
            raise ParamsError(f"params.yaml train: {e}") from None

    def _validate_samples(self) -> None:
        for i, item in enumerate(self.samples):
            prompt, image = sample_size.sample_entry(item)
            extra = set(item) - {"prompt", "image"} if isinstance(item, dict) else set()
            if not isinstance(prompt, str) or extra or not (image is None or isinstance(image, str)):
                raise ParamsError(f"train.samples[{i}]: a prompt (text) or {{prompt: text, image: path}} (image for "
                                  f"image-to-video families), got {item!r}")
        ints = {"sample_every": 0, "sample_frames": 1, "sample_width": 16, "sample_height": 16, "sample_steps": 1}
        for name, low in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ParamsError(f"train.{name} must be a whole number >= {low}, got {v!r}")
        if (self.sample_frames - 1) % 4:
            raise ParamsError(f"train.sample_frames must be 4n+1 (the VAE's temporal stride), got {self.sample_frames}")
        if self.sample_width % 16 or self.sample_height % 16:
            raise ParamsError(f"train.sample_width / sample_height must be multiples of 16, got "
                              f"{self.sample_width}x{self.sample_height}")

    def _validate_memory(self) -> None:
        swap, offload, chunks = self.blocks_to_swap, self.offload_activations, self.ffn_chunks
        if swap != "auto" and (isinstance(swap, bool) or not isinstance(swap, int) or swap < 0):
            raise ParamsError(f"train.blocks_to_swap must be auto or a number of blocks >= 0, got {swap!r}")
        if offload != "auto" and not isinstance(offload, bool):
            raise ParamsError(f"train.offload_activations must be auto, true or false, got {offload!r}")
        if chunks != "auto" and (isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1):
            raise ParamsError(f"train.ffn_chunks must be auto or a number >= 1, got {chunks!r}")
        budget = self.vram_budget_gib
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int | float) or budget <= 0):
            raise ParamsError(f"train.vram_budget_gib must be null or a number of GiB > 0, got {budget!r}")
        if not self.gradient_checkpointing and ((isinstance(swap, int) and swap > 0) or offload is True):
            raise ParamsError("train.blocks_to_swap and train.offload_activations need train.gradient_checkpointing: true "
                             "(the swapped weights and offloaded inputs are brought back for the recompute)")

    def wanted_memory(self):
        """The memory choices the params fix (``auto``: None, the planner's)."""
        from pipeline.train.planner import Wanted

        pick = lambda v: None if v == "auto" else v  # noqa: E731
        return Wanted(pick(self.blocks_to_swap), pick(self.offload_activations), pick(self.ffn_chunks))

    def sampler(self, min_t: float | None = None, max_t: float | None = None, max_exclusive: bool = False) -> TimestepSampler:
        """The timestep sampler; ``min_t`` / ``max_t`` (an expert's range) replace the configured ones."""
        return TimestepSampler(self.timestep_sampling, self.shift, self.logit_mean, self.logit_std, self.sigmoid_scale,
                               self.min_t if min_t is None else min_t, self.max_t if max_t is None else max_t, max_exclusive)

    def training_settings(self) -> dict:
        """The settings a resumable checkpoint must match (all but the bookkeeping ones and ``steps``)."""
        return {k: v for k, v in asdict(self).items() if k not in BOOKKEEPING}
