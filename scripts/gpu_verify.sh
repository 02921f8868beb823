#!/usr/bin/env bash
# One batch of GPU verification for a lent H100 (device tool), split in parts that each fit a
# 10-minute call. Outputs land in $OUT (or ./out). Usage, after scripts/prepare_device_wheels.sh:
#   bash scripts/gpu_verify.sh evals     # avo eval of seeds and peers + GPU tests
#   bash scripts/gpu_verify.sh grammar   # 8-min avo evolve of grammar_bitmask + report + export
#   bash scripts/gpu_verify.sh attention # 8-min avo evolve of attention_mha_fwd + report + export
#   bash scripts/gpu_verify.sh layout    # avo evolve of the four layout tasks
#   bash scripts/gpu_verify.sh gqa|decode|megakernel|mha-decode   # avo evolve of GQA prefill / GQA decode / the decode layer
#   bash scripts/gpu_verify.sh ray1      # avo evolve --backend ray on this one GPU (RAY=1 prepare_device_wheels.sh; carry .whl-ray)
#   bash scripts/gpu_verify.sh agentic   # agentic islands driven by the scripted LLM server, real GPU evals
#   bash scripts/gpu_verify.sh e2e       # avo.apply in transformers + xgrammar: tokens and tokens/s
#   bash scripts/gpu_verify.sh bench     # peer benchmark scripts (attention, memory-bound)
#   bash scripts/gpu_verify.sh bench-attention|bench-megakernel|bench-grammar  # the evolved artifacts vs seeds and peers
#   bash scripts/gpu_verify.sh sweep     # scripts/sweep_knobs.py over the seeds' newer knobs (design-space map)
#   bash scripts/gpu_verify.sh gluon     # the Gluon FA3-style GQA prefill kernel: correctness + TFLOP/s vs cuDNN
#   bash scripts/gpu_verify.sh gluon-evolve   # avo evolve from the Gluon kernel (configs/gpu_attention_gluon.yaml)
# MINUTES is the run's total wall budget: a resumed run (lineages/<run> carried along) counts the
# minutes it already ran, so pass the old total plus what you want to add.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}; mkdir -p "$OUT"
if [ -d .whl ]; then  # .whl-ray (the slim ray wheel + deps) when carried along
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    $(ls .whl-ray/*.whl 2>/dev/null) >/dev/null 2>&1
  export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH  # bin: ninja, for xgrammar's CUDA JIT
fi
export COLUMNS=160 PYTHONUNBUFFERED=1
avo() { python3 -m avo.cli "$@"; }
evolve_part() {  # run name, config, minutes, extra `avo evolve` arguments
  timeout $(( ${3%.*} * 60 + 120 )) python3 -m avo.cli evolve --config "$2" --minutes "$3" --no-live "${@:4}" > "$OUT/evolve_$1.log" 2>&1
  avo report "$1" > /dev/null 2>&1
  avo lineage best "$1" > "$OUT/best_$1.txt" 2>&1
  avo export "$1" --out "artifacts/$1" > /dev/null 2>&1
  tar czf "$OUT/lineage_$1.tgz" "lineages/$1" "artifacts/$1" 2>/dev/null
  tail -c 3000 "$OUT/evolve_$1.log"
}
sw() {  # seconds, then scripts/sweep_knobs.py arguments; the table rows go to $OUT/sweep.log
  timeout "$1" python3 scripts/sweep_knobs.py "${@:2}" 2>&1 | grep -v "^| ---\|^| task" | tee -a "$OUT/sweep.log" | tail -n 14
}
# The decode layer's recipe point (knowledge_base/recipes/megakernel-h100-fused.md), the base of its sweeps.
MK_RECIPE='"GEMV_BLOCK_N":32,"GEMV_BLOCK_K":256,"GEMV_WARPS":2,"ATTN_BLOCK_KV":32,"ATTN_WARPS":8,"NORM_BLOCK":4096,"num_stages":3,"GEMV_DOT":true,"FUSE_NORM":false,"FUSE_QKV":true,"ATTN_SPLITS":32,"ATTN_DOT":true,"SPLIT_K":4,"PDL":true,"SPLIT_K_QO":2,"ACT_NARROW":true,"FUSE_NORM_UPTO":1,"PREFETCH":1'
case "${1:-evals}" in
  evals)
    for k in kernels/grammar/bitmask_seed.py; do avo eval grammar_bitmask $k --device cuda --json "$OUT/grammar_seed.jsonl"; done
    avo eval grammar_bitmask kernels/peers/bitmask_xgrammar_triton.py --peer --device cuda --json "$OUT/grammar_xgrammar.jsonl"
    for b in cudnn flash; do
      avo eval attention_mha_fwd kernels/peers/attention_sdpa_$b.py --peer --device cuda \
        --workloads gpu_b4_h32_s4096_d128_full,gpu_b4_h32_s4096_d128_causal --json "$OUT/attention_$b.jsonl"
    done
    timeout 240 python3 -m pytest -q -m gpu -o addopts="" -p no:cacheprovider tests/adversarial tests/test_check.py 2>&1 | tail -15 ;;
  grammar) evolve_part gpu-grammar configs/gpu_grammar.yaml "${MINUTES:-8}" ;;
  attention) evolve_part gpu-attention configs/gpu_attention.yaml "${MINUTES:-8}" ;;
  layout) evolve_part gpu-layout configs/gpu_layout.yaml "${MINUTES:-8}" ;;
  gqa) evolve_part gpu-attention-gqa configs/gpu_attention_gqa.yaml "${MINUTES:-8}" ;;
  decode) evolve_part gpu-gqa-decode configs/gpu_gqa_decode.yaml "${MINUTES:-8}" ;;
  megakernel) evolve_part gpu-megakernel configs/gpu_megakernel.yaml "${MINUTES:-8}" ;;
  mha-decode) evolve_part gpu-mha-decode configs/gpu_mha_decode.yaml "${MINUTES:-8}" ;;
  gluon-ws)  # the warp-specialised ping-pong Gluon kernel (gqa_fwd_gluon_ws.py) vs gqa_fwd_gluon.py and cuDNN; a case per subprocess
    timeout "${GLUON_S:-420}" python3 scripts/gluon_ws_check.py ${QUICK:+--quick} 2>&1 | tee "$OUT/gluon_ws_check.log" | tail -40 ;;
  gluon-evolve) evolve_part gpu-attention-gluon configs/gpu_attention_gluon.yaml "${MINUTES:-6}" ;;  # MHA + GQA prefill
  prefill) evolve_part gpu-attention-prefill configs/gpu_attention_prefill.yaml "${MINUTES:-7}" ;;
  bench-attention)  # the evolved attention kernels (MHA/decode from lineages/gpu-mha-decode if it ran here) vs seeds and SDPA
    K=()
    for t in mha_fwd gqa_fwd gqa_decode; do  # a lineage run here first, else the exported winners
      f=$(ls artifacts/gpu-mha-decode/attention_$t/best-*/sources/kernel.py 2>/dev/null | head -1)
      K+=(--kernel "attention_$t=${f:-kernels/attention/evolved/${t}_h100/sources/kernel.py}")
    done
    timeout "${BENCH_S:-300}" python3 scripts/bench_attention.py --repeats 3 "${K[@]}" 2>&1 | tee "$OUT/bench_attention.log" | tail -45
    cp docs/benchmarks.md "$OUT/" ;;
  bench-memory)  # bitmask and layout (device column) with the exported layout winner
    timeout "${BENCH_S:-540}" python3 scripts/bench_memory_bound.py --tasks grammar_bitmask layout_transpose2d layout_bshd_to_bhsd \
      layout_bshd_to_bhds layout_kv_paged --kernel layout_transpose2d=kernels/layout/evolved/transpose2d_h100/sources/kernel.py 2>&1 \
      | tee "$OUT/bench_memory.log" | tail -70
    cp docs/benchmarks.md "$OUT/" ;;
  bench-grammar)  # grammar_bitmask alone: the gpu-grammar lineage's winner if it ran here, else the seed, vs xgrammar
    f=$(ls artifacts/gpu-grammar/grammar_bitmask/best-*/sources/kernel.py 2>/dev/null | head -1)
    timeout "${BENCH_S:-200}" python3 scripts/bench_memory_bound.py --tasks grammar_bitmask \
      ${f:+--kernel grammar_bitmask=$f} 2>&1 | tee "$OUT/bench_grammar.log" | tail -25
    cp docs/benchmarks.md "$OUT/" ;;
  bench-megakernel)
    timeout "${BENCH_S:-400}" python3 scripts/bench_memory_bound.py --tasks megakernel_decode_layer \
      --kernel megakernel_decode_layer=kernels/megakernel/evolved/decode_layer_h100/sources/kernel.py 2>&1 \
      | tee "$OUT/bench_megakernel.log" | tail -45
    cp docs/benchmarks.md "$OUT/" ;;
  ray1)  # Ray backend, one evaluator actor on this GPU (carry .whl-ray too); multicast off as the device README asks
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    evolve_part gpu-ray-one-gpu configs/gpu_ray_one_gpu.yaml "${MINUTES:-8}" --backend ray ;;
  agentic) timeout 540 python3 scripts/agentic_scripted_run.py --device cuda --out "$OUT/agentic-lineage" \
             --json "$OUT/agentic.json" 2>&1 | tail -c 4000 ;;
  e2e) python3 scripts/bench_apply_e2e.py --device cuda --json "$OUT/e2e.json" 2>&1 | tail -c 4000 ;;
  bench)
    python3 scripts/bench_attention.py 2>&1 | tail -40
    python3 scripts/bench_memory_bound.py 2>&1 | tail -40 ;;
  sweep3)  # split-K and the gate/up block size around the session-3 winner, with per-kernel GPU time
    E='"GEMV_BLOCK_N":32,"GEMV_BLOCK_K":128,"GEMV_WARPS":4,"ATTN_BLOCK_KV":32,"ATTN_WARPS":8,"num_stages":4,"GEMV_DOT":true,"FUSE_NORM":true,"FUSE_QKV":true,"ATTN_SPLITS":32,"ATTN_DOT":true'
    sw "${SWEEP_S:-300}" megakernel_decode_layer kernels/megakernel/decode_layer_seed.py --workloads 'b1_kv4000|b8_kv8191' --profile \
      "{$E}" "{$E,\"SPLIT_K\":2}" "{$E,\"SPLIT_K\":4}" "{$E,\"SPLIT_K\":8}" "{$E,\"MLP_BLOCK_N\":16}" \
      "{$E,\"MLP_BLOCK_N\":64}" "{$E,\"SPLIT_K\":4,\"MLP_BLOCK_N\":16}" "{$E,\"SPLIT_K\":2,\"GEMV_BLOCK_N\":16}" \
      "{$E,\"SPLIT_K\":4,\"GEMV_BLOCK_K\":256,\"num_stages\":3}" "{$E,\"SPLIT_K\":4,\"GEMV_WARPS\":8}"
    cp "$OUT/sweep.log" "$OUT/sweep3.log" ;;
  sweep4)  # the GEMV's limits at batch 1: norm pre-loop, contiguous K runs, FMA vs tensor cores, warps (per-launch profile)
    E='"GEMV_BLOCK_N":32,"GEMV_BLOCK_K":256,"GEMV_WARPS":4,"ATTN_BLOCK_KV":32,"ATTN_WARPS":8,"num_stages":3,"GEMV_DOT":true,"FUSE_NORM":true,"FUSE_QKV":true,"ATTN_SPLITS":32,"ATTN_DOT":true,"SPLIT_K":4'
    sw "${SWEEP_S:-300}" megakernel_decode_layer kernels/megakernel/decode_layer_seed.py --workloads "${WL:-b1_kv4000}" --profile \
      "{$E}" "{$E,\"GEMV_BLOCK_K\":128,\"num_stages\":4,\"GEMV_WARPS\":8}" "{$E,\"FUSE_NORM\":false}" \
      "{$E,\"GEMV_BLOCK_K\":512,\"num_stages\":2}" "{$E,\"GEMV_BLOCK_K\":512,\"GEMV_WARPS\":8}" \
      "{$E,\"GEMV_BLOCK_N\":16,\"GEMV_BLOCK_K\":512,\"SPLIT_K\":2}" "{$E,\"GEMV_DOT\":false,\"GEMV_BLOCK_N\":8,\"GEMV_BLOCK_K\":512}" \
      "{$E,\"GEMV_DOT\":false,\"GEMV_BLOCK_N\":4,\"GEMV_BLOCK_K\":512}" "{$E,\"num_stages\":4,\"GEMV_WARPS\":8}" \
      "{$E,\"MLP_BLOCK_N\":64,\"GEMV_WARPS\":8}"
    cp "$OUT/sweep.log" "$OUT/sweep4.log" ;;
  sweep5)  # FUSE_NORM's pre-pass in NORM_BLOCK chunks, FMA vs tensor-core GEMV at split-K 4 (per-launch profile)
    F='"GEMV_BLOCK_N":8,"GEMV_BLOCK_K":512,"GEMV_WARPS":4,"ATTN_BLOCK_KV":32,"ATTN_WARPS":8,"num_stages":3,"GEMV_DOT":false,"FUSE_NORM":true,"FUSE_QKV":true,"ATTN_SPLITS":32,"ATTN_DOT":true,"SPLIT_K":4'
    sw "${SWEEP_S:-300}" megakernel_decode_layer kernels/megakernel/decode_layer_seed.py --workloads "${WL:-b1_kv4000|b8_kv8191}" --profile \
      "{$F,\"NORM_BLOCK\":1024}" "{$F,\"NORM_BLOCK\":4096}" "{$F,\"NORM_BLOCK\":2048}" "{$F,\"FUSE_NORM\":false}" \
      "{$F,\"NORM_BLOCK\":4096,\"GEMV_DOT\":true,\"GEMV_BLOCK_N\":32,\"GEMV_BLOCK_K\":256}" \
      "{$F,\"NORM_BLOCK\":4096,\"GEMV_BLOCK_N\":16}" "{$F,\"NORM_BLOCK\":4096,\"num_stages\":4}" \
      "{$F,\"NORM_BLOCK\":4096,\"GEMV_BLOCK_K\":256}" "{$F,\"NORM_BLOCK\":4096,\"SPLIT_K\":8}" \
      "{$F,\"NORM_BLOCK\":4096,\"GEMV_WARPS\":8}"
    cp "$OUT/sweep.log" "$OUT/sweep5.log" ;;
  sweep7)  # the megakernel's PDL and PREFETCH knobs at the exported lineage point (per-launch profile)
    E='"GEMV_BLOCK_N":32,"GEMV_BLOCK_K":256,"GEMV_WARPS":2,"ATTN_BLOCK_KV":32,"ATTN_WARPS":8,"NORM_BLOCK":4096,"num_stages":3,"GEMV_DOT":true,"FUSE_NORM":false,"FUSE_QKV":true,"ATTN_SPLITS":32,"ATTN_DOT":true,"SPLIT_K":8'
    P="$E"',"PDL":true'
    sw "${SWEEP_S:-420}" megakernel_decode_layer kernels/megakernel/decode_layer_seed.py --workloads "${WL:-b1_kv4000|b4_kv2048|b8_kv8191}" --profile \
      "{$E}" "{$P}" "{$P,\"PREFETCH\":1}" "{$P,\"PREFETCH\":4}" "{$P,\"FUSE_NORM\":true}" "{$P,\"SPLIT_K\":4}" "{$P,\"GEMV_WARPS\":4}"
    cp "$OUT/sweep.log" "$OUT/sweep7.log" ;;
  sweep9)  # second PDL round: per-GEMV split-K (SPLIT_K_QO), norm fusion, tiles, attention splits at PDL + PREFETCH 1
    P='"GEMV_BLOCK_N":32,"GEMV_BLOCK_K":256,"GEMV_WARPS":2,"ATTN_BLOCK_KV":32,"ATTN_WARPS":8,"NORM_BLOCK":4096,"num_stages":3,"GEMV_DOT":true,"FUSE_NORM":false,"FUSE_QKV":true,"ATTN_SPLITS":32,"ATTN_DOT":true,"SPLIT_K":8,"PDL":true,"PREFETCH":1'
    sw "${SWEEP_S:-420}" megakernel_decode_layer kernels/megakernel/decode_layer_seed.py --workloads "${WL:-b1_kv4000|b4_kv2048|b8_kv8191}" --profile \
      "{$P}" "{$P,\"SPLIT_K_QO\":1}" "{$P,\"SPLIT_K_QO\":2}" "{$P,\"SPLIT_K_QO\":4}" "{$P,\"FUSE_NORM\":true}" \
      "{$P,\"GEMV_BLOCK_N\":16,\"MLP_BLOCK_N\":32,\"SPLIT_K_QO\":2}" "{$P,\"ATTN_BLOCK_KV\":64}" "{$P,\"ATTN_SPLITS\":16}"
    cp "$OUT/sweep.log" "$OUT/sweep9.log" ;;
  sweep10)  # ACT_NARROW (16-bit GEMV inputs) at sweep9's best point, with the tiles it frees up
    P='"GEMV_BLOCK_N":32,"GEMV_BLOCK_K":256,"GEMV_WARPS":2,"ATTN_BLOCK_KV":32,"ATTN_WARPS":8,"NORM_BLOCK":4096,"num_stages":3,"GEMV_DOT":true,"FUSE_NORM":false,"FUSE_QKV":true,"ATTN_SPLITS":32,"ATTN_DOT":true,"SPLIT_K":8,"PDL":true,"PREFETCH":1,"SPLIT_K_QO":2'
    A="$P"',"ACT_NARROW":true'
    sw "${SWEEP_S:-420}" megakernel_decode_layer kernels/megakernel/decode_layer_seed.py --workloads "${WL:-b1_kv4000|b4_kv2048|b8_kv8191}" --profile \
      "{$P}" "{$A}" "{$A,\"num_stages\":4}" "{$A,\"GEMV_BLOCK_K\":512}" "{$A,\"GEMV_WARPS\":4}" "{$A,\"FUSE_NORM\":true}" \
      "{$A,\"MLP_BLOCK_N\":64}" "{$A,\"GEMV_BLOCK_N\":64}" "{$A,\"GEMV_BLOCK_K\":512,\"num_stages\":2}"
    cp "$OUT/sweep.log" "$OUT/sweep10.log" ;;
  sweep11)  # FUSE_NORM_UPTO (fused norms at batch 1 only) and first-wave PREFETCH depth at the session-5 lineage point
    A='"GEMV_BLOCK_N":32,"GEMV_BLOCK_K":256,"GEMV_WARPS":2,"ATTN_BLOCK_KV":32,"ATTN_WARPS":8,"NORM_BLOCK":4096,"num_stages":3,"GEMV_DOT":true,"FUSE_NORM":false,"FUSE_QKV":true,"ATTN_SPLITS":32,"ATTN_DOT":true,"SPLIT_K":8,"PDL":true,"SPLIT_K_QO":2,"ACT_NARROW":true'
    U="$A"',"FUSE_NORM_UPTO":1'
    sw "${SWEEP_S:-420}" megakernel_decode_layer kernels/megakernel/decode_layer_seed.py --workloads "${WL:-b1_kv4000|b4_kv2048|b8_kv8191}" --profile \
      "{$A,\"PREFETCH\":1}" "{$U,\"PREFETCH\":1}" "{$U,\"PREFETCH\":0}" "{$U,\"PREFETCH\":2}" "{$U,\"PREFETCH\":4}" "{$U,\"PREFETCH\":8}" \
      "{$A,\"PREFETCH\":8}"
    cp "$OUT/sweep.log" "$OUT/sweep11.log" ;;
  sweep12)  # the GEMV tiles around sweep11's best (down keeps SPLIT_K; q|k|v and O SPLIT_K_QO 2)
    U='"GEMV_BLOCK_N":32,"GEMV_BLOCK_K":256,"GEMV_WARPS":2,"ATTN_BLOCK_KV":32,"ATTN_WARPS":8,"NORM_BLOCK":4096,"num_stages":3,"GEMV_DOT":true,"FUSE_NORM":false,"FUSE_QKV":true,"ATTN_SPLITS":32,"ATTN_DOT":true,"SPLIT_K":8,"PDL":true,"SPLIT_K_QO":2,"ACT_NARROW":true,"FUSE_NORM_UPTO":1,"PREFETCH":1'
    sw "${SWEEP_S:-420}" megakernel_decode_layer kernels/megakernel/decode_layer_seed.py --workloads "${WL:-b1_kv4000|b4_kv2048|b8_kv8191}" --profile \
      "{$U}" "{$U,\"SPLIT_K\":4}" "{$U,\"SPLIT_K\":4,\"num_stages\":4}" "{$U,\"GEMV_BLOCK_N\":16,\"MLP_BLOCK_N\":32}" \
      "{$U,\"GEMV_BLOCK_N\":64,\"MLP_BLOCK_N\":32}" "{$U,\"num_stages\":2}" "{$U,\"GEMV_BLOCK_K\":128,\"num_stages\":4}" "{$U,\"GEMV_WARPS\":1}"
    cp "$OUT/sweep.log" "$OUT/sweep12.log" ;;
  sweep13)  # layout tiles on the workloads where torch.compile matched or beat the seed in device time (bench-memory)
    sw 150 layout_kv_paged kernels/layout/kv_paged_seed.py --workloads 'float32|b64' '{}' '{"BLOCK":2048}' '{"BLOCK":4096}' \
      '{"BLOCK":2048,"num_warps":8}' '{"BLOCK":4096,"num_warps":8}' '{"BLOCK":4096,"num_warps":16}' '{"BLOCK":2048,"KV_TOGETHER":false}'
    sw 150 layout_bshd_to_bhds kernels/layout/bshd_to_bhds_seed.py --workloads '5x1000|8x1024x32' '{}' '{"BLOCK_R":32}' '{"BLOCK_C":32}' \
      '{"BLOCK_R":32,"BLOCK_C":32}' '{"BLOCK_R":32,"BLOCK_C":128}' '{"BLOCK_R":128,"BLOCK_C":32}' '{"BLOCK_R":128,"BLOCK_C":128,"num_warps":8}' '{"num_warps":2}'
    sw 150 layout_bshd_to_bhsd kernels/layout/bshd_to_bhsd_seed.py --workloads 'float32|3x1999' '{}' '{"BLOCK_S":32}' '{"BLOCK_S":8}' \
      '{"BLOCK_S":32,"num_warps":8}' '{"H_FAST":false}' '{"BLOCK_S":64,"num_warps":8}' '{"BLOCK_S":4,"num_warps":2}'
    cp "$OUT/sweep.log" "$OUT/sweep13.log" ;;
  ncu-megakernel)  # Nsight Compute per launch of the exported decode layer at B1·KV4000: DRAM throughput, occupancy, stalls
    K=kernels/megakernel/evolved/decode_layer_h100/sources/kernel.py
    timeout "${NCU_S:-400}" ncu --target-processes all --kernel-name regex:"_(gemv|rmsnorm|rope_attn|attn_combine)_kernel" --launch-skip "${SKIP:-8}" --launch-count "${COUNT:-8}" \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
      python3 scripts/call_kernel.py megakernel_decode_layer $K "${WL:-gpu_b1_kv4000_bfloat16}" --calls 2 > "$OUT/ncu_megakernel.txt" 2>&1
    grep -E "^  [a-z_]+kernel|DRAM Throughput|Memory Throughput|Duration|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|Warp Cycles Per Issued|matches|MISMATCH" "$OUT/ncu_megakernel.txt" | head -120 ;;
  sweep14)  # GEMV_TMA (weight tiles through TMA descriptors) at sweep12's best point, with the deeper pipelines it allows
    U=$MK_RECIPE
    T="$U"',"GEMV_TMA":true'
    sw "${SWEEP_S:-420}" megakernel_decode_layer kernels/megakernel/decode_layer_seed.py --workloads "${WL:-b1_kv4000|b4_kv2048|b8_kv8191}" --profile \
      "{$U}" "{$T}" "{$T,\"num_stages\":4}" "{$T,\"GEMV_WARPS\":4}" "{$T,\"GEMV_BLOCK_N\":64}" "{$T,\"GEMV_BLOCK_K\":128,\"num_stages\":4}" \
      "{$T,\"SPLIT_K\":8}" "{$T,\"GEMV_WARPS\":4,\"num_stages\":4}"
    cp "$OUT/sweep.log" "$OUT/sweep14.log" ;;
  sweep15)  # attention prefill: FMA_SCALE (raw-score max, one FMA for scale and subtract) at the session-3 lineage point
    E='"BLOCK_M":128,"BLOCK_N":64,"num_warps":8,"num_stages":3,"EXP2":true,"CAUSAL_SKIP":true,"PEEL_TAIL":true'
    for t in mha gqa; do
      [ $t = mha ] && W='b4_h32_s4096_d128' || W='b4_hq32_hkv8_s4096|b16_hq32_hkv4_s1024_d128_causal'
      sw "${SWEEP_S:-200}" attention_${t}_fwd kernels/attention/${t}_fwd_seed.py --workloads "$W" --fp32-reference "{$E}" \
        "{$E,\"FMA_SCALE\":true}" "{$E,\"FMA_SCALE\":true,\"BLOCK_N\":128,\"num_stages\":2}" "{$E,\"FMA_SCALE\":true,\"REVERSE_M\":true}"
    done
    cp "$OUT/sweep.log" "$OUT/sweep15.log" ;;
  sweep17|sweep17-bitmask|sweep17-layout)  # the halves are shorter calls (less lost if a lent machine is taken back)
    # grammar bitmask: WORD_TILE (per-word predicates, vector stores; RMW reads mixed words only) next to xgrammar's
    # Triton and CUDA kernels; layout bshd->bhsd and transpose2d through TMA descriptors
    B='"BLOCK_SIZE"'; W='"WORD_TILE":true'
    [ "$1" != sweep17-layout ] && sw 320 grammar_bitmask kernels/grammar/bitmask_seed.py '{}' \
      "{$B:4096,\"num_warps\":16,\"num_stages\":3,\"BROADCAST_WORDS\":true}" \
      "{$B:1024,\"num_warps\":4,\"RMW\":true,$W}" "{$B:2048,\"num_warps\":8,\"RMW\":true,$W}" \
      "{$B:4096,\"num_warps\":8,\"RMW\":true,$W}" "{$B:4096,\"num_warps\":16,\"RMW\":true,$W}" \
      "{$B:8192,\"num_warps\":16,\"RMW\":true,$W}" "{$B:2048,\"num_warps\":8,\"RMW\":false,$W}" \
      "{$B:4096,\"num_warps\":16,\"RMW\":false,$W}" "{$B:4096,\"num_warps\":16,\"RMW\":true,\"PERSISTENT\":true,\"PROGRAMS_PER_SM\":2,$W}" \
      "{$B:2048,\"num_warps\":8,\"RMW\":true,\"PERSISTENT\":true,\"PROGRAMS_PER_SM\":4,$W}" \
      "{$B:2048,\"num_warps\":8,\"RMW\":true,\"SKIP_ONES\":true,$W}" "{$B:4096,\"num_warps\":8,\"num_stages\":3,\"RMW\":true,$W}" \
      "{$B:4096,\"num_warps\":8,\"RMW\":true,\"AUTO_BLOCK\":true,$W}" \
      --peer "xgrammar triton" --peer "xgrammar cuda"
    # layout bshd->bhsd: [BLOCK_S, BLOCK_D] boxes through TMA descriptors (the copy engine, no per-thread addresses)
    T='"TMA":true'
    [ "$1" != sweep17-bitmask ] && sw 110 layout_bshd_to_bhsd kernels/layout/bshd_to_bhsd_seed.py '{}' "{\"BLOCK_S\":16,$T}" "{\"BLOCK_S\":32,$T}" \
      "{\"BLOCK_S\":64,$T}" "{\"BLOCK_S\":128,$T}" "{\"BLOCK_S\":256,$T}" "{\"BLOCK_S\":64,\"num_warps\":1,$T}" \
      "{\"BLOCK_S\":128,\"num_warps\":1,$T}" "{\"BLOCK_S\":64,\"H_FAST\":false,$T}" "{\"BLOCK_S\":32,\"num_warps\":8}"
    [ "$1" != sweep17-bitmask ] && sw 110 layout_transpose2d kernels/layout/transpose2d_seed.py --workloads '16384|8192' '{}' '{"BLOCK_R":128}' \
      "{\"BLOCK_R\":128,$T}" "{\"BLOCK_R\":64,\"BLOCK_C\":128,$T}" "{\"BLOCK_R\":128,\"BLOCK_C\":128,\"num_warps\":8,$T}" \
      "{\"BLOCK_R\":32,\"BLOCK_C\":128,$T}"
    # kv_paged FLAT: one BLOCK-element chunk per program (torch.compile's balanced grid), next to torch.compile
    [ "$1" != sweep17-bitmask ] && sw 110 layout_kv_paged kernels/layout/kv_paged_seed.py '{}' '{"FLAT":true}' \
      '{"FLAT":true,"BLOCK":2048}' '{"FLAT":true,"BLOCK":4096,"num_warps":8}' '{"FLAT":true,"BLOCK":512}' \
      '{"FLAT":true,"STREAM":true}' --peer "torch.compile"
    cp "$OUT/sweep.log" "$OUT/$1.log" ;;
  gluon)  # the Gluon FA3-style GQA prefill (kernels/attention/gqa_fwd_gluon.py): correctness, then TFLOP/s next to cuDNN
    timeout "${GLUON_S:-240}" python3 scripts/gluon_attention_check.py 2>&1 | tee "$OUT/gluon_check.log" | tail -40
    for c in '{"NUM_STAGES":3}' '{"BLOCK_N":64,"NUM_STAGES":3}'; do
      timeout 120 python3 scripts/gluon_attention_check.py --quick --config "$c" 2>&1 | tee -a "$OUT/gluon_check.log" | tail -12
    done ;;
  sweep18)  # ATTN_PREFETCH at the recipe's point: the split's KV rows hinted into L2 before the PDL wait (1), + a share of wo (2)
    U=$MK_RECIPE
    sw "${SWEEP_S:-300}" megakernel_decode_layer kernels/megakernel/decode_layer_seed.py --workloads "${WL:-b1_kv4000|b4_kv2048|b8_kv8191}" --profile \
      "{$U}" "{$U,\"ATTN_PREFETCH\":1}" "{$U,\"ATTN_PREFETCH\":2}" "{$U,\"ATTN_PREFETCH\":2,\"ATTN_SPLITS\":16}"
    cp "$OUT/sweep.log" "$OUT/sweep18.log" ;;
  sweep19)  # FUSE_MLP (the down projection inside the gate/up GEMV, relaxed fp32 atomics) and RELAXED_ADDS at the recipe's point
    U=$MK_RECIPE
    sw "${SWEEP_S:-300}" megakernel_decode_layer kernels/megakernel/decode_layer_seed.py --workloads "${WL:-b1_kv4000|b2_kv3000|b4_kv2048}" --profile \
      "{$U}" "{$U,\"FUSE_MLP\":8}" "{$U,\"FUSE_MLP\":8,\"DOWN_BLOCK_J\":128}" "{$U,\"FUSE_MLP\":8,\"DOWN_BLOCK_J\":256}" \
      "{$U,\"FUSE_MLP\":8,\"MLP_BLOCK_N\":64,\"DOWN_BLOCK_J\":128}" "{$U,\"RELAXED_ADDS\":true}" "{$U,\"RELAXED_ADDS\":true,\"FUSE_MLP\":8,\"DOWN_BLOCK_J\":128}"
    cp "$OUT/sweep.log" "$OUT/sweep19.log" ;;
  sweep20)  # PREFETCH_O: the O GEMV hints its weights into L2 while attention runs (its predecessor leaves DRAM idle)
    U="$MK_RECIPE,\"RELAXED_ADDS\":true"
    sw "${SWEEP_S:-240}" megakernel_decode_layer kernels/megakernel/decode_layer_seed.py --workloads "${WL:-b1_kv4000|b4_kv2048|b8_kv8191}" --profile \
      "{$U}" "{$U,\"PREFETCH_O\":2}" "{$U,\"PREFETCH_O\":4}" "{$U,\"PREFETCH_O\":8}" "{$U,\"PREFETCH_O\":8,\"SPLIT_K_QO\":4}"
    cp "$OUT/sweep.log" "$OUT/sweep20.log" ;;
  ws-order)  # the ping-pong kernel's tile order (heads fastest, query blocks fastest, head groups of a few waves) on GQA + MHA shapes
    timeout "${GLUON_S:-400}" python3 scripts/gluon_ws_check.py --quick --shapes "${SHAPES:-0,2,4,5,6,7,8,9,10,11}" --config '{}' \
      --config '{"HEAD_MAJOR": true}' --config '{"HEAD_MAJOR": true, "HEAD_GROUP_WAVES": 2}' --config '{"HEAD_MAJOR": true, "HEAD_GROUP_WAVES": 4}' \
      2>&1 | tee "$OUT/ws_order.log" | tail -60 ;;
  sweep16)  # ATTN_LAST_COMBINES (the last attention split combines: no combine launch) at the recipe's point
    U=$MK_RECIPE
    sw "${SWEEP_S:-420}" megakernel_decode_layer kernels/megakernel/decode_layer_seed.py --workloads "${WL:-b1_kv4000|b4_kv2048|b8_kv8191}" --profile \
      "{$U}" "{$U,\"ATTN_LAST_COMBINES\":true}" "{$U,\"ATTN_LAST_COMBINES\":true,\"ATTN_SPLITS\":16}" "{$U,\"ATTN_LAST_COMBINES\":true,\"ATTN_BLOCK_KV\":64}"
    cp "$OUT/sweep.log" "$OUT/sweep16.log" ;;
  sweep8)  # the layout seeds' STREAM cache hints (evict_first loads, .cs stores), bigger row tiles
    for t in transpose2d bshd_to_bhsd bshd_to_bhds kv_paged; do
      X=(); case $t in transpose2d|bshd_to_bhds) X=('{"BLOCK_R":128}' '{"BLOCK_R":128,"STREAM":true}' '{"BLOCK_R":128,"STREAM":true,"num_warps":8}') ;; esac
      sw "${LAYOUT_S:-120}" layout_$t kernels/layout/${t}_seed.py '{}' '{"STREAM":true}' '{"STREAM":true,"num_warps":8}' "${X[@]}"
    done
    cp "$OUT/sweep.log" "$OUT/sweep8.log" ;;
  sweep6)  # attention prefill: the TMA knob (device-side descriptors) at the session-3 lineage point
    E='"BLOCK_M":128,"BLOCK_N":64,"num_warps":8,"num_stages":3,"EXP2":true,"CAUSAL_SKIP":true,"PEEL_TAIL":true'
    for t in mha gqa; do
      [ $t = mha ] && W='b4_h32_s4096_d128' || W='b4_hq32_hkv8_s4096|b16_hq32_hkv4_s1024_d128_causal'
      sw "${SWEEP_S:-200}" attention_${t}_fwd kernels/attention/${t}_fwd_seed.py --workloads "$W" --fp32-reference "{$E}" \
        "{$E,\"TMA\":true}" "{$E,\"TMA\":true,\"WARP_SPEC\":true}" "{$E,\"TMA\":true,\"num_stages\":2}" \
        "{$E,\"TMA\":true,\"BLOCK_N\":128,\"num_stages\":2}" "{$E,\"TMA\":true,\"REVERSE_M\":true}"
    done
    cp "$OUT/sweep.log" "$OUT/sweep6.log" ;;
  sweep2)  # the best points of `sweep` combined, the megakernel's tensor-core attention, causal REVERSE_M
    F='"GEMV_DOT":true,"num_stages":4,"GEMV_BLOCK_K":128,"FUSE_NORM":true,"FUSE_QKV":true,"ATTN_SPLITS":32,"ATTN_BLOCK_KV":32'
    sw 240 megakernel_decode_layer kernels/megakernel/decode_layer_seed.py --workloads 'b1_kv4000|b8_kv8191|b4' \
      "{$F,\"GEMV_BLOCK_N\":32}" "{$F,\"GEMV_BLOCK_N\":64}" "{$F,\"GEMV_BLOCK_N\":32,\"ATTN_DOT\":true}" \
      "{$F,\"GEMV_BLOCK_N\":64,\"ATTN_DOT\":true}" "{$F,\"GEMV_BLOCK_N\":64,\"ATTN_DOT\":true,\"ATTN_SPLITS\":16}" \
      "{$F,\"GEMV_BLOCK_N\":64,\"ATTN_DOT\":true,\"GEMV_BLOCK_K\":256,\"num_stages\":3}" \
      "{$F,\"GEMV_BLOCK_N\":32,\"ATTN_DOT\":true,\"ATTN_WARPS\":8}" "{$F,\"GEMV_BLOCK_N\":64,\"ATTN_DOT\":true,\"GEMV_WARPS\":2}"
    E='"BLOCK_M":128,"BLOCK_N":64,"num_warps":8,"num_stages":3,"EXP2":true,"CAUSAL_SKIP":true,"PEEL_TAIL":true'
    for t in mha gqa; do
      [ $t = mha ] && W='b4_h32_s4096_d128' || W='b4_hq32_hkv8_s4096|b16_hq32_hkv4_s1024_d128_causal'
      sw 150 attention_${t}_fwd kernels/attention/${t}_fwd_seed.py --workloads "$W" "{$E}" "{$E,\"REVERSE_M\":true}" \
        "{$E,\"REVERSE_M\":true,\"WARP_SPEC\":true}" "{$E,\"REVERSE_M\":true,\"BLOCK_N\":128,\"num_stages\":2}" --fp32-reference
    done ;;
  sweep)  # the knobs added after the first H100 runs, each next to the seed's point and the old winner
    D='"GEMV_DOT":true,"num_stages":3,"GEMV_BLOCK_N":32,"GEMV_BLOCK_K":128'
    F="$D"',"FUSE_NORM":true,"FUSE_QKV":true'
    sw 200 megakernel_decode_layer kernels/megakernel/decode_layer_seed.py --workloads 'b1_kv4000|b8_kv8191' '{}' "{$D}" \
      "{$F}" "{$F,\"ATTN_SPLITS\":16}" "{$F,\"ATTN_SPLITS\":16,\"GEMV_BLOCK_N\":16}" \
      "{$F,\"ATTN_SPLITS\":16,\"GEMV_BLOCK_N\":64}" "{$F,\"ATTN_SPLITS\":16,\"GEMV_BLOCK_K\":256}" \
      "{$F,\"ATTN_SPLITS\":16,\"num_stages\":4}" "{$F,\"ATTN_SPLITS\":16,\"GEMV_WARPS\":8}" \
      "{$F,\"ATTN_SPLITS\":32,\"ATTN_BLOCK_KV\":32}"
    sw 100 attention_gqa_decode kernels/attention/gqa_decode_seed.py '{}' '{"AUTO_SPLITS":true}' \
      '{"AUTO_SPLITS":true,"CTAS_PER_SM":2}' '{"AUTO_SPLITS":true,"CTAS_PER_SM":4}' \
      '{"AUTO_SPLITS":true,"CTAS_PER_SM":2,"BLOCK_N":128}' '{"AUTO_SPLITS":true,"CTAS_PER_SM":2,"num_stages":3}'
    sw 100 grammar_bitmask kernels/grammar/bitmask_seed.py '{}' '{"BROADCAST_WORDS":true}' \
      '{"BROADCAST_WORDS":true,"BLOCK_SIZE":1024}' '{"BROADCAST_WORDS":true,"BLOCK_SIZE":4096,"num_warps":8}' \
      '{"BROADCAST_WORDS":true,"PERSISTENT":true,"PROGRAMS_PER_SM":2,"BLOCK_SIZE":4096,"num_warps":8}' \
      '{"PERSISTENT":true,"PROGRAMS_PER_SM":4,"BLOCK_SIZE":2048,"num_warps":8}' --peer 'xgrammar triton'
    E='"BLOCK_M":128,"BLOCK_N":64,"num_warps":8,"num_stages":3,"EXP2":true,"CAUSAL_SKIP":true'
    sw 150 attention_mha_fwd kernels/attention/mha_fwd_seed.py --workloads 'b4_h32_s4096_d128' "{$E}" \
      "{$E,\"PEEL_TAIL\":true}" "{$E,\"WARP_SPEC\":true}" "{$E,\"PEEL_TAIL\":true,\"WARP_SPEC\":true}" \
      "{$E,\"PEEL_TAIL\":true,\"BLOCK_N\":128,\"num_stages\":2}"
    sw 100 attention_gqa_fwd kernels/attention/gqa_fwd_seed.py --workloads 'b4_hq32_hkv8_s4096' '{}' "{$E}" \
      "{$E,\"PEEL_TAIL\":true}" "{$E,\"PEEL_TAIL\":true,\"WARP_SPEC\":true}" ;;
  *) echo "usage: $0 evals|grammar|attention|layout|gqa|decode|megakernel|agentic|e2e|bench|sweep|sweep2|sweep3|sweep4|sweep5|sweep6|sweep7|sweep8|sweep9|sweep10|sweep11|sweep12|sweep13|sweep14|sweep15|sweep16|mha-decode|prefill|ray1|bench-attention|bench-megakernel|bench-memory|ncu-megakernel" >&2; exit 2 ;;
esac
