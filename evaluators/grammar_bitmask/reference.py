import torch


def run(logits, bitmask, indices):
    """Reference: unpack the bits of the selected rows and write -inf where a bit is 0."""
    vocab = logits.shape[1]
    rows = indices.long()
    shifts = torch.arange(32, device=bitmask.device, dtype=torch.int32)
    bits = (bitmask[rows].unsqueeze(-1) >> shifts) & 1  # [n, words, 32]
    allowed = bits.reshape(rows.numel(), -1)[:, :vocab].bool()
    logits[rows] = logits[rows].masked_fill(~allowed, float("-inf"))


def make_inputs(axes, dtypes, gen, device):
    """Realistic masks: most words all-ones (grammar allows many tokens) or all-zeros, the rest
    random bits; indices are all rows or a random subset."""
    b, v, words, n = axes["batch"], axes["vocab"], axes["words"], axes["num_rows"]
    logits = torch.randn((b, v), generator=gen, device=device, dtype=torch.float32).to(dtypes["logits"])
    rnd = torch.randint(-2**31, 2**31 - 1, (b, words), generator=gen, device=device, dtype=torch.int64)
    kind = torch.randint(0, 4, (b, words), generator=gen, device=device)
    bitmask = torch.where(kind == 0, -1, torch.where(kind == 1, 0, rnd)).to(torch.int32)
    if n == b:
        indices = torch.arange(b, device=device, dtype=torch.int32)
    else:
        indices = torch.randperm(b, generator=gen, device=device)[:n].to(torch.int32).sort().values
    return {"logits": logits, "bitmask": bitmask, "indices": indices}
