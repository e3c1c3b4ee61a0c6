"""RotNet: each block of the rotated batch is the batch turned by its label, and on a fixed batch the loss falls
and the rotation accuracy rises, so labels and classifier are wired to the rotated inputs."""

from __future__ import annotations

import pytest
import torch
from image_ssl_recipes import image_objective

from mmssl.objectives.rotnet import rotate_batch


def test_each_block_is_the_batch_turned_by_its_label():
    images = torch.rand(5, 3, 8, 8)
    rotated, labels = rotate_batch(images)
    assert rotated.shape == (20, 3, 8, 8) and labels.tolist() == [k for k in range(4) for _ in range(5)]
    for i in range(20):
        k, j = int(labels[i]), i % 5
        assert torch.equal(torch.rot90(rotated[i], -k, dims=(1, 2)), images[j])  # turning back gives the original
    assert torch.equal(rotated[5 + 2, :, 0, :], images[2, :, :, -1])  # 90 degrees counter-clockwise: top row = old right column
    assert not torch.equal(rotated[5], rotated[0])
    with pytest.raises(ValueError, match="square"):
        rotate_batch(torch.rand(2, 3, 8, 6))


@pytest.mark.slow
def test_rotnet_loss_and_accuracy_come_from_the_rotated_batch(tmp_path):
    """On a fixed batch of asymmetric images (noise), RotNet's loss falls and its rotation accuracy passes 90%:
    its labels and its classifier are wired to the rotated inputs. (The world's circles and squares look the
    same turned, so the world recipe's own learning is measured in the README, not here.)"""
    torch.manual_seed(0)
    obj = image_objective(tmp_path, "rotnet")
    module = obj.module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    images = torch.randn(8, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    history = []
    for _ in range(40):
        out = obj.loss(module, images, None)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        history.append((float(out["loss"].detach()), float(out["rotation_accuracy"])))
    assert history[-1][0] < history[0][0] - 0.5 and history[-1][1] >= 0.9, history[::10]
    assert out["embedding"].shape == (8, 16)  # the unrotated images' features feed the collapse monitor
