"""Messages between runner and worker. torch.save framing, read back with weights_only=True: the
runner never unpickles arbitrary objects from the process that runs candidate code.

Bulk tensors (outputs of a B512 x 152k logits row set are 311 MB, sent ~27 times per workload)
do not go through the pickle and the socket: the sender writes their raw bytes to a file in a
scratch folder the runner created (tmpfs where it has room) and sends (marker, name, dtype,
shape); the receiver checks name, dtype and size against its own rules, reads and deletes the
file. A 311 MB message between two processes on the 2-core dev machine: ~2 s (send + receive)
through pickle + socket, ~0.4 s this way; on an H100 host `avo eval` of the grammar_bitmask seed
went from 170 s to 78 s (docs/architecture.md, Evaluation)."""
from __future__ import annotations

import io
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
_BULK_NAME = re.compile(r"^[0-9a-f]{16}\.bin$")
_BULK_DTYPES = {str(t): t for t in (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64,
                                    torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
                                    torch.float8_e4m3fn, torch.float8_e5m2)}


class ChannelError(Exception):
    pass


def bulk_dir(role: str) -> Path:
    """A private scratch folder for one worker: /dev/shm when it has 8 GiB free (containers often
    give it 64 MB), else the temp dir."""
    root = None
    try:
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize >= 8 << 30:
            root = "/dev/shm"
    except OSError:
        pass
    _sweep(Path(root or tempfile.gettempdir()))
    return Path(tempfile.mkdtemp(prefix=f"avo-bulk-{os.getpid()}-{role}-", dir=root))


def _sweep(root: Path) -> None:
    """Remove scratch folders left by runners that died (kill -9): on tmpfs they hold RAM."""
    for d in root.glob("avo-bulk-*-*-*"):
        try:
            pid = int(d.name.split("-")[2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, PermissionError, OSError):
            pass


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


def _spill(obj: Any, d: Path) -> Any:
    if isinstance(obj, torch.Tensor) and obj.device.type == "cpu" and str(obj.dtype) in _BULK_DTYPES \
            and obj.numel() * obj.element_size() >= BULK_MIN_BYTES:
        name = secrets.token_hex(8) + ".bin"
        obj.detach().contiguous().view(-1).view(torch.uint8).numpy().tofile(d / name)
        return (BULK_MARK, name, str(obj.dtype), tuple(obj.shape))
    return _KEEP


def _fill(obj: Any, d: Path) -> Any:
    if not (isinstance(obj, tuple) and len(obj) == 4 and obj[0] == BULK_MARK):
        return _KEEP
    _, name, dtype, shape = obj
    if not (isinstance(name, str) and _BULK_NAME.match(name) and dtype in _BULK_DTYPES
            and isinstance(shape, tuple) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise ChannelError("malformed bulk tensor header")
    path = d / name
    dt = _BULK_DTYPES[dtype]
    nbytes = dt.itemsize
    for s in shape:
        nbytes *= s
    try:
        if path.stat().st_size != nbytes:
            raise ChannelError(f"bulk tensor {name}: {path.stat().st_size} bytes, header says {nbytes}")
        raw = torch.from_file(str(path), shared=False, size=nbytes, dtype=torch.uint8)
    finally:
        path.unlink(missing_ok=True)
    return raw.view(dt).reshape(shape)


def send(conn: Connection, obj: Any, bulk: Optional[Path] = None) -> None:
    buf = io.BytesIO()
    torch.save(_map(obj, lambda x: _spill(x, bulk)) if bulk is not None else obj, buf)
    conn.send_bytes(buf.getvalue())


def recv(conn: Connection, bulk: Optional[Path] = None) -> Any:
    obj = torch.load(io.BytesIO(conn.recv_bytes()), weights_only=True)
    return _map(obj, lambda x: _fill(x, bulk)) if bulk is not None else obj
