"""Suite-wide set-up. Environment switches must be set before torch/triton are first imported."""

import os

# Triton kernels run on CPU only under its interpreter, and the switch is read at import time.
os.environ.setdefault("TRITON_INTERPRET", "1")
# Nothing may reach a model hub: every encoder the tests load ships inside a package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
