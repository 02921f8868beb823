import torch
import torch.nn as nn


class Model(nn.Module):
    """
    Cross entropy of predictions against integer class targets, times a Python float (avo's fixture).
    """
    def __init__(self):
        super(Model, self).__init__()

    def forward(self, predictions, targets, scale):
        return torch.nn.functional.cross_entropy(predictions, targets) * scale


batch_size = 32
num_classes = 10
input_shape = (num_classes,)


def get_inputs():
    return [torch.rand(batch_size, *input_shape), torch.randint(0, num_classes, (batch_size,)), 0.5]


def get_init_inputs():
    return []
