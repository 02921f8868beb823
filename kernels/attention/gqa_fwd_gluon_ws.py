"""attention_gqa_fwd in Gluon for Hopper (sm_90): FA3-style warp specialisation with ping-pong.

Successor experiment to gqa_fwd_gluon.py (same host contract, same 4-D TMA descriptors, same online
softmax). That kernel runs its two warpgroups in lockstep (the compiler puts CTA barriers in every
step), so while both do their softmax the tensor cores only have the one P.V each issued before it.
Here the warpgroups are separate partitions of `gl.warp_specialize` and take turns on the tensor
cores (FA3's inter-warpgroup "ping-pong"), so one's softmax runs under the other's GEMMs.

Partitions (one CTA = 2 * BLOCK_M query rows of one (batch, query head); 12 warps launched):
- consumer 0 = the default partition (num_warps = 4, one warpgroup): query rows [r, r + BLOCK_M).
- consumer 1 = worker partition 0 (4 warps, one warpgroup): rows [r + BLOCK_M, r + 2 * BLOCK_M).
- producer   = worker partition 1 (1 warp, 24 registers): every TMA load (both Q tiles, the K/V ring).
  The warps are padded to 3 warpgroups; setmaxnreg gives each consumer CONSUMER_REGS registers per
  thread and the producer 24 (maxnreg = (2 * CONSUMER_REGS + 24) / 3 at launch, 168 for 240).
Each consumer owns its own Q tile (shared memory), S, P and O (registers); K and V are shared.

Shared memory and mbarriers (all count 1 except the *_empty ones):
- q_smem[2] (one tile per consumer), o_smem[2] when it fits (else O goes out through Q's buffer),
  k_smem[NUM_STAGES], v_smem[NUM_STAGES].
- q_ready[c] / q_empty[c]: producer -> consumer c / consumer c -> producer, one phase per tile.
- k_ready[s], v_ready[s]: TMA transaction barriers (producer's expect + the copy's bytes).
- k_empty[s], v_empty[s]: count 2, one arrive per consumer once its wgmma reading the slot is done;
  the producer refills a slot only when both consumers released it.
- turn[c]: consumer c may issue wgmmas when its turn barrier completes; after issuing it arrives on
  turn[1 - c]. turn[0] starts "complete" (wait parity 1 on a fresh barrier), so consumer 0 goes
  first. Both consumers take exactly n_blocks + 1 turns per tile (S_0; S_j with P_{j-1}.V_{j-1} for
  1 <= j < n; the last P.V), because the number of KV blocks is the CTA's (causal: up to the CTA's
  last row), not each consumer's, so the alternation never strands one of them.
Ring positions count KV blocks over all tiles a CTA processes (PERSISTENT), so the phase of ring
position p is (p // NUM_STAGES) & 1 on every barrier, for producer and consumers alike.

Consumer step j (1 <= j < n), as gqa_fwd_gluon.py's loop, the CTA barrier and the TMA issue replaced
by per-slot releases and the turn:
    wait(0)         -> P_{j-2}.V_{j-2} done: release V slot of block j-2; O *= alpha_{j-1}
    wait K_j ready, V_{j-1} ready; wait turn
    issue S_j = Q.K_j^T (async) and O += P_{j-1}.V_{j-1} (async, P from registers); arrive other's turn
    wait(1)         -> S_j ready: release K slot of block j
    softmax(S_j)    -> P_j, alpha_j (ex2 under this warpgroup's P.V and under the other's GEMMs);
                       P_j -> 16-bit wgmma operand in registers of its own (P_{j-1}'s are still being
                       read by the P.V in flight), so 32 registers cross the back edge, not 64 fp32
The P.V wait sits at the top of the next step: ptxas hoists a wgmma wait to the top of its basic
block (found writing gqa_fwd_gluon.py), and the loop's back edge keeps the softmax ahead of it.
The epilogue waits the last P.V, normalises, stores O through shared memory and a TMA store.

EXIT_WORKER (a ptxas trap found writing this): triton 3.6 lowers worker partitions into a dispatch
loop (worker warps wait at a barrier, read their partition id, run it, go back to the loop header,
whose setmaxnreg is lower). With a wgmma inside such a loop ptxas (12.8) reports "C7512 wgmma.mma_async
instructions are serialized due to insufficient register resources" and puts a wait after every
HGMMA, whatever the register budget (also at BLOCK_N 64, also with both consumers as workers); the
default partition alone is fine. A worker whose code ends in `exit` has no back edge, and ptxas then
pipelines it. So consumer 1 ends with inline PTX `setmaxnreg.dec 24; exit;` after its last TMA store
has completed: barrier.sync waits only for non-exited warps (PTX ISA), so the join with the default
partition still completes, and the dec to 24 leaves the pool room for the default partition's
setmaxnreg.inc to 256 after the join whether or not an exited warp's registers are returned.
EXIT_WORKER=False keeps the plain lowering (serialised wgmma) as a fallback.

Measured (H100 SXM, session 8, docs/data/benchmark-sessions.md): correct on its first GPU run (S = 1, 77, 1000
and every task workload); with PERSISTENT, 0.95-1.03x cuDNN and 1.73-1.97x FlashAttention-2 in
device time on all eleven attention_gqa_fwd workloads (544 / 533 TFLOP/s do_bench at B4 Hq32 Hkv8
S4096, non-causal / causal); 0.80-1.02x with one tile per CTA. As MHA (Hkv = Hq) with tiles
heads-fastest it was 0.56-0.90x cuDNN: the CTAs in flight each stream their own KV head, 32 query
blocks x 128 heads x 2 MB of K/V = 8.4 GB from DRAM at B4 S4096 (~2.8 ms at 3 TB/s; 2.9 ms measured).
Session 9: query blocks fastest (HEAD_MAJOR; MHA_HEAD_MAJOR turns it on whenever Hkv = Hq) gives
0.99 / 0.92 / 0.99x cuDNN at MHA B4 H32 S4096 non-causal / causal and B16 H16 S1024 (device time).
On GQA the heads-fastest order stays best at S1024 causal (query-major leaves some CTAs only long
causal blocks: 0.75x; HEAD_GROUP_WAVES 2 0.83x), so HEAD_MAJOR is off by default.

SASS (triton 3.6 + its ptxas, sm_90a, CONFIG, D128 bf16), steady-state step of either consumer:
    DEPBAR0 BAR ARRIVE(v_empty) TRYWAIT(K) TRYWAIT(V) TRYWAIT(turn) HGMMA x16 BAR ARRIVE(turn)
    DEPBAR1 BAR ARRIVE(k_empty) MUFU.EX2 x66
consumer 0 (warps 0-3, named barrier 0) and consumer 1 (warps 4-7, named barrier 2) each have this
loop; the producer (one warp of warps 8-11) only TRYWAIT/EXPECT/UTMALDG. Registers: consumers <= 238
of 240 (32 bytes of spill in the per-tile prologue when non-causal, none in the loop), producer
<= 16 of 24; shared memory 197016 bytes (BLOCK_N 128, 2 stages, O separate), 229816 at 3 stages.

PERSISTENT: grid = min(#SMs, tiles); each CTA walks tiles pid, pid + grid, ... (causal: the longest
query blocks first). The producer keeps filling the K/V ring across tiles and loads the next tile's
Q as soon as the consumer has released its Q buffer (after its last Q.K^T when O has its own buffer),
so the next tile's loads overlap this tile's last P.V and epilogue. Without it, grid = all tiles.

Supported: D in {64, 128}, bf16 or fp16, last dim contiguous, 16-byte-aligned strides and base.
Gluon is not run by the CPU interpreter: check on the GPU (`avo eval attention_gqa_fwd FILE --device cuda`). Written
against triton 3.6 (the GPU machine's); compiles with 3.9 too (TMA/barrier names looked up).
"""
import math

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_init,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

