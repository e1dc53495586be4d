import numpy as np
import pytest
import torch
from torch import nn

from zoomorph.evaluation.saliency import activations, conv_layers, grad_cam


class BrightnessNet(nn.Module):
    """Class 1 = "there is something bright", class 0 = its opposite; fixed weights, no training."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
            nn.Conv2d(4, 2, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
        with torch.no_grad():
            for conv in (self.backbone[0], self.backbone[2]):
                conv.weight.fill_(1.0 / conv.weight[0].numel())  # local mean brightness
                conv.bias.fill_(-0.3)  # only clearly bright pixels survive the ReLU
            self.head[2].weight.copy_(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
            self.head[2].bias.zero_()
        self.eval()

    def forward(self, x):
        return self.head(self.backbone(x))


def galaxy_with_square(corner: str) -> torch.Tensor:
    image = 0.1 + 0.05 * torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(0))
    rows = slice(3, 12) if corner[0] == "top" else slice(28, 37)
    cols = slice(3, 12) if corner[1] == "left" else slice(28, 37)
    image[:, rows, cols] = 1.0
    return image


@pytest.mark.parametrize("corner", [("top", "left"), ("top", "right"), ("bottom", "left"), ("bottom", "right")])
def test_grad_cam_peaks_on_the_planted_square(corner):
    image = galaxy_with_square(corner)
    cam = grad_cam(BrightnessNet(), image, target_class=1)
    assert cam.shape == (40, 40)
    assert cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    row, col = np.unravel_index(cam.argmax(), cam.shape)
    assert (row < 20) == (corner[0] == "top")
    assert (col < 20) == (corner[1] == "left")


def test_grad_cam_defaults_to_the_top_class_and_explains_the_other_class_by_the_background():
    model, image = BrightnessNet(), galaxy_with_square(("top", "left"))
    assert np.array_equal(grad_cam(model, image), grad_cam(model, image, target_class=1))
    dark = grad_cam(model, image, target_class=0)  # "nothing bright": the dim sky argues for it
    assert dark[3:12, 3:12].mean() < 0.5 * dark[20:, 20:].mean()


def test_grad_cam_works_under_no_grad_with_frozen_weights_and_a_named_layer():
    model, image = BrightnessNet(), galaxy_with_square(("bottom", "right"))
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        cam = grad_cam(model, image, target_class=1, layer="0")  # the first conv, full resolution
    row, col = np.unravel_index(cam.argmax(), cam.shape)
    assert row >= 20 and col >= 20
    with pytest.raises(ValueError, match="no layer"):
        grad_cam(model, image, layer="nope")


def test_activations_of_the_first_conv_layers():
    model, image = BrightnessNet(), galaxy_with_square(("top", "right"))
    acts = activations(model, image, k=4)
    assert [name for name, _ in acts] == [name for name, _ in conv_layers(model)] == ["0", "2"]
    assert acts[0][1].shape == (4, 40, 40) and acts[1][1].shape == (2, 20, 20)
    first = acts[0][1][0]
    assert first[7, 32] > first[30, 7]  # the conv responds on the square, not the background
    assert len(activations(model, image, k=1)) == 1
