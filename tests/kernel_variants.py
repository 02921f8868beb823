"""Test helpers: a kernel or reference source run into a namespace; copies of a seed kernel with one
edit or another CONFIG line, written to tmp_path."""
import re
from pathlib import Path


def namespace(code: str, filename: str = "module") -> dict:
    """The globals after running `code`; give a kernel its real path: @triton.jit reads the source."""
    ns: dict = {}
    exec(compile(code, filename, "exec"), ns)
    return ns


def variant(seed: Path, tmp_path: Path, name: str, old: str, new: str) -> Path:
    """The seed with the one occurrence of `old` replaced by `new`."""
    src = seed.read_text()
    assert src.count(old) == 1, f"{seed.name} no longer contains {old!r} exactly once: update this test"
    p = tmp_path / f"{name}.py"
    p.write_text(src.replace(old, new))
    return p


def with_config(seed: Path, tmp_path: Path, name: str, cfg: dict) -> Path:
    """The seed with its one-line `CONFIG = dict(...)` replaced by `cfg`."""
    line = "CONFIG = dict(" + ", ".join(f"{k}={v!r}" for k, v in cfg.items()) + ")"
    new, n = re.subn(r"^CONFIG = dict\(.*\)$", line, seed.read_text(), count=1, flags=re.M)
    assert n == 1, f"{seed.name} has no one-line CONFIG = dict(...)"
    p = tmp_path / f"{name}.py"
    p.write_text(new)
    return p
