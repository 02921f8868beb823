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


@pytest.mark.parametrize("forge", ["host-mode", "short", "types", "size"])
def test_forged_cuda_ipc_header_is_refused(forge):
    """Checked before any CUDA call, so this runs without a GPU."""
    a, b = Pipe()
    ok = (channel.IPC_MARK, "torch.float32", (1 << 20,), 0, 0, b"h" * 64, 4 << 20, 0, b"r", 0, None, True)
    header = {"host-mode": ok, "short": ok[:5], "types": ok[:5] + ("not bytes",) + ok[6:],
              "size": ok[:6] + (1 << 20,) + ok[7:]}[forge]
    channel.send(b, ("outputs", "w", 1, {"y": header}))
    with pytest.raises(channel.ChannelError):
        channel.recv(a, None, ipc=forge != "host-mode")


def _share_from_child(conn):
    torch.manual_seed(7)
    t = torch.randn(1 << 20, 3, device="cuda")
    channel.send(conn, ("outputs", "w", 1, {"y": t, "small": t[:4, 0].clone()}), None, ipc=True)
    del t  # the runner's reference count keeps the block until it lets go
    conn.recv()  # stay alive until the parent has its copy


@pytest.mark.gpu
def test_cuda_tensors_cross_by_ipc_as_private_copies():
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe()
    p = ctx.Process(target=_share_from_child, args=(b,))
    p.start()
    kind, _, _, got = channel.recv(a, None, ipc=True)
    a.send("done")
    p.join(60)
    torch.manual_seed(7)
    want = torch.randn(1 << 20, 3, device="cuda")
    assert kind == "outputs" and got["y"].is_cuda and torch.equal(got["y"], want)
    assert got["small"].device.type == "cpu" and torch.equal(got["small"], want[:4, 0].cpu())  # small: inline host copy
    assert p.exitcode == 0