# Current choice of every knob; the heuristic operator rewrites this line.
CONFIG = dict(BLOCK_M=64, BLOCK_N=128, NUM_STAGES=2, PERSISTENT=True, CONSUMER_REGS=240, EXIT_WORKER=True, HEAD_MAJOR=False, HEAD_GROUP_WAVES=0, MHA_HEAD_MAJOR=True)
# Allowed values per knob: the search space the heuristic operator explores.
TUNABLES = dict(
    BLOCK_M=[64],  # query rows per consumer warpgroup (a CTA covers 2 * BLOCK_M)
    BLOCK_N=[128, 64],  # keys per KV block
    NUM_STAGES=[2, 3],  # depth of the K/V ring (3 at BLOCK_N 128: 229816 B, O reuses Q's buffer)
    PERSISTENT=[False, True],  # grid of #SMs CTAs looping over tiles (H100: 0.95-1.03x cuDNN on GQA vs 0.80-1.02x without)
    CONSUMER_REGS=[240],  # setmaxnreg of each consumer warpgroup (the producer gets 24); 232 spills 128 B
    EXIT_WORKER=[True, False],  # consumer 1 exits at its end (else ptxas serialises every wgmma: docstring)
    HEAD_MAJOR=[False, True],  # tile order: query blocks fastest (K/V of a few heads shared in L2; for MHA), not heads
    HEAD_GROUP_WAVES=[0, 1, 2, 3, 4],  # HEAD_MAJOR: heads per group = about this many grids of tiles (0: one head)
    MHA_HEAD_MAJOR=[True, False],  # HEAD_MAJOR whenever Hkv = Hq (H100: MHA 0.55-0.63x cuDNN heads-fastest, 0.92-0.99x with it)
)

