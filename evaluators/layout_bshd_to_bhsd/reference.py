def run(x):
    """Reference: torch eager permute + contiguous (also the baseline T_b)."""
    return x.permute(0, 2, 1, 3).contiguous()
