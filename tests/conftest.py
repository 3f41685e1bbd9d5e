"""Test-session set-up shared by every test file.

TRITON_INTERPRET must be set before anything imports triton or ``kernels``: it makes the
Triton kernels run on the CPU through Triton's interpreter.

The ``gpu`` marker names the kernel test cases that ``./run.sh gpu-check`` runs again on a
GPU, compiled (``TRITON_INTERPRET=0 pytest -m gpu``): there every tensor those tests create
lives on the GPU (``torch.device("cuda")`` as the default device), and they compare with
the tolerances of :data:`KERNEL_DEVICE`'s type. Everywhere else they run on the CPU under the
interpreter, like every other test.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import random  # noqa: E402
import signal  # noqa: E402
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


@pytest.fixture(autouse=True)
def _ctrl_c_raises_keyboard_interrupt():
    """Every test starts with Python's own SIGINT handler (Ctrl-C raises KeyboardInterrupt),
    as in a terminal, whatever the suite was started from. A process started in the
    background by a non-interactive shell inherits SIGINT *ignored*, and Python then keeps
    it ignored: the Ctrl-C tests would see nothing, and the processes they start would
    inherit the ignoring too."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-network tests (``pytestmark =
    pytest.mark.usefixtures("one_thread")``): such a network gains nothing from more, and on
    a busy machine spinning threads cost more than they give."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: Where the ``gpu``-marked kernel tests create their tensors.
KERNEL_DEVICE = torch.device(
    "cuda" if os.environ["TRITON_INTERPRET"] == "0" and torch.cuda.is_available() else "cpu"
)


@pytest.fixture(autouse=True)
def _kernel_tests_on_their_device(request):
    if KERNEL_DEVICE.type == "cuda" and request.node.get_closest_marker("gpu"):
        with torch.device(KERNEL_DEVICE):
            yield
    else:
        yield
