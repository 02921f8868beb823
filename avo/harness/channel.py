"""Messages between runner and worker. torch.save framing, read back with weights_only=True: the
runner never unpickles arbitrary objects from the process that runs candidate code.

Bulk tensors (outputs of a B512 x 152k logits row set are 311 MB, sent ~27 times per workload)
do not go through the pickle and the socket: the sender writes their raw bytes to a file in a
scratch folder the runner created (tmpfs where it has room) and sends (marker, name, dtype,
shape); the receiver checks name, dtype and size against its own rules, reads and deletes the
file. A 311 MB message between two processes on the 2-core dev machine: ~2 s (send + receive)
through pickle + socket, ~0.4 s this way; on an H100 host `avo eval` of the grammar_bitmask seed
went from 170 s to 78 s (docs/architecture.md, Evaluation).

On a GPU the outputs need not leave it at all (`eval.output_transfer: device`, the default): the
sender shares a large CUDA tensor through CUDA IPC (torch's own handles and reference counts, as
torch.multiprocessing does) and sends plain values (marker, dtype, shape, offset, device, handle
bytes, ...); the runner checks them, opens the handle, copies the tensor on the GPU and drops the
mapping, so the comparison runs on device memory the sender can no longer touch."""
from __future__ import annotations

import io
import math
import os
import re
import secrets
import shutil
import tempfile
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Optional

import torch

BULK_MIN_BYTES = 1 << 20
BULK_MARK = "__avo_bulk__"
IPC_MARK = "__avo_cuda_ipc__"
_BULK_NAME = re.compile(r"^[0-9a-f]{16}\.bin$")
_BULK_DTYPES = {str(t): t for t in (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64,
                                    torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
                                    torch.float8_e4m3fn, torch.float8_e5m2)}
for _n in ("float4_e2m1fn_x2", "float8_e8m0fnu", "uint16", "uint32", "uint64"):  # where this torch has them
    if hasattr(torch, _n):
        _BULK_DTYPES[str(getattr(torch, _n))] = getattr(torch, _n)


class ChannelError(Exception):
    pass


class IpcUnavailable(ChannelError):
    """A well-formed CUDA IPC handle this process could not open (a container without IPC rights)."""


def bulk_dir(role: str) -> Path:
    """A private scratch folder for one worker: /dev/shm when it has 8 GiB free (containers often
    give it 64 MB), else the temp dir. Named by this (the runner's) pid."""
    root = None
    try:
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize >= 8 << 30:
            root = "/dev/shm"
    except OSError:
        pass
    sweep()
    return Path(tempfile.mkdtemp(prefix=f"avo-bulk-{os.getpid()}-{role}-", dir=root))


def worker_tmp_dir(role: str) -> Path:
    """A worker's own scratch folder (the candidate's sources): named by the worker's pid, so the
    runner can remove it when it kills the worker and the sweep when that process is gone."""
    return Path(tempfile.mkdtemp(prefix=f"avo-{role}-{os.getpid()}-"))


def worker_log_path(role: str) -> Path:
    """A worker's stdout/stderr log, named by the runner's pid (it is the runner's file)."""
    return Path(tempfile.gettempdir()) / f"avo-worker-{role}-{os.getpid()}-{secrets.token_hex(3)}.log"


def remove_worker_tmp(pid: int) -> None:
    """The scratch folder of a worker this process has killed (it could not remove it itself)."""
    for d in Path(tempfile.gettempdir()).glob(f"avo-*-{pid}-*"):
        m = _OWNED.match(d.name)
        if m and m.group(2) == str(pid):
            shutil.rmtree(d, ignore_errors=True)


# What the harness leaves in the temp dir (or /dev/shm), with the pid that owns it: a runner's bulk
# folder (group 1), a worker's own folder (group 2), a runner's worker log (group 3). mkdtemp's
# random suffix is [a-z0-9_]; a name without a pid (made before pids were in names) is left alone.
_OWNED = re.compile(r"^avo-(?:bulk-(\d+)-\w+-\w+|(?:candidate|reference)-(\d+)-\w+|worker-\w+-(\d+)-[0-9a-f]+\.log)$")


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's zombie lingers where pid 1 does not reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's process
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:][:1] not in ("Z", "X")
    except (OSError, ValueError):
        return True


def sweep(*roots: Path) -> list[Path]:
    """Remove what runners and workers that died (kill -9, a kill at a time limit) left behind:
    bulk folders (on tmpfs they hold RAM), workers' own folders and worker logs, each only once the
    pid in its name is gone. Default roots: the temp dir and /dev/shm. Returns what it removed."""
    removed = []
    for root in roots or {Path(tempfile.gettempdir()), Path("/dev/shm")}:
        try:
            entries = list(root.glob("avo-*"))
        except OSError:
            continue
        for p in entries:
            m = _OWNED.match(p.name)
            if not m or _alive(int(m.group(1) or m.group(2) or m.group(3))):
                continue
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def remove_bulk_dir(d: Optional[Path]) -> None:
    if d is not None:
        shutil.rmtree(d, ignore_errors=True)


_KEEP = object()


