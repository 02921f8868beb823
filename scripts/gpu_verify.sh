#!/usr/bin/env bash
# GPU verification on a lent H100 (device tool), in parts that each fit a 10-minute call. Outputs
# land in $OUT (or ./out). Usage, after scripts/prepare_device_wheels.sh:
#   bash scripts/gpu_verify.sh evals            # avo eval of seeds and peers + the GPU tests
#   bash scripts/gpu_verify.sh evolve CONFIG    # avo evolve of configs/CONFIG.yaml (or a path) + report, best, export
#        CONFIG: gpu_grammar gpu_attention gpu_attention_gqa gpu_attention_prefill gpu_attention_gluon
#                gpu_gqa_decode gpu_mha_decode gpu_layout gpu_megakernel gpu_problems; MINUTES is the run's total wall
#                budget (default 8): a resumed run (lineages/<run> carried along) counts the minutes it
#                already ran, so pass the old total plus what you want to add
#   bash scripts/gpu_verify.sh ray1             # avo evolve --backend ray on this one GPU (RAY=1 prepare_device_wheels.sh; carry .whl-ray)
#   bash scripts/gpu_verify.sh agentic          # agentic islands driven by the scripted LLM server, real GPU evals
#   bash scripts/gpu_verify.sh e2e              # avo.apply in transformers + xgrammar: tokens and tokens/s
#   bash scripts/gpu_verify.sh apply            # issue 25 on a GPU: the apply GPU tests, the cost of a call avo does not
#        serve (bench_apply_overhead), e2e with the shipped artifacts, then the bitmask winner measured against
#        xgrammar's own kernel (a copy of the artifacts, so the repo's records stay) and e2e xgrammar with that record
#   bash scripts/gpu_verify.sh throughput [TASKS]  # scripts/bench_throughput.py: evals/GPU-hour, GPU busy, seconds per phase
#        (spawn, import, compile, check, time, gate); MINUTES per run (default 2), TRANSFER="host device" adds the host path,
#        KEPT="0 2" the run without kept trials (every trial's reference computed each evaluation)
#   bash scripts/gpu_verify.sh timing [TASKS]   # the channel/timing GPU tests, then events vs CUPTI per workload (bench_timing_methods.py)
#   bash scripts/gpu_verify.sh bench [WHICH]    # peer benchmarks (rewrite docs/benchmarks.md sections); WHICH:
#        (none) both scripts on the seeds; attention | memory | grammar | megakernel: the evolved kernels vs seeds and peers;
#        problems: scripts/bench_problem.py on the run of configs/gpu_problems.yaml (reference-only user problems)
#   bash scripts/gpu_verify.sh fa4-stage; ... fa4   # FlashAttention-4 as a peer, two calls on one warm machine
#        (FA4=1 prepare_device_wheels.sh; call 1 carries .whl-fa4a, call 2 .whl-fa4b): bench_attention with the FA4 peer
#        next to KERNEL (default the shipped MHA winner) on WL, then `avo eval` of the peer
#   bash scripts/gpu_verify.sh sweep GRID       # scripts/sweep_knobs.py --grid GRID (scripts/sweeps/GRID.json); WL overrides its workloads
#   bash scripts/gpu_verify.sh ncu              # Nsight Compute per launch of the exported decode layer (target: scripts/call_kernel.py)
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
usage() {
  echo "usage: $0 evals | evolve CONFIG | ray1 | agentic | e2e | apply | throughput [TASKS] | timing [TASKS] | bench [attention|memory|grammar|megakernel] | fa4-stage | fa4 | sweep GRID | ncu" >&2
  exit 2
}
evolve_part() {  # run name, config, minutes, extra `avo evolve` arguments
  timeout $(( ${3%.*} * 60 + 120 )) python3 -m avo.cli evolve --config "$2" --minutes "$3" --no-live "${@:4}" > "$OUT/evolve_$1.log" 2>&1
  avo report "$1" > /dev/null 2>&1
  avo lineage best "$1" > "$OUT/best_$1.txt" 2>&1
  avo export "$1" --out "artifacts/$1" > /dev/null 2>&1
  tar czf "$OUT/lineage_$1.tgz" "lineages/$1" "artifacts/$1" 2>/dev/null
  tail -c 3000 "$OUT/evolve_$1.log"
}
case "${1:-evals}" in
  evals)
    avo eval grammar_bitmask kernels/grammar/bitmask_seed.py --device cuda --json "$OUT/grammar_seed.jsonl"
    avo eval grammar_bitmask kernels/peers/bitmask_xgrammar_triton.py --peer --device cuda --json "$OUT/grammar_xgrammar.jsonl"
    for b in cudnn flash; do
      avo eval attention_mha_fwd kernels/peers/attention_sdpa_$b.py --peer --device cuda \
        --workloads gpu_b4_h32_s4096_d128_full,gpu_b4_h32_s4096_d128_causal --json "$OUT/attention_$b.jsonl"
    done
    timeout 240 python3 -m pytest -q -m gpu -o addopts="" -p no:cacheprovider tests/adversarial tests/test_check.py 2>&1 | tail -15 ;;
  evolve)  # the config's `run:` names the lineage (lineages/<run>, artifacts/<run>)
    [ -n "${2:-}" ] || usage
    cfg=$2; [ -f "$cfg" ] || cfg=configs/${2%.yaml}.yaml
    [ -f "$cfg" ] || { echo "no config $2 (configs/: $(ls configs | tr '\n' ' '))" >&2; exit 2; }
    run=$(sed -n 's/^run: *//p' "$cfg" | head -1)
    case $(basename "$cfg" .yaml) in gpu_attention_gluon) m=6 ;; gpu_attention_prefill) m=7 ;; *) m=8 ;; esac
    evolve_part "$run" "$cfg" "${MINUTES:-$m}" ;;
  ray1)  # Ray backend, one evaluator actor on this GPU (carry .whl-ray too); multicast off as the device README asks
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    evolve_part gpu-ray-one-gpu configs/gpu_ray_one_gpu.yaml "${MINUTES:-8}" --backend ray ;;
  agentic) timeout 540 python3 scripts/agentic_scripted_run.py --device cuda --out "$OUT/agentic-lineage" \
             --json "$OUT/agentic.json" 2>&1 | tail -c 4000 ;;
  throughput)  # evaluations per GPU-hour, GPU busy fraction, seconds per phase (issue 22's before/after)
    for t in ${2:-grammar_bitmask attention_mha_fwd}; do
      timeout "${THROUGHPUT_S:-330}" python3 scripts/bench_throughput.py --task "$t" --attempts "${N:-200}" --minutes "${MINUTES:-2}" \
        --transfer ${TRANSFER:-device} --kept-trials ${KEPT:-2} --device cuda 2>&1 | grep -A12 "evaluations/hour" | tee -a "$OUT/throughput.log"
    done ;;
  timing)  # CUDA IPC outputs and CUPTI on this GPU, then the events-vs-CUPTI table (docs/benchmarks.md)
    timeout 120 python3 -m pytest -q -m gpu -o addopts="" -p no:cacheprovider tests/test_channel.py tests/test_timing_method.py 2>&1 | tail -5
    timeout "${TIMING_S:-240}" python3 scripts/bench_timing_methods.py ${2:+--tasks $2} --json "$OUT/timing_methods.json" 2>&1 \
      | tee "$OUT/timing_methods.log" | grep -v "^| ---" | tail -60 ;;
  e2e) python3 scripts/bench_apply_e2e.py --device cuda --json "$OUT/e2e.json" 2>&1 | tail -c 4000 ;;
  apply)
    timeout 150 python3 -m pytest -q -m gpu -o addopts="" -p no:cacheprovider tests/test_apply*.py tests/test_integrations.py 2>&1 | tail -5
    timeout 90 python3 scripts/bench_apply_overhead.py --device cuda --transformers --iters 2000 --repeats 3 2>&1 | tail -14
    timeout 150 python3 scripts/bench_apply_e2e.py --device cuda --json "$OUT/e2e.json" > "$OUT/e2e.log" 2>&1
    grep -E "ms |tokens/s|identical|avo.apply|reasons|mask apply" "$OUT/e2e.log" | head -30
    rm -rf /tmp/avo-bitmask && cp -r kernels/grammar/evolved /tmp/avo-bitmask
    timeout 90 python3 -m avo.apply.measure /tmp/avo-bitmask --task grammar_bitmask --baseline xgrammar 2>&1 | tail -6
    timeout 90 python3 scripts/bench_apply_e2e.py --device cuda --parts xgrammar --artifacts /tmp/avo-bitmask \
      --json "$OUT/e2e_xgrammar.json" 2>&1 | grep -E "mask apply|tokens/s|identical|avo.apply|reasons" ;;
  bench)
    case "${2:-}" in
      problems)  # the user problems of configs/gpu_problems.yaml after `evolve gpu_problems`: seed, best, eager, torch.compile
        python3 scripts/bench_problem.py gpu-problems 2>&1 | tail -40 ;;
      "")
        python3 scripts/bench_attention.py 2>&1 | tail -40
        python3 scripts/bench_memory_bound.py 2>&1 | tail -40 ;;
      attention)  # the evolved attention kernels (MHA/decode from lineages/gpu-mha-decode if it ran here) vs seeds and SDPA
        K=()
        for t in mha_fwd gqa_fwd gqa_decode; do  # a lineage run here first, else the exported winners
          f=$(ls artifacts/gpu-mha-decode/attention_$t/best-*/sources/kernel.py 2>/dev/null | head -1)
          K+=(--kernel "attention_$t=${f:-kernels/attention/evolved/${t}_h100/sources/kernel.py}")
        done
        timeout "${BENCH_S:-300}" python3 scripts/bench_attention.py --repeats 3 "${K[@]}" 2>&1 | tee "$OUT/bench_attention.log" | tail -45 ;;
      memory)  # bitmask and layout (device column) with the exported layout winner
        timeout "${BENCH_S:-540}" python3 scripts/bench_memory_bound.py --tasks grammar_bitmask layout_transpose2d layout_bshd_to_bhsd \
          layout_bshd_to_bhds layout_kv_paged --kernel layout_transpose2d=kernels/layout/evolved/transpose2d_h100/sources/kernel.py 2>&1 \
          | tee "$OUT/bench_memory.log" | tail -70 ;;
      grammar)  # grammar_bitmask alone: the gpu-grammar lineage's winner if it ran here, else the seed, vs xgrammar
        f=$(ls artifacts/gpu-grammar/grammar_bitmask/best-*/sources/kernel.py 2>/dev/null | head -1)
        timeout "${BENCH_S:-200}" python3 scripts/bench_memory_bound.py --tasks grammar_bitmask \
          ${f:+--kernel grammar_bitmask=$f} 2>&1 | tee "$OUT/bench_grammar.log" | tail -25 ;;
      megakernel)
        timeout "${BENCH_S:-400}" python3 scripts/bench_memory_bound.py --tasks megakernel_decode_layer \
          --kernel megakernel_decode_layer=kernels/megakernel/evolved/decode_layer_h100/sources/kernel.py 2>&1 \
          | tee "$OUT/bench_megakernel.log" | tail -45 ;;
      *) usage ;;
    esac
    cp docs/benchmarks.md "$OUT/" ;;
  fa4-stage)  # call 1 of the FlashAttention-4 peer (FA4=1 prepare_device_wheels.sh; carry .whl-fa4a): half its compiler to /tmp
    mkdir -p /tmp/fa4 && cp .whl-fa4a/cu13.part00 /tmp/fa4/ && ls -la /tmp/fa4 ;;
  fa4)  # call 2, on the same warm machine (carry .whl-fa4b): install FA4, then it next to the island's kernel and SDPA
    [ -f /tmp/fa4/cu13.part00 ] || { echo "no /tmp/fa4/cu13.part00: run fa4-stage on this machine first" >&2; exit 2; }
    mkdir -p /tmp/fa4site && cat /tmp/fa4/cu13.part00 .whl-fa4b/cu13.part01 | tar xJ -C /tmp/fa4site
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fa4site .whl-fa4b/*.whl >/dev/null 2>&1
    export PYTHONPATH=$PYTHONPATH:/tmp/fa4site
    K=${KERNEL:-kernels/attention/evolved/mha_fwd_h100/sources/kernel.py}  # or an island's best kernel.py
    timeout "${BENCH_S:-420}" python3 scripts/bench_attention.py --tasks attention_mha_fwd --repeats 3 --no-doc \
      --workloads "${WL:-gpu_b4_h32_s4096_d128_full,gpu_b4_h32_s4096_d128_causal,gpu_b16_h16_s1024_d128_causal,gpu_b2_h32_s8192_d128_causal}" \
      --kernel "attention_mha_fwd=$K" --peer attention_mha_fwd=kernels/peers/attention_fa4.py 2>&1 | tee "$OUT/bench_fa4.log" | tail -30
    avo eval attention_mha_fwd kernels/peers/attention_fa4.py --peer --device cuda \
      --workloads gpu_b4_h32_s4096_d128_full,gpu_b4_h32_s4096_d128_causal --json "$OUT/attention_fa4.jsonl" 2>&1 | tail -12 ;;
  sweep)  # a knob grid of scripts/sweeps/ (design-space map); the table rows go to $OUT/sweep_<grid>.log
    [ -n "${2:-}" ] || { echo "grids: $(ls scripts/sweeps | sed 's/\.json$//' | tr '\n' ' ')" >&2; usage; }
    g=$(basename "${2%.json}")
    timeout "${SWEEP_S:-540}" python3 scripts/sweep_knobs.py --grid "$2" ${WL:+--workloads "$WL"} 2>&1 \
      | grep -v "^| ---\|^| task" | tee "$OUT/sweep_$g.log" | tail -n 40 ;;
  ncu)  # Nsight Compute per launch of the exported decode layer at B1·KV4000: DRAM throughput, occupancy, stalls
    K=kernels/megakernel/evolved/decode_layer_h100/sources/kernel.py
    timeout "${NCU_S:-400}" ncu --target-processes all --kernel-name regex:"_(gemv|rmsnorm|rope_attn|attn_combine)_kernel" --launch-skip "${SKIP:-8}" --launch-count "${COUNT:-8}" \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
      python3 scripts/call_kernel.py megakernel_decode_layer $K "${WL:-gpu_b1_kv4000_bfloat16}" --calls 2 > "$OUT/ncu_megakernel.txt" 2>&1
    grep -E "^  [a-z_]+kernel|DRAM Throughput|Memory Throughput|Duration|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|Warp Cycles Per Issued|matches|MISMATCH" "$OUT/ncu_megakernel.txt" | head -120 ;;
  *) usage ;;
esac
