"""What the test install resolved (the core plus the dev extra, as CI installs it): none of the
extras we keep pulled the field's libraries back below the versions the code is written for
(the hpsv2 and image-reward packages would: open_clip_torch 2.32, timm 0.6.13; neither is an
extra of the core install, and ImageReward loads natively)."""

import importlib.metadata

import pytest
from packaging.version import Version

FLOORS = {
    "torch": "2.14",  # the project's torch; not newer (the registry's)
    "torchvision": "0.29",
    "transformers": "5.0",
    "open_clip_torch": "3.0",
    "timm": "1.0",
    "diffusers": "0.35",
    "accelerate": "1.0",
}


@pytest.mark.parametrize("package,floor", sorted(FLOORS.items()))
def test_the_install_kept_the_libraries_at_or_above_their_floor(package, floor):
    installed = Version(importlib.metadata.version(package))
    assert installed >= Version(floor), f"{package} {installed} is below {floor}: an extra downgraded it"


def test_torch_is_the_project_s_release():
    assert Version(importlib.metadata.version("torch")).release[:2] == (2, 14)
    assert Version(importlib.metadata.version("torchvision")).release[:2] == (0, 29)
