"""Test-session set-up shared by every test file.

TRITON_INTERPRET must be set before anything imports triton or ``kernels``: it makes the
Triton kernels run on the CPU through Triton's interpreter.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import random  # noqa: E402
import zlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_everything(request):
    """Fresh but reproducible randomness per test: the seed is derived from the test's name.

    CRC-32, not ``hash()``: Python salts ``hash`` of a string per process
    (PYTHONHASHSEED), which would give a test different data on every run.
    """
    seed = zlib.crc32(request.node.nodeid.encode()) % (2**31)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    yield
