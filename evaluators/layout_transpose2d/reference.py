def run(x):
    """Reference: torch eager permute + contiguous (also the baseline T_b)."""
    return x.permute(1, 0).contiguous()
