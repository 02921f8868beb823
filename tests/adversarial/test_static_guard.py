"""The AST guard on its own: hack vectors it must refuse (incl. aliased and value-passed forms),
rules the runtime layer covers (warnings: the candidate runs, the report says what the scan saw),
and ordinary kernel code it must let through (a false positive blocks an honest candidate)."""
from __future__ import annotations

import textwrap

import pytest

from avo.harness.guard import StaticFinding, scan_solution, scan_source

REFUSED = [  # (source, check)
    ("import torch\nS = torch.cuda.Stream", "side-stream"),
    ("import torch\nc = torch.cuda\ns = c.current_stream()", "side-stream"),
    ("from torch import load\n", "import"),
    ("import torch\nL = torch\nL.load('x')", "sandbox"),
    ("import torch.utils.cpp_extension as ce\n", "import"),
    ("import torch\ntorch.backends.cuda.enable_flash_sdp(False)", "sandbox"),
    ("import torch\nm = torch.sys.modules", "sandbox"),
    ("import dataclasses\ninspect = dataclasses.inspect", "sandbox"),
    ("import operator\nf = operator.attrgetter('x')", "sandbox"),
    ("import typing\ntyping.get_type_hints(run)", "sandbox"),
    ("import functools\nimport torch\nfunctools.reduce(getattr, ['cuda'], torch)", "dynamic-code"),
    ("import torch\ng = getattr\ng(torch, 'cuda')", "dynamic-code"),
    ("import torch\ngetattr(torch.cuda, 'Str' + 'eam')", "dynamic-code"),
    ("import torch\ngetattr(torch.cuda, 'Stre' 'am')", "side-stream"),
    ("f = eval", "dynamic-code"),
    ("import torch\nX = type('X', (torch.Tensor,), {})", "dynamic-code"),
    ("import torch\nd = torch.__dict__", "introspection"),
    ("def f():\n    try:\n        1 / 0\n    except Exception as e:\n        return e.__traceback__", "introspection"),
    ("class A:\n    def __torch_function__(self, *a):\n        pass", "tensor-subclass"),
    ("class A:\n    def __del__(self):\n        pass", "introspection"),
    ("import torch\nT = torch.Tensor\nT.clone = None", "monkey-patch"),
    ("import torch\n[torch][0].equal = None", "monkey-patch"),
    ("def run(out):\n    out.data = out", "monkey-patch"),
    ("import torch\np = torch.empty(1)._cdata", "internals"),
    # no runtime counterpart: these stay errors, whatever the sandbox
    ("import ctypes\n", "import"),
    ("import sys\n", "import"),
    ("import subprocess\n", "import"),
    ("import socket\n", "import"),
    ("import os\nos.system('true')", "sandbox"),
    ("import os\nos.write(3, b'x')", "sandbox"),  # the worker's channel to the runner is a descriptor
    ("import os\nfd = os.open('/tmp/x', 0)", "sandbox"),
    ("import os as o\no.fork()", "sandbox"),
    ("from os import dup2\n", "sandbox"),
    ("import os\ngetattr(os, 'read')(3, 10)", "sandbox"),
    ("import os\ndef f(m):\n    return m\nf(os)", "sandbox"),  # os passed on, its calls unscanned
    ("import time\ntime.perf_counter = lambda: 0.0", "monkey-patch"),
    ("import torch\nclass T(torch.Tensor):\n    __torch_function__ = classmethod(lambda *a, **k: None)", "tensor-subclass"),
    ("from . import sibling\n", "import"),
    ("import avo.harness.timing\n", "import"),
    ("from triton.tools import disasm\n", "import"),  # triton.tools stays closed, but for the TMA descriptor
    ("import triton.tools.tensor_descriptorx\n", "import"),
    # attribute paths and code written in strings (issue 23 part 2): string.Formatter's get_field
    # follows "0.__globals__[sys]"; typing evaluates ForwardRefs and string annotations
    ("import string\nsys_ = string.Formatter().get_field('0.__globals__[sys]', (print,), {})[0]", "sandbox"),
    ("import typing\nt = typing.get_args(typing.Optional['x'])[0]._evaluate({}, {}, frozenset())", "sandbox"),
    ("import functools\n@functools.singledispatch\ndef f(x):\n    pass\n\n@f.register\n"
     "def _(x: \"__import__('gc').get_objects()\"):\n    pass", "dynamic-code"),
]

