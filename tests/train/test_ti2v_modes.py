"""Family defaults that match the models: encode samples clips at the profile's own frame rate (24 fps for
Wan 2.2 TI2V-5B, 16 for the others) and the Wan 2.1 caches keep their keys; TI2V-5B trains videos as
image-to-video (clean first frame), text-to-video or a seeded per-sample mix of both (``train.ti2v_mode``)."""

import pytest
import torch

from pipeline.core.config import ParamsError, load_settings
from pipeline.encode.config import EncodeConfig
from pipeline.encode.plan import assign_keys, plan_samples
from pipeline.models.profiles import PROFILES, get_profile
from pipeline.train.conditioning import Conditioning, TrainInputs
from pipeline.train.config import TrainConfig
from pipeline.train.step import flow_matching_loss, micro_step, seed_of
from pipeline.train.timesteps import TimestepSampler
from tests.helpers.encode_data import make_video, tables

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# ------------------------------------------------------------------ encode: the profile's frame rate

CFG = EncodeConfig(area=64 * 64, device="cpu")  # the default frame buckets 17, 33, 49, 81 and target_fps
# The latent key of the 100-frame 48 fps clip below for the 16 fps families, recorded from the code before
# the frame rate followed the profile (target_fps defaulted to 16.0): existing 16 fps caches stay valid.
KEY_16FPS = "c1dd5f87cae1592cf73399d88f444902da424c1907356dc739626a8a4ae107ae"
COND_16FPS = "d0236f7ea2535ad05ac6e8e80bd6ce8afe4f1907d4e8e3569b4f23e3f3ba7e53"


@pytest.fixture(scope="module")
def fast_clip(tmp_path_factory):
    """A 48 fps synthetic clip of 100 frames (2.08 s), captioned, with a fixed sha256 (keys independent of the encoder)."""
    root = tmp_path_factory.mktemp("fps")
    _, row = make_video(root, "fast", 100, fps=48)
    row["sha256"] = "0" * 64
    ds, caps = tables([row], {"fast": "a fast clip"})
    return root, ds, caps


def plan(fast_clip, name, cfg=CFG, **keys):
    root, ds, caps = fast_clip
    samples, skipped = plan_samples(ds, caps, cfg, get_profile(name), root)
    assert not skipped and len(samples) == 1
    assign_keys(samples, cfg, "vae-fp", "text-fp", 256, torch.device("cpu"), **keys)
    return samples[0]


def test_profiles_carry_their_native_frame_rate():
    assert get_profile("wan2.2-ti2v-5b").fps == get_profile("tiny-ti2v").fps == 24
    for name, prof in PROFILES.items():
        assert prof.fps == (24 if prof.family == "wan2.2-ti2v" else 16), name
    assert get_profile("tiny-ti2v", path="/some/copy").fps == 24  # a local copy keeps the family's rate


def test_encode_samples_at_the_profiles_rate_unless_target_fps_says_otherwise():
    ti2v, tiny = get_profile("tiny-ti2v"), get_profile("tiny")
    assert EncodeConfig().target_fps is None
    assert (CFG.frame_rate(ti2v), CFG.frame_rate(tiny), CFG.frame_rate(get_profile("tiny-i2v-a14b"))) == (24.0, 16.0, 16.0)
    native = load_settings(EncodeConfig, {"target_fps": "native"}, "encode")
    assert (native.frame_rate(ti2v), native.frame_rate(tiny)) == (24.0, 16.0)
    source = load_settings(EncodeConfig, {"target_fps": "source"}, "encode")
    assert source.frame_rate(ti2v) is None  # every clip frame, at the clip's own rate
    assert load_settings(EncodeConfig, {"target_fps": 16}, "encode").frame_rate(ti2v) == 16.0
    assert load_settings(EncodeConfig, {"target_fps": None}, "encode").frame_rate(ti2v) == 24.0
    for bad in ("fast", -4, 0, True):
        with pytest.raises(ParamsError, match="encode.target_fps") as e:
            load_settings(EncodeConfig, {"target_fps": bad}, "encode")
        assert "\n" not in str(e.value)


def test_ti2v_takes_24_fps_frames_and_the_16_fps_families_keep_their_keys(fast_clip):
    ti2v, t2v = plan(fast_clip, "tiny-ti2v"), plan(fast_clip, "tiny")
    # 48 fps: every 2nd clip frame at 24 fps (49 of them fit: 49 bucket), every 3rd at 16 fps (34: 33 bucket)
    assert ti2v.frame_indices == list(range(0, 97, 2)) and ti2v.bucket[0] == 49
    assert t2v.frame_indices == list(range(0, 97, 3)) and t2v.bucket[0] == 33
    assert t2v.latent_key == KEY_16FPS and plan(fast_clip, "tiny-t2v-a14b").latent_key == KEY_16FPS
    i2v = plan(fast_clip, "tiny-i2v", cond=True)
    assert (i2v.latent_key, i2v.cond_key) == (KEY_16FPS, COND_16FPS)
    assert ti2v.latent_key != KEY_16FPS  # another rate, other frames, another key (same fingerprints here)
    # the key follows the frames: TI2V at an explicit 16 fps takes the 16 fps frames and finds their key
    at16 = plan(fast_clip, "tiny-ti2v", EncodeConfig(**{**CFG.__dict__, "target_fps": 16.0}))
    assert (at16.frame_indices, at16.latent_key) == (t2v.frame_indices, KEY_16FPS)
    every = plan(fast_clip, "tiny-ti2v", EncodeConfig(**{**CFG.__dict__, "target_fps": "source"}))
    assert every.frame_indices == list(range(81))


