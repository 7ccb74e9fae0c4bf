"""Suite-wide set-up. Environment switches must be set before torch/triton are first imported."""

import os
from collections.abc import Iterator

import pytest

# Triton kernels run on CPU only under its interpreter, and the switch is read at import time.
os.environ.setdefault("TRITON_INTERPRET", "1")
# Nothing may reach a model hub: every encoder the tests load ships inside a package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch thread for the test, restored after. Small tensors on a shared, oversubscribed
    2-core machine: a second OpenMP/LAPACK thread spin-waits, and made the orthogonal layers
    (QR, matrix_exp) ~100x and the small CLI fits ~10x slower."""
    import torch  # here, not at the top: the environment switches above come first

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
