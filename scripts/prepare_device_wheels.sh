#!/usr/bin/env bash
# Download the wheels the lent GPU machines lack (Python 3.12, x86_64, no network there) into .whl/.
# On the device: python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site
# `RAY=1` also fills .whl-ray/ with a slimmed ray wheel (~79 MB -> ~40 MiB: no java jars, dashboard web build,
# rllib, llm) plus the ray deps the device image lacks, so .whl/ + .whl-ray/ fit one 64 MiB carry; on the device:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl .whl-ray/*.whl
# `FA4=1` fills .whl-fa4a/ and .whl-fa4b/ for the FlashAttention-4 peer (kernels/peers/attention_fa4.py):
# its CuTe DSL compiler wheel (nvidia-cutlass-dsl-libs-cu13, 92 MB; 63 MiB as tar.xz) is more than one
# carry beside the repo, so it goes as two halves in two calls on one warm machine (it idles out 30 s
# after a call). Call 1 carries .whl-fa4a and copies its half to /tmp/fa4/; call 2 carries .whl-fa4b, then
#   cat /tmp/fa4/cu13.part00 .whl-fa4b/cu13.part01 | tar xJ -C /tmp/fa4site
#   python3 -m pip install -q --no-index --no-deps --target /tmp/fa4site .whl-fa4b/*.whl   # export PYTHONPATH=...:/tmp/fa4site
set -euo pipefail
cd "$(dirname "$0")/.."
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64
      --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64 --platform manylinux_2_35_x86_64)
dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PYV:-3.12}" --implementation cp "${PLAT[@]}" -d "$1" "${@:2}"; }
mkdir -p .whl
# pydantic 2 + GitPython + the LLM SDKs (missing on the device image); xgrammar for the bitmask peer, ninja
# for its CUDA kernel's JIT build (torch.utils.cpp_extension.load_inline needs the ninja binary).
dl .whl pydantic pydantic-core annotated-types typing-inspection gitpython gitdb smmap \
   openai anthropic jiter distro sniffio docstring-parser httpx2 httpcore2 truststore opentelemetry-api \
   xgrammar apache-tvm-ffi ninja
# flashinfer-bench is pure Python; no deps needed for its data models. cupti-python: CUPTI timing
# (eval.timing_method: cupti | auto).
dl .whl flashinfer-bench cupti-python pyelftools  # pyelftools: imported by cupti-python
if [ "${RAY:-0}" = 1 ]; then
  mkdir -p .whl-ray && rm -f .whl-ray/ray-*.whl  # a slimmed one would only fail pip's hash check
  # ray + its deps the device lacks (it has click, filelock, packaging, pyyaml, requests).
  dl .whl-ray ray msgpack protobuf jsonschema jsonschema-specifications referencing rpds-py attrs
  # Rewrite the ray wheel without the dropped trees; RECORD is filtered to match (kept files' hashes stay valid).
  python3 - .whl-ray/ray-*.whl <<'EOF'
import os, sys, zipfile
drop = tuple(f"ray/{d}/" for d in ("jars", "dashboard/client/build", "rllib", "llm"))
for src in sys.argv[1:]:
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(src + ".tmp", "w", zipfile.ZIP_DEFLATED) as zo:
        for i in zi.infolist():
            if i.filename.startswith(drop): continue
            data = zi.read(i)
            if i.filename.endswith(".dist-info/RECORD"):
                data = b"".join(l for l in data.splitlines(True) if not l.decode().startswith(drop))
            zo.writestr(i, data, zipfile.ZIP_DEFLATED, 9)  # keeps external_attr (exec bits of raylet/gcs_server)
    os.replace(src + ".tmp", src)
EOF
  du -sh .whl-ray
fi
if [ "${FA4:-0}" = 1 ]; then
  rm -rf .whl-fa4a .whl-fa4b && mkdir -p .whl-fa4a .whl-fa4b /tmp/avo-fa4
  # flash-attn-4 (a pre-release) and what it imports that the device image lacks; cu13 matches its torch +cu130
  dl .whl-fa4b --pre flash-attn-4  # --pre for it alone: its deps' release candidates are not wanted
  dl .whl-fa4b nvidia-cutlass-dsl nvidia-cutlass-dsl-libs-base nvidia-cutlass-dsl-libs-core \
     quack-kernels einops torch-c-dlpack-ext protobuf "cuda-bindings>=13,<14" cuda-pathfinder
  dl /tmp/avo-fa4 "nvidia-cutlass-dsl-libs-cu13==$(ls .whl-fa4b | sed -n 's/^nvidia_cutlass_dsl_libs_base-\([^-]*\)-.*/\1/p')"
  rm -rf /tmp/avo-fa4/x && mkdir /tmp/avo-fa4/x && (cd /tmp/avo-fa4/x && python3 -m zipfile -e ../nvidia_cutlass_dsl_libs_cu13-*.whl .)
  tar cf - -C /tmp/avo-fa4/x . | xz -T0 -6 > /tmp/avo-fa4/cu13.tar.xz
  split -n 2 -d /tmp/avo-fa4/cu13.tar.xz .whl-fa4a/cu13.part  # -> part00, part01
  mv .whl-fa4a/cu13.part01 .whl-fa4b/ && rm -rf /tmp/avo-fa4
  du -sh .whl-fa4a .whl-fa4b
fi
du -sh .whl
