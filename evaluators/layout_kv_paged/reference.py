import torch


def run(k, v, block_table, k_cache, v_cache):
    """Reference: vLLM-style reshape-and-cache for whole sequences. Token s of sequence b goes to
    physical block block_table[b, s // block_size], slot s % block_size; other blocks keep their
    contents. In place on k_cache and v_cache."""
    batch, seq = k.shape[0], k.shape[1]
    block_size = k_cache.shape[1]
    pos = torch.arange(seq, device=k.device)
    blocks = block_table.long()[:, pos // block_size]  # [batch, seq]
    slots = (pos % block_size).expand(batch, seq)
    k_cache[blocks, slots] = k
    v_cache[blocks, slots] = v


def make_inputs(axes, dtypes, gen, device):
    """Distinct physical blocks per sequence in random order (a fragmented pool, some left unused);
    the caches start with other data, which must survive outside the table's blocks."""
    b, s, h, d = axes["batch"], axes["seq"], axes["kv_heads"], axes["head_dim"]
    bs, bps, nb = axes["block_size"], axes["blocks_per_seq"], axes["num_blocks"]
    randn = lambda shape, name: torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(dtypes[name])
    table = torch.randperm(nb, generator=gen, device=device)[:b * bps].view(b, bps).to(torch.int32)
    return {"k": randn((b, s, h, d), "k"), "v": randn((b, s, h, d), "v"), "block_table": table,
            "k_cache": randn((nb, bs, h, d), "k_cache"), "v_cache": randn((nb, bs, h, d), "v_cache")}
