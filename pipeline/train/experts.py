"""Which transformer(s) a run trains, on which timesteps, into which LoRA files.

Files are named after the run (``train.run_name``), so the files of different runs never collide
in a ComfyUI loras folder. Single-expert families train ``transformer`` on every timestep into
``<run>.safetensors`` / ``<run>_comfy.safetensors``. Wan 2.2 A14B has two experts
(``Profile.experts``); at inference ``WanPipeline`` runs ``transformer`` for timesteps >=
``boundary_ratio * 1000`` and ``transformer_2`` below, so:

- ``high``: ``transformer`` trained on t in [boundary_ratio, 1] -> ``<run>_high_noise.safetensors``
  (+ ``<run>_high_noise_comfy.safetensors``);
- ``low``: ``transformer_2`` trained on t in [0, boundary_ratio) -> ``<run>_low_noise.safetensors``
  (+ ``<run>_low_noise_comfy.safetensors``); in diffusers it loads with
  ``load_lora_weights(..., load_into_transformer_2=True)``.

Snapshots (``train.save_every``) go to ``snapshots/<run>-step<NNNNN>[_high_noise|_low_noise][_comfy].safetensors``.

(t is the flow-matching time in [0, 1]: x_t = (1 - t) x0 + t noise, the model sees t * 1000.)
``train.min_t`` / ``train.max_t`` narrow an expert's range further. ``train.expert: both`` trains
high, then low, each a full run of its own (optimizer, ``train.steps`` steps, checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.models.profiles import Profile

CHOICES = ("high", "low", "both")


@dataclass(frozen=True)
class Expert:
    name: str  # "high" | "low" | "" (a single-expert family)
    model: str  # diffusers subfolder: "transformer" | "transformer_2"
    min_t: float
    max_t: float
    max_exclusive: bool = False  # the low-noise range stops just below the boundary

    @property
    def suffix(self) -> str:
        return {"": "", "high": "_high_noise", "low": "_low_noise"}[self.name]

    def files(self, run_name: str) -> tuple[str, str]:
        """(diffusers file, ComfyUI file) names of the run's final LoRA."""
        return f"{run_name}{self.suffix}.safetensors", f"{run_name}{self.suffix}_comfy.safetensors"

    def snapshot_files(self, run_name: str, step: int) -> tuple[str, str]:
        """(diffusers file, ComfyUI file) names of the snapshot at ``step`` (in ``snapshots/``)."""
        return self.files(f"{run_name}-step{step:05d}")


def all_lora_files(run_name: str) -> set[str]:
    """Every final LoRA file name a run can write, and the names of earlier versions (``lora[...]``),
    to clear those of another family or expert choice from a run folder."""
    experts = [Expert(e, "transformer", 0.0, 1.0) for e in ("", "high", "low")]
    return {n for e in experts for name in (run_name, "lora") for n in e.files(name)}


def experts_to_train(profile: Profile, choice: str, min_t: float = 0.0, max_t: float = 1.0) -> list[Expert]:
    """The experts a run trains, in order (high first, as at inference), each with its t range."""
    if choice not in CHOICES:
        raise ValueError(f"train.expert must be one of {list(CHOICES)}, got '{choice}'")
    if len(profile.experts) == 1:
        return [Expert("", profile.experts[0], min_t, max_t)]
    if profile.boundary_ratio is None or len(profile.experts) != 2:
        raise ValueError(f"{profile.name}: a two-expert family needs two experts and a boundary_ratio")
    b = float(profile.boundary_ratio)
    ranges = {"high": Expert("high", profile.experts[0], max(min_t, b), max_t),
              "low": Expert("low", profile.experts[1], min_t, min(max_t, b), max_exclusive=max_t >= b)}
    out = [ranges[n] for n in (("high", "low") if choice == "both" else (choice,))]
    for e in out:
        if not e.min_t < e.max_t:
            raise ValueError(f"train.min_t / max_t ({min_t}, {max_t}) leave no timesteps for the {e.name}-noise expert "
                             f"({'t >= ' if e.name == 'high' else 't < '}{b} for {profile.name})")
    return out


def expert_label(experts: list[Expert]) -> str:
    """What the manifest's ``expert`` column says: "high", "low", "high+low" or ""."""
    return "+".join(e.name for e in experts if e.name)
