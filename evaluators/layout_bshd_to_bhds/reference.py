def run(x):
    """Reference: torch eager permute + contiguous (also the baseline T_b)."""
    return x.permute(0, 2, 3, 1).contiguous()
