"""The AST guard on its own: hack vectors it must refuse (incl. aliased and value-passed forms) and
ordinary kernel code it must let through (a false positive blocks an honest candidate)."""
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
    ("import torch\ngetattr(torch.cuda, 'Event')", "timer"),
    ("x = open", "dynamic-code"),
    ("f = eval", "dynamic-code"),
    ("import torch\nX = type('X', (torch.Tensor,), {})", "dynamic-code"),
    ("import torch\nd = torch.__dict__", "introspection"),
    ("def f():\n    try:\n        1 / 0\n    except Exception as e:\n        return e.__traceback__", "introspection"),
    ("class A:\n    def __torch_function__(self, *a):\n        pass", "tensor-subclass"),
    ("class A:\n    def __del__(self):\n        pass", "introspection"),
    ("import torch\nT = torch.Tensor\nT.clone = None", "monkey-patch"),
    ("import torch\n[torch][0].equal = None", "monkey-patch"),
    ("def run(out):\n    out.data = out", "monkey-patch"),
    ("import torch\nt = torch.empty(1)\np = t.data_ptr()", "pointer-cache"),
    ("from . import sibling\n", "import"),
    ("import avo.harness.timing\n", "import"),
    ("from triton.tools import disasm\n", "import"),  # triton.tools stays closed, but for the TMA descriptor
    ("import triton.tools.tensor_descriptorx\n", "import"),
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
