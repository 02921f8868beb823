"""The runner/worker channel: bulk tensors travel through the scratch folder, come back bit-exact,
leave no file behind, and a forged header is refused."""
from __future__ import annotations

from multiprocessing import Pipe

import pytest
import torch

from avo.harness import channel


@pytest.fixture()
def bulk():
    d = channel.bulk_dir("test")
    yield d
    channel.remove_bulk_dir(d)


def test_bulk_tensors_round_trip_bit_exact(bulk):
    a, b = Pipe()
    big = {"logits": torch.randn(64, 8192).to(torch.bfloat16), "mask": torch.rand(1 << 21) < 0.5,
           "small": torch.arange(5)}
    channel.send(b, ("outputs", "w", (3, 4), big), bulk)
    assert len(list(bulk.iterdir())) == 2  # the two tensors above 1 MiB, not the small one
    kind, uuid, key, got = channel.recv(a, bulk)
    assert (kind, uuid, key) == ("outputs", "w", (3, 4))
    for k, v in big.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v)
    assert list(bulk.iterdir()) == []


@pytest.mark.parametrize("forge", ["../../etc/passwd", "size", "dtype"])
def test_forged_bulk_header_is_refused(bulk, forge):
    a, b = Pipe()
    t = torch.zeros(1 << 20, dtype=torch.float32)
    name = "0123456789abcdef.bin"
    t.numpy().tofile(bulk / name)
    header = {"../../etc/passwd": (channel.BULK_MARK, "../../etc/passwd", "torch.float32", (1 << 20,)),
              "size": (channel.BULK_MARK, name, "torch.float32", (1 << 21,)),
              "dtype": (channel.BULK_MARK, name, "torch.complex64", (1 << 20,))}[forge]
    channel.send(b, ("outputs", "w", 1, {"y": header}))
    with pytest.raises(channel.ChannelError):
        channel.recv(a, bulk)


def test_scratch_folders_of_dead_runners_are_swept():
    import subprocess, sys
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    live = channel.bulk_dir("test")
    stale = live.parent / f"avo-bulk-{pid}-candidate-abc123"
    stale.mkdir()
    (stale / "0123456789abcdef.bin").write_bytes(b"x" * 10)
    again = channel.bulk_dir("test")
    assert not stale.exists() and live.exists() and again.exists()
    channel.remove_bulk_dir(live)
    channel.remove_bulk_dir(again)
