import torch
import torch.nn as nn


class Model(nn.Module):
    """
    nn.Linear then a training-mode BatchNorm1d (it updates its running statistics, buffers); returns
    the normalized activations and their row sums (two outputs). avo's fixture.
    """
    def __init__(self, in_features, out_features, momentum=0.1):
        super(Model, self).__init__()
        self.fc = nn.Linear(in_features, out_features)
        self.bn = nn.BatchNorm1d(out_features, momentum=momentum)

    def forward(self, x):
        y = self.bn(self.fc(x))
        return y, y.sum(dim=1)


batch_size = 12
in_features = 20
out_features = 6


def get_inputs():
    return [torch.randn(batch_size, in_features)]


def get_init_inputs():
    return [in_features, out_features]