# ------------------------------------------------------------------ train: ti2v_mode


class Capture(torch.nn.Module):
    """A stand-in transformer that records its inputs and predicts zeros (through a weight, for the backward)."""

    config = type("C", (), {"patch_size": (1, 2, 2)})

    def __init__(self):
        super().__init__()
        self.calls: list[dict] = []
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, **kw):
        self.calls.append(kw)
        return (kw["hidden_states"] * self.weight,)


PER_FRAME = 2 * 3  # tokens of one latent frame of [.., 4, 6] latents with 1x2x2 patches


def batch(b=2, frames=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, noise = torch.randn(b, 48, frames, 4, 6, generator=g), torch.randn(b, 48, frames, 4, 6, generator=g)
    return TrainInputs(x0, torch.randn(b, 7, 32, generator=g)), noise


def clean_first_of(call, x0) -> list[bool]:
    """Per sample: whether the model saw the clean first latent frame (with timestep 0 on its tokens)."""
    hs, ts = call["hidden_states"], call["timestep"]
    out = []
    for i in range(hs.shape[0]):
        clean = bool(torch.equal(hs[i, :, 0], x0[i, :, 0]))
        assert clean == bool(ts[i, :PER_FRAME].eq(0).all())  # the frame and its timesteps agree
        out.append(clean)
    return out


def test_ti2v_mode_is_a_checked_training_setting_other_families_ignore():
    assert TrainConfig().ti2v_mode == "i2v"
    assert load_settings(TrainConfig, {"ti2v_mode": "mixed"}, "train").ti2v_mode == "mixed"
    with pytest.raises(ParamsError, match="train.ti2v_mode must be i2v, t2v or mixed, got 'both'"):
        load_settings(TrainConfig, {"ti2v_mode": "both"}, "train")
    assert "ti2v_mode" in TrainConfig(ti2v_mode="t2v").training_settings()
    settings = TrainConfig(ti2v_mode="t2v").training_settings()
    assert Conditioning.of(get_profile("tiny-ti2v"), "t2v").checkpoint_settings(settings)["ti2v_mode"] == "t2v"
    # the default, and any value for another family, leaves the checkpoint fingerprint as it was before the setting
    assert "ti2v_mode" not in Conditioning.of(get_profile("tiny-ti2v")).checkpoint_settings(TrainConfig().training_settings())
    for name in ("tiny", "tiny-i2v", "tiny-i2v-a14b"):
        cond = Conditioning.of(get_profile(name), "t2v")
        assert cond == Conditioning.of(get_profile(name)) and "ti2v_mode" not in cond.checkpoint_settings(settings)


@pytest.mark.parametrize("mode", ["i2v", "t2v"])
def test_t2v_noises_the_first_frame_and_i2v_keeps_it_clean(mode):
    cond = Conditioning.of(get_profile("tiny-ti2v"), mode)
    inputs, noise = batch()
    x0, t = inputs.latents, torch.tensor([0.3, 0.9])
    model = Capture()
    loss = flow_matching_loss(model, inputs, t, noise, torch.float32, cond)
    hs, ts = model.calls[0]["hidden_states"], model.calls[0]["timestep"]
    tt = t.view(2, 1, 1, 1, 1)
    x_t = (1 - tt) * x0 + tt * noise
    assert ts.shape == (2, 3 * PER_FRAME) and torch.allclose(hs[:, :, 1:], x_t[:, :, 1:])
    if mode == "t2v":  # a text-to-video step: every token noised at t, the whole video in the loss
        assert torch.allclose(hs, x_t) and not torch.equal(hs[:, :, 0], x0[:, :, 0])
        assert torch.equal(ts, (t * 1000).view(2, 1).expand(2, 3 * PER_FRAME))
        assert loss.item() == pytest.approx(((noise - x0) ** 2).mean().item(), rel=1e-5)
    else:
        assert torch.equal(hs[:, :, 0], x0[:, :, 0]) and ts[:, :PER_FRAME].eq(0).all()
        assert torch.allclose(ts[:, PER_FRAME:], (t * 1000).view(2, 1).expand(2, 2 * PER_FRAME))
        assert loss.item() == pytest.approx(((noise - x0)[:, :, 1:] ** 2).mean().item(), rel=1e-5)
    assert clean_first_of(model.calls[0], x0) == [mode == "i2v"] * 2


@pytest.mark.parametrize("mode", ["i2v", "t2v", "mixed"])
def test_photos_train_text_to_image_in_every_mode(mode):
    cond = Conditioning.of(get_profile("tiny-ti2v"), mode)
    inputs, noise = batch(b=2, frames=1)
    model = Capture()
    g = torch.Generator().manual_seed(3)
    loss = micro_step(model, inputs, TimestepSampler("uniform"), g, torch.float32, conditioning=cond)
    ts = model.calls[0]["timestep"]
    assert ts.shape == (2, PER_FRAME) and all(ts[i].eq(ts[i, 0]).all() for i in range(2)) and ts.gt(0).all()
    assert loss > 0


def run_mixed(batches=8, seed=42):
    """The coins of ``batches`` mixed batches of 2 videos, each seeded by its batch index as the loop seeds it."""
    cond = Conditioning.of(get_profile("tiny-ti2v"), "mixed")
    sampler = TimestepSampler("uniform")
    coins, losses = [], []
    for index in range(batches):
        inputs, _ = batch(seed=index)
        model = Capture()
        g = torch.Generator().manual_seed(seed_of("batch", seed, index))
        losses.append(micro_step(model, inputs, sampler, g, torch.float32, conditioning=cond))
        coins.append(clean_first_of(model.calls[0], inputs.latents))
    return coins, losses


def test_mixed_draws_each_sample_from_the_batch_seed_deterministically():
    coins, losses = run_mixed()
    flat = [c for pair in coins for c in pair]
    assert True in flat and False in flat  # both modes over a few batches
    assert any(a != b for a, b in coins)  # per sample, not per batch
    assert run_mixed() == (coins, losses)  # the same seed and batch indices: the same coins and losses
    assert run_mixed(seed=7)[0] != coins
    # the timesteps and noise are those of the i2v mode (the coins are drawn after them): the noised frames agree
    inputs, _ = batch(seed=0)
    seen = {}
    for mode in ("i2v", "mixed"):
        model = Capture()
        micro_step(model, inputs, TimestepSampler("uniform"), torch.Generator().manual_seed(seed_of("batch", 42, 0)),
                   torch.float32, conditioning=Conditioning.of(get_profile("tiny-ti2v"), mode))
        seen[mode] = model.calls[0]["hidden_states"][:, :, 1:]
    assert torch.equal(seen["i2v"], seen["mixed"])


def test_mixed_loss_leaves_out_the_first_frame_of_the_i2v_samples_only():
    cond = Conditioning.of(get_profile("tiny-ti2v"), "mixed")
    inputs, noise = batch()
    x0, t = inputs.latents, torch.tensor([0.4, 0.6])
    model = Capture()
    loss = flow_matching_loss(model, inputs, t, noise, torch.float32, cond, torch.tensor([True, False]))
    assert clean_first_of(model.calls[0], x0) == [True, False]
    err = (noise - x0) ** 2
    want = (err[0, :, 1:].sum() + err[1].sum()) / (err[0, :, 1:].numel() + err[1].numel())
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    with pytest.raises(ValueError, match="mixed needs each sample's coin"):
        flow_matching_loss(model, inputs, t, noise, torch.float32, cond)


def test_a_tiny_ti2v_run_trains_in_each_mode_and_another_mode_does_not_resume(tmp_path):
    from pipeline.train.stage import run_from_params
    from tests.helpers.train_data import make_dataset

    clips = [{"clip_id": f"v{i}", "frames": 9} for i in range(4)]  # v3 held out: the eval loss runs in each mode
    data = make_dataset(tmp_path, clips, profile=get_profile("tiny-ti2v"))
    base = dict(steps=3, batch_size=1, rank=4, alpha=8, lr=2e-2, base_storage="fp32", save_dtype="float32", held_out_fraction=0.0,
                held_out_clips=["v3"], eval_every=0, checkpoint_every=1, progress=False,
                seed=2)  # seed 2: mixed's three coins are t2v, i2v, t2v

    def go(mode, run="run"):
        return run_from_params({"profile": "tiny-ti2v", "path": None}, {**base, "run_name": run, "ti2v_mode": mode},
                               cache_dir=str(data / "cache"), data_dir=str(data))

    losses = {}
    for mode in ("i2v", "t2v", "mixed"):
        m = go(mode, run=mode)
        assert m["steps"] == 3 and m["resumed_from_step"] is None and m["eval_loss_final"] > 0
        losses[mode] = (data / "lora" / mode / "loss.csv").read_text()
    assert len(set(losses.values())) == 3  # three modes, three trainings
    assert go("mixed", run="mixed")["resumed_from_step"] == 3  # the same mode resumes
    again = go("t2v", run="mixed")  # another mode is another training: its checkpoints are set aside
    assert again["resumed_from_step"] is None and (data / "lora" / "mixed" / "checkpoints" / "stale").is_dir()
