import torch
import torch.nn as nn


class Model(nn.Module):
    """
    A Gemm (nn.Linear), a multiplication by a constant, then ReLU (avo's fixture, KernelBench's layout).
    """
    def __init__(self, in_features, out_features, multiplier):
        super(Model, self).__init__()
        self.gemm = nn.Linear(in_features, out_features)
        self.multiplier = multiplier

    def forward(self, x):
        """Forward pass of the model."""
        x = self.gemm(x)
        x = x * self.multiplier
        return torch.relu(x)


batch_size = 8
in_features = 32
out_features = 24
multiplier = 2.0


def get_inputs():
    return [torch.rand(batch_size, in_features)]


def get_init_inputs():
    return [in_features, out_features, multiplier]
