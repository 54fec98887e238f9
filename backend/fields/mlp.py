"""The small MLPs over hash features (the NeRF's field, a hybrid avatar's field and its
deformation network), initialised from a seeded generator so that a field's seed fixes it."""

from __future__ import annotations

import math

import torch
from torch import nn


def uniform_linear(width_in: int, width_out: int, gen: torch.Generator) -> nn.Linear:
    """A linear layer with weights and biases uniform in +-1/sqrt(width_in), drawn from `gen`."""
    lin = nn.Linear(width_in, width_out)
    bound = 1.0 / math.sqrt(width_in)
    with torch.no_grad():
        lin.weight.uniform_(-bound, bound, generator=gen)
        lin.bias.uniform_(-bound, bound, generator=gen)
    return lin


def relu_mlp(width_in: int, hidden: int, layers: int, out: int, gen: torch.Generator) -> nn.Sequential:
    """`layers` linear layers (the last to `out` values) with ReLU between them."""
    mods: list[nn.Module] = []
    width = width_in
    for i in range(layers):
        mods.append(uniform_linear(width, out if i == layers - 1 else hidden, gen))
        if i < layers - 1:
            mods.append(nn.ReLU())
        width = hidden
    return nn.Sequential(*mods)