ALLOWED = [
    """
    import math
    import torch
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
    from triton.tools.tensor_descriptor import TensorDescriptor

    CONFIG = dict(BLOCK=128)


    class Workspace:
        def __init__(self, n):
            super().__init__()
            self.buf = torch.empty(n)
            self.n = n


    def plan(n: "int", ws: "Workspace") -> "Workspace":  # annotations as strings: forward references
        return ws


    def run(input, weight, out):  # 'input' as a parameter is not the builtin
        compile = CONFIG["BLOCK"]  # nor is a local called compile
        props = torch.cuda.get_device_properties(0)
        name = run.__name__
        out.copy_(input * weight)
        return getattr(props, "multi_processor_count", 1), compile, name, math.sqrt(2)
    """,
]


@pytest.mark.parametrize("src,check", REFUSED, ids=[f"{i}:{c}" for i, (_, c) in enumerate(REFUSED)])
def test_refused(src, check):
    with pytest.raises(StaticFinding) as e:
        scan_source(src, "k.py", [])
    assert e.value.check == check, str(e.value)


# The runtime layer covers these: a warning each, with the check and why it is allowed.
# (source, check, fragment of the reason)
WARNED = [
    ("import time\nt0 = time.perf_counter()", "import", "timers are checked by identity"),
    ("import threading\nt = threading.Thread(target=print)", "thread", "thread started during a call"),
    ("import os\nroot = os.path.dirname(os.environ.get('HOME', '/'))", "import", "environment"),
    ("src = open('table.txt').read()", "open", "refuses file descriptors"),
    ("x = open", "open", "refuses file descriptors"),
    ("import torch\ngetattr(torch.cuda, 'Event')", "timer", "by identity"),
    ("import torch\ne = torch.cuda.Event(enable_timing=True)\nms = e.elapsed_time(e)", "timer", "by identity"),
    ("import torch\nt = torch.empty(1)\np = t.data_ptr()", "pointer-cache", "refreshed buffers"),
    ("import torch\nclass T(torch.Tensor):\n    pass", "tensor-subclass", "class and memory"),
]


@pytest.mark.parametrize("src,check,why", WARNED, ids=[f"{i}:{c}" for i, (_, c, _) in enumerate(WARNED)])
def test_runtime_covered_rules_warn(src, check, why):
    warnings: list = []
    scan_source(src, "k.py", [], warnings=warnings)
    assert warnings and all(w.warning for w in warnings)
    hit = [w for w in warnings if w.check == check]
    assert hit and why in hit[0].detail and "allowed:" in hit[0].detail, [str(w) for w in warnings]


def test_file_writes_warn_only_where_the_kernel_confines_them():
    """os.makedirs / pathlib / tempfile: a warning where Landlock confines the worker's writes, an
    error (naming the missing kernel feature) where it does not."""
    for src in ("import os\nos.makedirs('cache', exist_ok=True)", "import pathlib\n", "import tempfile\n"):
        warnings: list = []
        scan_source(src, "k.py", [], warnings=warnings, writes_confined=True)
        assert warnings, src
        with pytest.raises(StaticFinding) as e:
            scan_source(src, "k.py", [], writes_confined=False)
        assert "Landlock" in e.value.detail, str(e.value)


def test_errors_say_why_they_have_no_runtime_check():
    for src, fragment in (("import ctypes\n", "native memory access has no runtime check"),
                          ("import os\nos.dup(3)", "no runtime check"),
                          ("import subprocess\n", "child process")):
        with pytest.raises(StaticFinding) as e:
            scan_source(src, "k.py", [])
        assert fragment in e.value.detail, str(e.value)


@pytest.mark.parametrize("src", ALLOWED)
def test_ordinary_kernel_code_passes(src):
    scan_source(textwrap.dedent(src), "k.py", [])


def test_multi_file_solution_may_import_its_own_modules():
    main = "from helpers.blocks import pick\n\ndef run(x, out):\n    pick(x)\n"
    helper = "import triton\n\ndef pick(x):\n    return 128\n"
    assert scan_solution({"main.py": main, "helpers/blocks.py": helper}, []) is None
    f = scan_solution({"main.py": main.replace("helpers.blocks", "helpers.other")}, [])
    assert f is not None and f.check == "import"


def test_forbidden_names_match_identifiers_not_docstrings():
    doc = '"""Faster than scaled_dot_product_attention, which we do not call."""\ndef run(q, o):\n    pass\n'
    assert scan_solution({"k.py": doc}, ["scaled_dot_product"]) is None
    call = "import torch\n\ndef run(q, o):\n    torch.nn.functional.scaled_dot_product_attention(q, q, q)\n"
    assert scan_solution({"k.py": call}, ["scaled_dot_product"]).check == "library-call"
