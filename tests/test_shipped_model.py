"""The toy model shipped in the package: loads from its safetensors file, small, and samples."""

import torch

from flowrl.generate import generate
from flowrl.policies.toy import SHIPPED_DIR, WEIGHTS_NAME, load_toy
from flowrl.samplers.shard import seeded_noise


def test_shipped_weights_are_small_safetensors():
    path = SHIPPED_DIR / WEIGHTS_NAME
    assert path.stat().st_size <= 10 * 1024 * 1024
    assert path.read_bytes()[8:9] == b"{"  # safetensors: 8-byte header length, then JSON


def test_shipped_model_samples_images_deterministically():
    policy = load_toy()
    prompts = ["a red circle", "two squares", "a triangle above a circle"]
    images = generate(policy, prompts, [1, 2, 3], steps=4, guidance=3.0)
    assert images.shape == (3, 3, 32, 32)
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0.05
    again = generate(policy, prompts[:1], [1], steps=4, guidance=3.0, batch_size=1)
    torch.testing.assert_close(again[0], images[0], atol=1e-4, rtol=0)  # image i depends on seed i only


def test_initial_noise_depends_only_on_each_seed():
    a = seeded_noise([7, 8], (3, 4, 4))
    b = seeded_noise([8], (3, 4, 4))
    assert torch.equal(a[1], b[0]) and not torch.equal(a[0], a[1])
