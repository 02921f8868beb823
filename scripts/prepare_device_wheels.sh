#!/usr/bin/env bash
# Download the wheels the lent GPU machines lack (Python 3.12, x86_64, no network there) into .whl/.
# On the device: python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site
# Ray (~79 MB) does not fit in one 64 MiB carry: `RAY=1` downloads it into .whl-ray/ for a separate call.
set -euo pipefail
cd "$(dirname "$0")/.."
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64
      --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64 --platform manylinux_2_35_x86_64)
dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" -d "$1" "${@:2}"; }
mkdir -p .whl
# pydantic 2 + GitPython + the LLM SDKs (missing on the device image); xgrammar for the bitmask peer.
dl .whl pydantic pydantic-core annotated-types typing-inspection gitpython gitdb smmap \
   openai anthropic jiter distro sniffio docstring-parser httpx2 httpcore2 truststore opentelemetry-api \
   xgrammar apache-tvm-ffi
# flashinfer-bench is pure Python; no deps needed for its data models.
dl .whl flashinfer-bench
if [ "${RAY:-0}" = 1 ]; then mkdir -p .whl-ray && dl .whl-ray ray; fi
du -sh .whl
