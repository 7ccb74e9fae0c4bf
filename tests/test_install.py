"""The install is what constraints.txt says, and pulled no CUDA packages onto a CPU machine."""

import importlib.metadata as md
import re
from pathlib import Path

import pytest
import torch

PINS = {
    m.group(1).lower().replace("_", "-"): m.group(2)
    for m in re.finditer(
        r"^([A-Za-z0-9_.\-]+)==(\S+)",
        (Path(__file__).parents[1] / "constraints.txt").read_text(),
        re.M,
    )
}


def test_the_stack_is_pinned() -> None:
    assert (
        PINS["torch"] == "2.13.0" and PINS["torchvision"] == "0.28.0" and PINS["triton"] == "3.7.1"
    )


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="a GPU machine may carry CUDA packages on purpose"
)
def test_no_cuda_packages_on_a_cpu_machine() -> None:
    cuda = sorted(
        d.metadata["Name"]
        for d in md.distributions()
        if re.match(r"nvidia-|cuda-", d.metadata["Name"].lower())
    )
    assert cuda == []


def test_installed_versions_match_the_pins() -> None:
    mismatched = []
    for dist in md.distributions():
        name = dist.metadata["Name"].lower().replace("_", "-")
        pinned = PINS.get(name)
        if pinned and dist.version.split("+")[0] != pinned:  # torch's local tag: 2.13.0+cpu
            mismatched.append(f"{name} {dist.version} (pinned {pinned})")
    assert mismatched == []
