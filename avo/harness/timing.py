"""Timing inside the worker: L2 flush before each call, then its device time, several functions
interleaved call by call (candidate/baseline, or best/candidate for the gate) so that drift and
clock changes hit all of them alike; median and IQR. Clocks are read, never set. Device time:
CUDA events around the call on the current stream, or CUPTI activity records (`method="cupti"`):
every kernel, copy and memset launched inside the call's host window, on any stream or thread."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

import torch

# Bound at import, before any candidate runs, so a candidate cannot swap the clock under us.
_perf_counter = time.perf_counter
_Event = torch.cuda.Event
_synchronize = torch.cuda.synchronize
try:  # cupti-python (the `cupti` extra); its functions bound here for the same reason
    from cupti import cupti as _cupti
    _CUPTI = {n: getattr(_cupti, n) for n in ("get_timestamp", "activity_enable", "activity_disable",
                                              "activity_register_callbacks", "activity_flush_all", "finalize")}
    _CUPTI_ERROR = None
except Exception as _e:  # not installed, or its CUDA libraries are missing
    _cupti, _CUPTI, _CUPTI_ERROR = None, {}, f"cupti-python is not importable ({type(_e).__name__}: {_e})"


class TimingHack(RuntimeError):
    """Something the candidate did to the GPU that makes its timing unfair, found by the timing
    loop itself; the worker reports it as REWARD_HACK with `check`."""

    def __init__(self, check: str, detail: str):
        super().__init__(detail)
        self.check = check


class PersistingL2:
    """The persisting part of the L2 (Ampere+): lines a kernel marks persisting (a stream's or a
    launch's access-policy window, cudaAccessPropertyPersisting; PTX evict_last) live in a set-aside
    of the L2 that normal accesses, the flush's among them, cannot evict: inputs kept hot across the
    flush. Without a set-aside (cudaDeviceSetLimit(cudaLimitPersistingL2CacheSize)) persisting
    accesses are treated as normal ones. The driver's default is not always 0 (an H100 context
    starts with 9,830,400 bytes; read as 0 before a context exists), so `base` is read once the
    worker's context exists and `finding` refuses a set-aside raised above it (and a window left on the timed stream) and `reset` turns
    persisting lines back to normal before each flush. Read through the CUDA driver (libcuda, the
    one library every CUDA machine has), bound before any candidate runs; where it cannot be
    loaded, `why` says so and the checks are off."""
    LIMIT_PERSISTING_L2 = 0x06  # CU_LIMIT_PERSISTING_L2_CACHE_SIZE
    STREAM_ATTR_WINDOW = 1  # CU_STREAM_ATTRIBUTE_ACCESS_POLICY_WINDOW

    def __init__(self, lib=None):
        import ctypes
        self._ct = ctypes
        self.why = ""
        try:
            lib = lib or ctypes.CDLL("libcuda.so.1")
            self._get_limit, self._reset = lib.cuCtxGetLimit, lib.cuCtxResetPersistingL2Cache
            self._stream_attr = getattr(lib, "cuStreamGetAttribute", None)
        except (OSError, AttributeError) as e:
            self._get_limit = self._reset = self._stream_attr = None
            self.why = f"the CUDA driver's L2 calls are not available ({e})"
        self.base = self.limit() or 0

    def limit(self) -> Optional[int]:
        """Bytes of L2 set aside for persisting accesses in this context (None: unknown)."""
        if self._get_limit is None:
            return None
        v = self._ct.c_size_t(0)
        return int(v.value) if self._get_limit(self._ct.pointer(v), self.LIMIT_PERSISTING_L2) == 0 else None

    def window_bytes(self, stream: int) -> Optional[int]:
        """num_bytes of the access-policy window on `stream` (a CUstream handle; None: unknown)."""
        if self._stream_attr is None:
            return None
        value = (self._ct.c_ubyte * 64)()  # CUstreamAttrValue: { void* base_ptr; size_t num_bytes; ... }
        if self._stream_attr(self._ct.c_void_p(stream), self.STREAM_ATTR_WINDOW, value) != 0:
            return None  # the legacy default stream has no attributes
        return int.from_bytes(bytes(value[8:16]), "little")

    def finding(self, stream: Optional[int] = None) -> Optional[str]:
        lim = self.limit()
        if lim is not None and lim > self.base:
            return f"the persisting L2 set-aside was raised to {lim} bytes (cudaLimitPersistingL2CacheSize): " \
                   "inputs marked persisting stay in the L2 across the flush"
        win = self.window_bytes(stream) if stream is not None else None
        if win:
            return f"an access-policy window of {win} bytes was left on the timed stream (persisting L2 lines)"
        return None

    def reset(self) -> None:
        if self._reset is not None:
            self._reset()


_PERSISTING: list = []


def persisting_l2() -> PersistingL2:
    """One per process, made at the first use (after CUDA's initialisation, before any candidate:
    the worker arms it)."""
    if not _PERSISTING:
        import torch
        if torch.cuda.is_available():  # the driver reads limits of the current context: make it exist
            torch.cuda.current_device()
            torch.empty(1, device="cuda")
        _PERSISTING.append(PersistingL2())
    return _PERSISTING[0]


class L2Flusher:
    """Writes a buffer of at least twice the L2 size so no call starts with warm inputs; first it
    refuses a raised persisting-L2 set-aside or an access-policy window on the timed stream
    (TimingHack "l2-persist") and turns persisting lines back to normal, so nothing survives it."""

    def __init__(self, device: str):
        self.buf = None
        self.l2 = None
        if device == "cuda":
            l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
            self.buf = torch.empty(max(2 * l2, 64 << 20) // 4, dtype=torch.int32, device="cuda")
            self.l2 = persisting_l2()

    def __call__(self) -> None:
        if self.buf is not None:
            why = self.l2.finding(torch.cuda.current_stream().cuda_stream)
            if why:
                raise TimingHack("l2-persist", why)
            self.l2.reset()
            self.buf.zero_()


# ---- CUPTI: each kernel's device time, on any stream, from any thread ----
def cupti_missing() -> Optional[str]:
    """Why CUPTI timing cannot run here (None: it can)."""
    return _CUPTI_ERROR


def resolve_method(requested: str, device: str) -> tuple[str, str]:
    """(method, note): `wall` in the interpreter; on CUDA `cupti` when asked for and importable
    (`auto`: when importable), else `events`, with why in the note."""
    if device != "cuda":
        return "wall", ""
    if requested == "events":
        return "events", ""
    why = cupti_missing()
    if why is None:
        return "cupti", ""
    return "events", f"CUPTI timing unavailable ({why}); CUDA events used"


def spans_ms(windows: list[tuple[int, int]], launches: list[tuple[int, int]],
             activities: list[tuple[int, int, int]]) -> list[Optional[float]]:
    """Device ms of each timed call from CUPTI records: `windows` are the host timestamps (ns)
    around each call, `launches` (host start ns, correlation id) the API calls that launched GPU
    work (from any thread), `activities` (start ns, end ns, correlation id) the kernels, copies and
    memsets they ran (on any stream). A call's time is the span from the first start to the last end
    of the work launched inside its window; None when it launched none."""
    import bisect
    launches = sorted(launches)
    starts = [t for t, _ in launches]
    by_corr: dict[int, list[tuple[int, int]]] = {}
    for a, b, c in activities:
        by_corr.setdefault(c, []).append((a, b))
    out: list[Optional[float]] = []
    for t0, t1 in windows:
        lo, hi = bisect.bisect_left(starts, t0), bisect.bisect_right(starts, t1)
        work = [x for _, c in launches[lo:hi] for x in by_corr.get(c, [])]
        out.append((max(b for _, b in work) - min(a for a, _ in work)) / 1e6 if work else None)
    return out


class CuptiRecorder:
    """Activity records of kernels, copies and memsets and of the runtime/driver calls that made
    them, between enter and exit (one recorder at a time per process)."""
    KINDS = ("CONCURRENT_KERNEL", "MEMCPY", "MEMSET", "RUNTIME", "DRIVER")

    def __init__(self):
        self.kind = _cupti.ActivityKind
        self.launches: list[tuple[int, int]] = []
        self.activities: list[tuple[int, int, int]] = []

    def now(self) -> int:
        return _CUPTI["get_timestamp"]()

    def _requested(self):
        return 8 << 20, 0  # buffer size, max records (0: as many as fit)

    def _completed(self, activities) -> None:
        k = self.kind
        for a in activities:
            if a.kind in (k.CONCURRENT_KERNEL, k.MEMCPY, k.MEMSET):
                self.activities.append((a.start, a.end, a.correlation_id))
            elif a.kind in (k.RUNTIME, k.DRIVER):
                self.launches.append((a.start, a.correlation_id))

    def __enter__(self) -> "CuptiRecorder":
        for name in self.KINDS:
            _CUPTI["activity_enable"](getattr(self.kind, name))
        _CUPTI["activity_register_callbacks"](self._requested, self._completed)
        return self

    def __exit__(self, *exc) -> None:
        _CUPTI["activity_flush_all"](0)
        for name in self.KINDS:
            _CUPTI["activity_disable"](getattr(self.kind, name))
        _CUPTI["finalize"]()


def time_interleaved(calls: list[Callable[[int], None]], prepare: list[Optional[Callable[[int], None]]],
                     n_sets: int, warmup: int, iters: int, device: str,
                     schedule: Optional[list[int]] = None, method: str = "events") -> list[list[float]]:
    """ms per call for each function; timed call i of each uses argument set schedule[i] (default
    i % n_sets; a random schedule keeps a candidate from knowing which call is the last one on a
    set, whose output is checked). `prepare` (poisoning outputs) runs outside the timed region.
    The order alternates every iteration (_call_order)."""
    flush = L2Flusher(device)
    k = len(calls)
    sched = schedule if schedule is not None else [i % n_sets for i in range(iters)]
    iters = len(sched)
    host_s = [0.0] * k  # host time to enqueue one call, measured on the warm-up calls
    for i in range(warmup):  # exactly `warmup` prepare+call pairs: the worker counts them
        for j in range(k):
            if prepare[j]:
                prepare[j](i % n_sets)
            t0 = _perf_counter()
            calls[j](i % n_sets)
            host_s[j] = max(host_s[j], _perf_counter() - t0)
    samples: list[list[float]] = [[] for _ in range(k)]
    if device == "cuda" and method == "cupti":
        # Each call alone between two syncs: the flush and the spin are launched before its host
        # window opens, so only the call's own work (any stream, any thread) is counted.
        windows, who = [], []
        _synchronize()
        with CuptiRecorder() as rec:
            for i, j in _call_order(iters, k):
                if prepare[j]:
                    prepare[j](sched[i])
                flush()
                gpu_spin(2.0 * host_s[j])
                t0 = rec.now()
                calls[j](sched[i])
                t1 = rec.now()
                _synchronize()
                # Tracing slows launches: size the next spin from the traced host time, or the GPU
                # idles between this call's kernels and the span counts the gaps
                host_s[j] = max(host_s[j], (t1 - t0) / 1e9)
                windows.append((t0, t1))
                who.append(j)
        spans = spans_ms(windows, rec.launches, rec.activities)
        if any(x is None for x in spans):
            raise RuntimeError("CUPTI saw no GPU work for a timed call")
        for j, ms in zip(who, spans):
            samples[j].append(ms)
    elif device == "cuda":
        _synchronize()
        pending = []
        for i, j in _call_order(iters, k):
            if prepare[j]:
                prepare[j](sched[i])
            flush()
            # Keep the GPU busy while the host enqueues the call, so the events measure the
            # kernels' device time rather than Python launch latency (as CUDA graphs do in an
            # engine); host time is reported separately as the synced wall time per call.
            gpu_spin(2.0 * host_s[j])
            start, end = _Event(enable_timing=True), _Event(enable_timing=True)
            start.record()
            calls[j](sched[i])
            end.record()
            pending.append((j, start, end))
        _synchronize()
        for j, start, end in pending:
            samples[j].append(start.elapsed_time(end))
    else:
        for i, j in _call_order(iters, k):
            if prepare[j]:
                prepare[j](sched[i])
            t0 = _perf_counter()
            calls[j](sched[i])
            samples[j].append((_perf_counter() - t0) * 1e3)
    return samples


def _call_order(iters: int, k: int):
    """(iteration, function) of each timed call: all k functions every iteration, the order
    reversed every other one, so neither always goes first."""
    for i in range(iters):
        for j in (range(k) if i % 2 == 0 else reversed(range(k))):
            yield i, j


def gpu_spin(seconds: float) -> None:
    """Enqueue a GPU busy-wait of about `seconds` (capped at 5 ms), assuming a ~2 GHz SM clock."""
    cycles = int(min(max(seconds, 20e-6), 5e-3) * 2.0e9)
    torch.cuda._sleep(cycles)


def wall_per_call_ms(call: Callable[[int], None], n_sets: int, reps: int, device: str) -> tuple[float, float]:
    """(wall, issue) ms per call over `reps` back-to-back calls: wall ends with a device-wide sync,
    so it includes work on any stream; issue is the host time to make the calls (no sync). Events
    that saw far less than wall mean work outside the timed stream, unless the host itself takes
    that long to issue the calls (a launch-bound candidate: wall ~ issue)."""
    if device == "cuda":
        _synchronize()
    t0 = _perf_counter()
    for i in range(reps):
        call(i % n_sets)
    t1 = _perf_counter()
    if device == "cuda":
        _synchronize()
    t2 = _perf_counter()
    return (t2 - t0) * 1e3 / reps, (t1 - t0) * 1e3 / reps


def device_ms(fns: list[Callable[[], object]], iters: int = 30, warmup: int = 5, device: str = "cuda") -> list[float]:
    """Median device ms per call of each no-argument function, timed the way the evaluator times
    candidates (L2 flushed, the GPU kept busy while the host enqueues, events, interleaved): kernel
    time without the host's launch gaps, i.e. what a CUDA-graph replay in an engine sees. For the
    benchmark scripts, next to do_bench, which counts those gaps once issuing outlasts its flush."""
    samples = time_interleaved([lambda i, f=f: f() for f in fns], [None] * len(fns), 1, warmup, iters, device)
    return [statistics.median(s) for s in samples]


def median_iqr(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return 0.0, 0.0
    if len(xs) < 4:
        return statistics.median(xs), (max(xs) - min(xs))
    q = statistics.quantiles(xs, n=4)
    return statistics.median(xs), q[2] - q[0]


def nvml_handle(pynvml, use_torch: bool = True):
    """NVML's handle of the GPU this process computes on (torch's current device), found by UUID:
    CUDA_VISIBLE_DEVICES (and a Ray evaluator's GPU) renumbers CUDA devices, NVML's index does not.
    `use_torch=False` (a process that should not open a CUDA context): the first visible device."""
    try:
        if use_torch and torch.cuda.is_available():
            uuid = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "uuid", None)
            if uuid is not None:
                u = str(uuid)
                return pynvml.nvmlDeviceGetHandleByUUID(u if u.startswith("GPU-") else f"GPU-{u}")
    except Exception:
        pass
    import os
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    if first.startswith("GPU-"):
        return pynvml.nvmlDeviceGetHandleByUUID(first)
    return pynvml.nvmlDeviceGetHandleByIndex(int(first) if first.isdigit() else 0)


def gpu_clock_state() -> tuple[Optional[int], list[str]]:
    """(SM clock MHz, active throttle reasons) of the GPU this worker uses, via pynvml; (None, [])
    without a GPU."""
    try:
        import pynvml
        pynvml.nvmlInit()
        h = nvml_handle(pynvml)
        sm = pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)
        mask = pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(h)
        names = {
            "hw_slowdown": getattr(pynvml, "nvmlClocksThrottleReasonHwSlowdown", 0x8),
            "sw_thermal": getattr(pynvml, "nvmlClocksThrottleReasonSwThermalSlowdown", 0x20),
            "hw_thermal": getattr(pynvml, "nvmlClocksThrottleReasonHwThermalSlowdown", 0x40),
            "hw_power_brake": getattr(pynvml, "nvmlClocksThrottleReasonHwPowerBrakeSlowdown", 0x80),
            "sw_power_cap": getattr(pynvml, "nvmlClocksThrottleReasonSwPowerCap", 0x4),
        }
        return int(sm), [n for n, bit in names.items() if mask & bit]
    except Exception:
        return None, []


# Reasons that mean the clock was pulled down by heat or a hardware limit (sw_power_cap is routine
# under heavy load on H100 and is recorded but not flagged).
THROTTLE_FLAGS = ("hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake")
