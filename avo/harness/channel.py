"""Messages between runner and worker. torch.save framing, read back with weights_only=True: the
runner never unpickles arbitrary objects from the process that runs candidate code."""
from __future__ import annotations

import io
from multiprocessing.connection import Connection
from typing import Any

import torch


def send(conn: Connection, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    conn.send_bytes(buf.getvalue())


def recv(conn: Connection) -> Any:
    return torch.load(io.BytesIO(conn.recv_bytes()), weights_only=True)
