import atexit
import os
import shutil
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# generated data sets (MNIST-1D) are kept in a folder of this session, never in the user's cache
_CACHE = tempfile.mkdtemp(prefix="lightning_fedmut-test-cache-")
os.environ["LIGHTNING_FEDMUT_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# tests in other folders import the quadratic baselines' helpers from tests/algorithms/test_baselines_quadratic.py
sys.path.append(str(Path(__file__).parent / "algorithms"))

from helpers import make_synthetic  # noqa: E402


@pytest.fixture
def synthetic():
    """(train dataset, validation dataset) of 240/60 points, 8 features, 3 classes."""
    return make_synthetic()


@pytest.fixture(autouse=True)
def _wandb_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
