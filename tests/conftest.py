import os
from pathlib import Path

import pytest

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pipeline.core.samples import sample_video


@pytest.fixture(scope="session")
def bikes() -> Path:
    return sample_video("bikes.mp4")


@pytest.fixture(scope="session")
def carphone() -> Path:
    return sample_video("carphone_pristine.mp4")


@pytest.fixture(scope="session")
def bunny() -> Path:
    return sample_video("bigbuckbunny.mp4")


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny models run fastest on one thread; more threads spin against each other on a busy machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
