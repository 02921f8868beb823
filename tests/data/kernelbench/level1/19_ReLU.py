import torch
import torch.nn as nn


class Model(nn.Module):
    """
    Simple model that performs a ReLU activation (avo's fixture, written in KernelBench's layout).
    """
    def __init__(self):
        super(Model, self).__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Forward pass: ReLU of x, same shape.
        """
        return torch.relu(x)


batch_size = 16
dim = 1024


def get_inputs():
    x = torch.rand(batch_size, dim) - 0.5
    return [x]


def get_init_inputs():
    return []  # No special initialization inputs needed
