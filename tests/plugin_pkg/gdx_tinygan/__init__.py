"""A complete third-party generator adapter in ~20 lines (the docs show this file)."""

import torch
from torch import nn

import gdx


class TinyGAN(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.fc = nn.Linear(4, width * 16)
        self.conv = nn.Conv2d(width, 3, 3, padding=1)
        self.width = width

    def forward(self, z):
        h = torch.relu(self.fc(z)).view(-1, self.width, 4, 4)
        return torch.tanh(self.conv(nn.functional.interpolate(h, scale_factor=4)))


def build_tinygan(width: int = 8, seed: int = 0) -> gdx.Generator:
    """A tiny random GAN from a third-party package."""
    torch.manual_seed(seed)
    return gdx.wrap_generator(TinyGAN(width), latent_shape=(4,), name="tinygan", default_layer="conv")


@gdx.hookimpl
def register_generators(register):
    register("tinygan", build_tinygan)
