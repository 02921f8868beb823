import torch


def _value(code):
    """E2M1: sign bit 3, exponent bits 2-1 (bias 1), mantissa bit 0; exponent 0 is subnormal."""
    mag, e, m = code & 7, (code & 7) >> 1, (code & 1).float()
    v = torch.where(e == 0, m * 0.5, (1 + m * 0.5) * torch.exp2(e.float() - 1))
    return torch.where(code >= 8, -v, v)


def run(x, y):
    b = x.view(torch.uint8)
    y.copy_(torch.stack((_value(b & 15), _value(b >> 4)), -1).flatten(-2))
