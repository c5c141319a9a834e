"""Caption dropout (train.caption_dropout): a dropped sample trains on the cached empty prompt,
decided by (seed, batch index, position), so a resumed run drops the same samples."""

import pytest
import torch
from safetensors.torch import load_file

from pipeline.cache.store import CacheStore
from pipeline.core import schemas
from pipeline.train.data import CachedBatches, pad_text
from pipeline.train.stage import run_from_params
from tests.helpers.train_data import add_empty_prompt, make_dataset

TINY = {"profile": "tiny", "path": None}
CLIPS = [{"clip_id": f"c{i}", "frames": 9} for i in range(4)]

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def params(**kw):
    base = dict(run_name="run", steps=6, rank=4, alpha=8, lr=5e-3, base_storage="fp32", save_dtype="float32",
                held_out_fraction=0.0, eval_every=0, checkpoint_every=2, progress=False, seed=3, batch_size=2)
    return {**base, **kw}


def test_dropped_samples_get_the_empty_prompt_deterministically(tmp_path):
    data = make_dataset(tmp_path, CLIPS)
    key = add_empty_prompt(data)
    store = CacheStore(data / "cache")
    samples = schemas.read_table(data / "encoded.parquet", "encoded")
    loader = CachedBatches(store, samples, 16, empty_text_key=key, caption_dropout=0.5, seed=7)
    empty = pad_text(store.get(key)["prompt_embeds"].float(), 16)
    drops = [loader.dropped(i, 2) for i in range(200)]
    share = sum(map(sum, drops)) / 400
    assert 0.4 < share < 0.6  # about the configured share
    assert drops == [loader.dropped(i, 2) for i in range(200)]  # the same every time (a resume)
    i = next(i for i, d in enumerate(drops) if d == [True, False])
    batch = loader.load([0, 1], i)
    assert torch.equal(batch.text[0], empty) and torch.equal(batch.text[1], loader.text(1))
    assert not torch.equal(loader.text(0), empty)
    evaluation = loader.load([0, 1])  # no batch index: evaluation never drops
    assert torch.equal(evaluation.text[0], loader.text(0))
    assert CachedBatches(store, samples, 16, empty_text_key=key, caption_dropout=0.0).dropped(i, 2) == [False, False]


def test_a_run_with_caption_dropout_trains_on_the_empty_prompt_and_resumes_the_same(tmp_path):
    data = make_dataset(tmp_path, CLIPS)
    add_empty_prompt(data)
    run = dict(cache_dir=str(data / "cache"), data_dir=str(data))
    plain = run_from_params(TINY, params(run_name="plain"), **run)
    dropped = run_from_params(TINY, params(run_name="dropout", caption_dropout=0.5), **run)
    a = load_file(str(data / "lora/plain/plain.safetensors"))
    b = load_file(str(data / "lora/dropout/dropout.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the empty prompt changed what was learned
    assert plain["train_loss_last10"] != dropped["train_loss_last10"]
    # 4 steps, then 6: the same samples dropped as in a straight run
    run_from_params(TINY, params(run_name="resumed", caption_dropout=0.5, steps=4), **run)
    again = run_from_params(TINY, params(run_name="resumed", caption_dropout=0.5), **run)
    assert again["resumed_from_step"] == 4
    c = load_file(str(data / "lora/resumed/resumed.safetensors"))
    assert all(torch.equal(b[k], c[k]) for k in b)


def test_caption_dropout_without_the_empty_prompt_is_a_one_line_error(tmp_path):
    data = make_dataset(tmp_path, CLIPS)
    run = dict(cache_dir=str(data / "cache"), data_dir=str(data))
    with pytest.raises(ValueError, match=r"caption_dropout needs the empty prompt's embedding.*re-run the encode stage"):
        run_from_params(TINY, params(caption_dropout=0.1), **run)
    key = add_empty_prompt(data)
    CacheStore(data / "cache").delete(key)
    with pytest.raises(ValueError, match=r"the empty prompt's embedding is not in the cache"):
        run_from_params(TINY, params(caption_dropout=0.1), **run)
    run_from_params(TINY, params(caption_dropout=0.0, steps=1), **run)  # off: not needed


def test_caption_dropout_out_of_range_is_a_params_error():
    from pipeline.core.config import ParamsError
    from pipeline.train.config import TrainConfig

    for bad in (1.0, -0.1, True):
        with pytest.raises(ParamsError, match=r"train\.caption_dropout"):
            TrainConfig.from_params({"caption_dropout": bad}).validate()