def _map(obj: Any, leaf) -> Any:
    """`obj` with `leaf(x)` in place of every x for which leaf does not return _KEEP, looking
    through tuples, lists and dicts (the shapes of harness messages)."""
    out = leaf(obj)
    if out is not _KEEP:
        return out
    if isinstance(obj, tuple):
        return tuple(_map(x, leaf) for x in obj)
    if isinstance(obj, list):
        return [_map(x, leaf) for x in obj]
    if isinstance(obj, dict):
        return {k: _map(v, leaf) for k, v in obj.items()}
    return obj


def _spill(obj: Any, d: Optional[Path], ipc: bool) -> Any:
    if not isinstance(obj, torch.Tensor):
        return _KEEP
    big = str(obj.dtype) in _BULK_DTYPES and obj.numel() * obj.element_size() >= BULK_MIN_BYTES
    if obj.device.type == "cuda":
        if ipc and big:
            t = obj.detach().contiguous()
            dev, handle, size_b, off_b, rc_handle, rc_off, ev_handle, ev_sync = t.untyped_storage()._share_cuda_()
            return (IPC_MARK, str(t.dtype), tuple(t.shape), t.storage_offset(), dev, handle, size_b, off_b,
                    rc_handle, rc_off, ev_handle, ev_sync)
        obj = obj.detach().cpu()
    if d is not None and big:
        name = secrets.token_hex(8) + ".bin"
        obj.detach().contiguous().view(-1).view(torch.uint8).numpy().tofile(d / name)
        return (BULK_MARK, name, str(obj.dtype), tuple(obj.shape))
    return obj if obj.device.type == "cpu" else _KEEP


def _open_ipc(obj: tuple, ipc: bool) -> torch.Tensor:
    """A private GPU copy of a tensor another process shared by CUDA IPC; every field checked first."""
    if not ipc:
        raise ChannelError("a CUDA IPC tensor where host transfer was asked for")
    try:
        _, dtype, shape, offset, dev, handle, size_b, off_b, rc_handle, rc_off, ev_handle, ev_sync = obj
    except ValueError:
        raise ChannelError("malformed CUDA IPC header") from None
    ints = (offset, dev, size_b, off_b, rc_off)
    if not (dtype in _BULK_DTYPES and isinstance(shape, tuple) and all(isinstance(x, int) and x >= 0 for x in shape)
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in ints)
            and isinstance(handle, bytes) and isinstance(rc_handle, bytes) and isinstance(ev_sync, bool)
            and (ev_handle is None or isinstance(ev_handle, bytes))):
        raise ChannelError("malformed CUDA IPC header")
    dt = _BULK_DTYPES[dtype]
    need = (offset + math.prod(shape)) * dt.itemsize
    if need > size_b:
        raise ChannelError(f"CUDA IPC tensor: {need} bytes from a {size_b}-byte allocation")
    if dev != torch.cuda.current_device():
        raise ChannelError(f"CUDA IPC tensor on device {dev}, this process uses {torch.cuda.current_device()}")
    try:
        storage = torch.UntypedStorage._new_shared_cuda(dev, handle, size_b, off_b, rc_handle, rc_off, ev_handle, ev_sync)
    except Exception as e:
        raise IpcUnavailable(f"cannot open a CUDA IPC handle ({type(e).__name__}: {e}); "
                           "set eval.output_transfer: host where CUDA IPC is not allowed") from None
    view = torch.empty(0, dtype=dt, device=f"cuda:{dev}").set_(storage, offset, shape)
    own = view.clone()
    del view, storage  # the sender's block is released (its reference count drops) with the mapping
    return own


def _fill(obj: Any, d: Optional[Path], ipc: bool) -> Any:
    mark = obj[0] if isinstance(obj, tuple) and obj and isinstance(obj[0], str) else None
    if mark == IPC_MARK:
        return _open_ipc(obj, ipc)
    if not (mark == BULK_MARK and len(obj) == 4):
        return _KEEP
    if d is None:
        raise ChannelError("a bulk tensor header on a channel without a scratch folder")
    _, name, dtype, shape = obj
    if not (isinstance(name, str) and _BULK_NAME.match(name) and dtype in _BULK_DTYPES
            and isinstance(shape, tuple) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise ChannelError("malformed bulk tensor header")
    path = d / name
    dt = _BULK_DTYPES[dtype]
    nbytes = dt.itemsize * math.prod(shape)
    try:
        if path.stat().st_size != nbytes:
            raise ChannelError(f"bulk tensor {name}: {path.stat().st_size} bytes, header says {nbytes}")
        raw = torch.from_file(str(path), shared=False, size=nbytes, dtype=torch.uint8)
    finally:
        path.unlink(missing_ok=True)
    return raw.view(dt).reshape(shape)


def send(conn: Connection, obj: Any, bulk: Optional[Path] = None, ipc: bool = False) -> None:
    """CUDA tensors go by IPC handle (`ipc`, large ones) or as host copies; large host tensors
    through `bulk` when given."""
    buf = io.BytesIO()
    torch.save(_map(obj, lambda x: _spill(x, bulk, ipc)), buf)
    conn.send_bytes(buf.getvalue())


def recv(conn: Connection, bulk: Optional[Path] = None, ipc: bool = False) -> Any:
    obj = torch.load(io.BytesIO(conn.recv_bytes()), weights_only=True)
    return _map(obj, lambda x: _fill(x, bulk, ipc))