LOG2E = 1.4426950408889634
SMEM_LIMIT = 232448  # H100: 227 KB per block
PRODUCER_REGS = 24

_tma_load = tma.async_load if hasattr(tma, "async_load") else tma.async_copy_global_to_shared
_tma_store = tma.async_store if hasattr(tma, "async_store") else tma.async_copy_shared_to_global
_sync_warps = gl.thread_barrier if hasattr(gl, "thread_barrier") else gl.barrier  # partition-wide inside a partition


def _knob(name):
    return CONFIG.get(name, TUNABLES[name][0])


@gluon.jit
def _online_softmax(s, m_i, l_i, qk_scale, start_n, q_row, seq, mask_from,
                    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr,
                    s_layout: gl.constexpr):
    """One KV block of the online softmax on raw scores s [BLOCK_M, BLOCK_N] (fp32, wgmma layout)."""
    if start_n + BLOCK_N > mask_from:  # only the tail block and (causal) the diagonal blocks
        cols = start_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        valid = gl.expand_dims(cols < seq, 0)
        if CAUSAL:
            rows = q_row + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, s_layout))
            valid = valid & (gl.expand_dims(cols, 0) <= gl.expand_dims(rows, 1))
        s = gl.where(valid, s, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
    p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
    alpha = gl.exp2(m_i - m_new)
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return p, alpha, m_new, l_i


@gluon.jit
def _tile_coords(t, n_m, n_tiles, head_group, CAUSAL: gl.constexpr):
    """Tile t -> (query block pair mt, batch*head bh): the heads come in groups of head_group, and
    within a group bh runs fastest. head_group = all heads: the CTAs in flight hold the same query
    block of many heads (causal: every head's longest blocks first, so all CTAs walk from long to
    short together). head_group = 1: mt fastest, the CTAs hold a few heads and share their K/V in
    L2 (with one KV head per query head, MHA, the first order streams every head's K/V from DRAM),
    but a causal grid whose size is near a multiple of n_m gives some CTAs only long blocks. The
    host picks groups of a few waves' worth of heads for both (HEAD_MAJOR, HEAD_GROUP_WAVES)."""
    n_bh = n_tiles // n_m
    g = t // (head_group * n_m)
    hg = head_group
    if (g + 1) * head_group > n_bh:  # the last group may be short
        hg = n_bh - g * head_group
    r = t - g * head_group * n_m
    mt = r // hg
    bh = g * head_group + r % hg
    if CAUSAL:  # the longest query blocks first
        mt = n_m - 1 - mt
    return mt, bh


@gluon.jit
def _producer(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem,
              q_ready, q_empty, k_ready, k_empty, v_ready, v_empty,
              seq, heads, group, n_m, n_tiles,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr,
              head_group):
    q_bytes: gl.constexpr = q_desc.block_type.nbytes
    kv_bytes: gl.constexpr = k_desc.block_type.nbytes
    pos = 0  # ring position of the next KV block (over all tiles of this CTA)
    it = 0  # tiles done by this CTA
    for t in range(gl.program_id(0), n_tiles, gl.num_programs(0)):
        mt, bh = _tile_coords(t, n_m, n_tiles, head_group, CAUSAL)
        b = bh // heads
        h = bh % heads
        hk = h // group
        row0 = mt * (2 * BLOCK_M)
        hi = seq
        if CAUSAL:
            hi = gl.minimum(seq, row0 + 2 * BLOCK_M)
        n_blocks = gl.cdiv(hi, BLOCK_N)
        for i in range(n_blocks):
            slot = pos % NUM_STAGES
            ph = (pos // NUM_STAGES) & 1
            mbarrier.wait(k_empty.index(slot), ph ^ 1)  # both consumers are done with block pos - NS
            mbarrier.expect(k_ready.index(slot), kv_bytes)
            _tma_load(k_desc, [b, hk, i * BLOCK_N, 0], k_ready.index(slot), k_smem.index(slot))
            if i == 0:  # Q after K_0: K/V of this tile need not wait for the last tile's epilogue
                for c in gl.static_range(2):
                    mbarrier.wait(q_empty.index(c), (it & 1) ^ 1)
                    mbarrier.expect(q_ready.index(c), q_bytes)
                    _tma_load(q_desc, [b, h, row0 + c * BLOCK_M, 0], q_ready.index(c), q_smem.index(c))
            mbarrier.wait(v_empty.index(slot), ph ^ 1)
            mbarrier.expect(v_ready.index(slot), kv_bytes)
            _tma_load(v_desc, [b, hk, i * BLOCK_N, 0], v_ready.index(slot), v_smem.index(slot))
            pos += 1
        it += 1


@gluon.jit
def _consumer(CID: gl.constexpr, o_desc, q_smem, o_smem, k_smem, v_smem,
              q_ready, q_empty, k_ready, k_empty, v_ready, v_empty, turn,
              seq, heads, n_m, n_tiles, qk_scale,
              DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr,
              CAUSAL: gl.constexpr, O_SEP: gl.constexpr, head_group):
    dtype: gl.constexpr = o_desc.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    srow_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    orow_layout: gl.constexpr = gl.SliceLayout(1, o_layout)
    # turn parity: consumer 0's first wait passes on the fresh barrier (parity 1), consumer 1's
    # first wait needs consumer 0's first arrive (parity 0).
    TURN_FLIP: gl.constexpr = 1 if CID == 0 else 0
    my_turn = turn.index(CID)
    other_turn = turn.index(1 - CID)

    q_view = q_smem.index(CID).reshape([BLOCK_M, DIM])
    if O_SEP:
        o_buf = o_smem.index(CID)
    else:
        o_buf = q_smem.index(CID)
    o_view = o_buf.reshape([BLOCK_M, DIM])
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)  # ignored (use_acc=False)

    pos = 0  # ring position of block 0 of the current tile
    tn = 0  # turns taken so far
    it = 0
    for t in range(gl.program_id(0), n_tiles, gl.num_programs(0)):
        mt, bh = _tile_coords(t, n_m, n_tiles, head_group, CAUSAL)
        b = bh // heads
        h = bh % heads
        row0 = mt * (2 * BLOCK_M)
        q_row = row0 + CID * BLOCK_M
        hi = seq
        mask_from = seq
        if CAUSAL:
            hi = gl.minimum(seq, row0 + 2 * BLOCK_M)
            mask_from = gl.minimum(seq, q_row)
        n_blocks = gl.cdiv(hi, BLOCK_N)

        m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, srow_layout)
        l_i = gl.zeros([BLOCK_M], gl.float32, srow_layout)
        acc = gl.zeros([BLOCK_M, DIM], gl.float32, o_layout)

        # Block 0: S_0 = Q K_0^T (one turn), softmax -> P_0.
        slot = pos % NUM_STAGES
        mbarrier.wait(q_ready.index(CID), it & 1)
        mbarrier.wait(k_ready.index(slot), (pos // NUM_STAGES) & 1)
        mbarrier.wait(my_turn, (tn & 1) ^ TURN_FLIP)
        s_tok = warpgroup_mma(q_view, k_smem.index(slot).reshape([BLOCK_N, DIM]).permute((1, 0)), s_zero,
                              use_acc=False, is_async=True)
        mbarrier.arrive(other_turn, count=1)
        tn += 1
        s = warpgroup_mma_wait(0, deps=[s_tok])
        mbarrier.arrive(k_empty.index(slot), count=1)
        p, alpha, m_i, l_i = _online_softmax(s, m_i, l_i, qk_scale, 0, q_row, seq, mask_from,
                                             BLOCK_M, BLOCK_N, CAUSAL, s_layout)
        acc_tok = warpgroup_mma_init(acc)  # "no P.V in flight" for the first wait below
        p_next = gl.convert_layout(p.to(dtype), p_layout)  # P_0 as the P.V operand (16-bit, 32 regs)
        p_op = p_next  # placeholder dependency of that first wait

        for j in range(1, n_blocks):
            # P_{j-2}.V_{j-2} done (nothing in flight at j == 1): V slot of block j-2 is free.
            acc, p_op = warpgroup_mma_wait(0, deps=[acc_tok, p_op])
            mbarrier.arrive(v_empty.index((pos + j + NUM_STAGES - 2) % NUM_STAGES), count=1, pred=j >= 2)
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, orow_layout), 1)
            p_op = p_next

            kpos = pos + j
            vpos = kpos - 1
            kslot = kpos % NUM_STAGES
            vslot = vpos % NUM_STAGES
            mbarrier.wait(k_ready.index(kslot), (kpos // NUM_STAGES) & 1)
            mbarrier.wait(v_ready.index(vslot), (vpos // NUM_STAGES) & 1)
            mbarrier.wait(my_turn, (tn & 1) ^ TURN_FLIP)
            s_tok = warpgroup_mma(q_view, k_smem.index(kslot).reshape([BLOCK_N, DIM]).permute((1, 0)), s_zero,
                                  use_acc=False, is_async=True)
            acc_tok = warpgroup_mma(p_op, v_smem.index(vslot).reshape([BLOCK_N, DIM]), acc, is_async=True)
            mbarrier.arrive(other_turn, count=1)
            tn += 1
            s = warpgroup_mma_wait(1, deps=[s_tok])  # S_j ready, P_{j-1}.V_{j-1} still in flight
            mbarrier.arrive(k_empty.index(kslot), count=1)
            p, alpha, m_i, l_i = _online_softmax(s, m_i, l_i, qk_scale, j * BLOCK_N, q_row, seq, mask_from,
                                                 BLOCK_M, BLOCK_N, CAUSAL, s_layout)
            # P_j to 16 bits now, into registers of its own (P_{j-1}'s are still read by the P.V in
            # flight): 32 registers cross the back edge instead of 64 fp32 ones.
            p_next = gl.convert_layout(p.to(dtype), p_layout)

        # Every Q.K^T of this tile is done: with its own O buffer, Q's buffer goes back to the producer now.
        if O_SEP:
            mbarrier.arrive(q_empty.index(CID), count=1)

        # Epilogue: O = alpha * O + P_{n-1} V_{n-1} (one more turn), normalise, TMA store.
        acc, p_op = warpgroup_mma_wait(0, deps=[acc_tok, p_op])
        mbarrier.arrive(v_empty.index((pos + n_blocks + NUM_STAGES - 2) % NUM_STAGES), count=1, pred=n_blocks >= 2)
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, orow_layout), 1)
        p_op = p_next
        lpos = pos + n_blocks - 1
        lslot = lpos % NUM_STAGES
        mbarrier.wait(v_ready.index(lslot), (lpos // NUM_STAGES) & 1)
        mbarrier.wait(my_turn, (tn & 1) ^ TURN_FLIP)
        acc_tok = warpgroup_mma(p_op, v_smem.index(lslot).reshape([BLOCK_N, DIM]), acc, is_async=True)
        mbarrier.arrive(other_turn, count=1)
        tn += 1
        acc, p_op = warpgroup_mma_wait(0, deps=[acc_tok, p_op])
        mbarrier.arrive(v_empty.index(lslot), count=1)
        acc = acc / gl.expand_dims(gl.convert_layout(l_i, orow_layout), 1)

        tma.store_wait(0)  # the previous tile's O store has read o_buf (a no-op on the first tile)
        _sync_warps()
        o_view.store(acc.to(dtype))
        fence_async_shared()
        _sync_warps()
        _tma_store(o_desc, [b, h, q_row, 0], o_buf)
        if not O_SEP:  # O went out through Q's buffer: free it once the store has read it
            tma.store_wait(0)
            _sync_warps()
            mbarrier.arrive(q_empty.index(CID), count=1)
        pos += n_blocks
        it += 1
    tma.store_wait(0)


@gluon.jit
def _consumer1(o_desc, q_smem, o_smem, k_smem, v_smem, q_ready, q_empty, k_ready, k_empty, v_ready, v_empty, turn,
               seq, heads, n_m, n_tiles, qk_scale,
               DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr,
               CAUSAL: gl.constexpr, O_SEP: gl.constexpr, head_group, EXIT_WORKER: gl.constexpr):
    _consumer(1, o_desc, q_smem, o_smem, k_smem, v_smem, q_ready, q_empty, k_ready, k_empty, v_ready, v_empty,
              turn, seq, heads, n_m, n_tiles, qk_scale, DIM, BLOCK_M, BLOCK_N, NUM_STAGES, CAUSAL, O_SEP, head_group)
    if EXIT_WORKER:
        _exit_warpgroup(seq)


@gluon.jit
def _exit_warpgroup(x):
    """Give registers back and exit this worker warpgroup (see EXIT_WORKER in the module docstring)."""
    gl.inline_asm_elementwise("setmaxnreg.dec.sync.aligned.u32 24;\n\texit;\n\tmov.u32 $0, $1;", "=r,r", [x],
                              dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _consumer0(o_desc, q_smem, o_smem, k_smem, v_smem, q_ready, q_empty, k_ready, k_empty, v_ready, v_empty, turn,
               seq, heads, n_m, n_tiles, qk_scale,
               DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr,
               CAUSAL: gl.constexpr, O_SEP: gl.constexpr, head_group):
    _consumer(0, o_desc, q_smem, o_smem, k_smem, v_smem, q_ready, q_empty, k_ready, k_empty, v_ready, v_empty,
              turn, seq, heads, n_m, n_tiles, qk_scale, DIM, BLOCK_M, BLOCK_N, NUM_STAGES, CAUSAL, O_SEP, head_group)


@gluon.jit
def _gqa_fwd_ws_kernel(q_desc, k_desc, v_desc, o_desc, seq, heads, group, n_m, n_tiles, qk_scale,
                       DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                       NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr, O_SEP: gl.constexpr,
                       CONSUMER_REGS: gl.constexpr, EXIT_WORKER: gl.constexpr, head_group):
    dtype: gl.constexpr = q_desc.dtype
    q_smem = gl.allocate_shared_memory(dtype, [2, 1, 1, BLOCK_M, DIM], q_desc.layout)
    if O_SEP:
        o_smem = gl.allocate_shared_memory(dtype, [2, 1, 1, BLOCK_M, DIM], o_desc.layout)
    else:
        o_smem = q_smem
    k_smem = gl.allocate_shared_memory(dtype, [NUM_STAGES, 1, 1, BLOCK_N, DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [NUM_STAGES, 1, 1, BLOCK_N, DIM], v_desc.layout)
    q_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    for c in gl.static_range(2):
        mbarrier.init(q_ready.index(c), count=1)
        mbarrier.init(q_empty.index(c), count=1)
        mbarrier.init(turn.index(c), count=1)
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=2)  # one arrive per consumer
        mbarrier.init(v_empty.index(i), count=2)
    fence_async_shared()

    # The argument tuples are written inline: a tuple assigned to a name first would turn its
    # constexpr ints into i32 tensors (the partitions need DIM, BLOCK_* etc. as constexprs).
    gl.warp_specialize([
        (_consumer0, (o_desc, q_smem, o_smem, k_smem, v_smem, q_ready, q_empty, k_ready, k_empty, v_ready, v_empty,
                      turn, seq, heads, n_m, n_tiles, qk_scale, DIM, BLOCK_M, BLOCK_N, NUM_STAGES, CAUSAL, O_SEP,
                      head_group)),
        (_consumer1, (o_desc, q_smem, o_smem, k_smem, v_smem, q_ready, q_empty, k_ready, k_empty, v_ready, v_empty,
                      turn, seq, heads, n_m, n_tiles, qk_scale, DIM, BLOCK_M, BLOCK_N, NUM_STAGES, CAUSAL, O_SEP,
                      head_group, EXIT_WORKER)),
        (_producer, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_ready, q_empty, k_ready, k_empty, v_ready,
                     v_empty, seq, heads, group, n_m, n_tiles, BLOCK_M, BLOCK_N, NUM_STAGES, CAUSAL, head_group)),
    ], [4, 1], [CONSUMER_REGS, 24])


_GL_DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}


def _descriptor(t: torch.Tensor, block_rows: int, gl_dtype):
    """4-D TMA descriptor over t [B, H, S, D] with block [1, 1, block_rows, D] (as gqa_fwd_gluon.py)."""
    isz = t.element_size()
    shape = list(t.shape)
    strides = list(t.stride())
    for i in (2, 1, 0):
        if shape[i] == 1:
            strides[i] = strides[i + 1] * shape[i + 1]
    if strides[3] != 1:
        raise ValueError("the head dim must be contiguous (stride 1)")
    if t.storage_offset() * isz % 16 or any(s * isz % 16 for s in strides[:3]):
        raise ValueError(f"TMA needs a 16-byte aligned base and 16-byte multiple strides, got strides {t.stride()}")
    block = [1, 1, block_rows, shape[3]]
    layout = gl.NVMMASharedLayout.get_default_for(block, gl_dtype)
    return TensorDescriptor(t, shape, strides, block, layout)


def _o_separate(block_m, block_n, stages, dim, isz):
    """O gets its own shared buffers when Q + O + the K/V ring fit (else it reuses Q's)."""
    q = 2 * block_m * dim * isz
    kv = 2 * stages * block_n * dim * isz
    return 2 * q + kv + 1024 <= SMEM_LIMIT


def _launch_params(dim, isz):
    block_m, block_n, stages = _knob("BLOCK_M"), _knob("BLOCK_N"), _knob("NUM_STAGES")
    regs = _knob("CONSUMER_REGS")
    maxnreg = (2 * regs + PRODUCER_REGS) // 3  # 3 warpgroups share the register file evenly at launch
    return dict(DIM=dim, BLOCK_M=block_m, BLOCK_N=block_n, NUM_STAGES=stages,
                O_SEP=_o_separate(block_m, block_n, stages, dim, isz), CONSUMER_REGS=regs,
                EXIT_WORKER=bool(_knob("EXIT_WORKER"))), maxnreg


def _head_group(n_bh, n_m, grid, mha=False):
    """Heads per tile group (_tile_coords): all of them (heads fastest), or with HEAD_MAJOR (and by
    default for MHA, MHA_HEAD_MAJOR) one head (query blocks fastest), or about HEAD_GROUP_WAVES
    grids' worth of tiles per group, so each CTA's walk still covers long and short causal blocks
    while the K/V in flight stays a few heads."""
    if not (_knob("HEAD_MAJOR") or (mha and _knob("MHA_HEAD_MAJOR"))):
        return n_bh
    waves = _knob("HEAD_GROUP_WAVES")
    return max(1, min(n_bh, round(waves * grid / n_m))) if waves else 1


_NUM_SMS = {}


def _num_sms(device):
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _NUM_SMS:
        _NUM_SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _NUM_SMS[idx]


def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, o: torch.Tensor) -> None:
    batch, heads, seq, dim = q.shape
    kv_heads = k.shape[1]
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"q_heads {heads} is not a multiple of kv_heads {kv_heads}")
    if dim not in (64, 128):
        raise ValueError(f"head dim {dim} not supported by the Gluon kernel (64 or 128)")
    if q.dtype not in _GL_DTYPES or not (q.dtype == k.dtype == v.dtype == o.dtype):
        raise ValueError(f"dtypes must all be bf16 or all fp16, got {q.dtype}, {k.dtype}, {v.dtype}, {o.dtype}")
    if k.shape != v.shape or k.shape[0] != batch or k.shape[2] != seq or k.shape[3] != dim or o.shape != q.shape:
        raise ValueError(f"shape mismatch: q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)} o {tuple(o.shape)}")
    if seq == 0 or batch == 0:
        return
    consts, maxnreg = _launch_params(dim, q.element_size())
    block_m, block_n = consts["BLOCK_M"], consts["BLOCK_N"]
    if block_m != 64:
        raise ValueError(f"BLOCK_M {block_m}: each consumer warpgroup owns 64 rows")
    gdt = _GL_DTYPES[q.dtype]
    q_desc = _descriptor(q, block_m, gdt)
    k_desc = _descriptor(k, block_n, gdt)
    v_desc = _descriptor(v, block_n, gdt)
    o_desc = _descriptor(o, block_m, gdt)
    qk_scale = LOG2E / math.sqrt(dim)
    n_m = triton.cdiv(seq, 2 * block_m)
    n_tiles = n_m * batch * heads
    grid = (min(n_tiles, _num_sms(q.device)) if _knob("PERSISTENT") else n_tiles,)
    _gqa_fwd_ws_kernel[grid](q_desc, k_desc, v_desc, o_desc, seq, heads, heads // kv_heads, n_m, n_tiles, qk_scale,
                             head_group=_head_group(batch * heads, n_m, grid[0], mha=kv_heads == heads),
                             CAUSAL=bool(causal), num_warps=4, maxnreg=maxnreg, **consts)
