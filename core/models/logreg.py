"""Multinomial logistic regression on flattened pixels."""

import torch
from torch import nn


class LogisticRegression(nn.Module):
    """A single linear layer on the flattened image; ``num_features`` is C*H*W."""

    def __init__(self, num_classes: int = 10, num_features: int = 64):
        super().__init__()
        self.linear = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))
