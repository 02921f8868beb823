"""The worker process: the only place candidate code runs. One per device, started by the runner
with a scrubbed environment; talks to it over a private socket (fd passed at spawn). Roles:
`candidate` (import, correctness calls, timing, A/B) and `reference` (trusted reference outputs).

Messages to the runner: ("phase", name) before each time-limited step, ("outputs", uuid, seed,
{name: tensor}) (a GPU copy shared by CUDA IPC with `--ipc`, else a host copy), ("fail", status, check, log), ("timing", uuid, dict), ("done", info); for a
CUDA C++ solution ("build", note) after its build, or, where no GPU is, ("not_run", note) after its
compile check and ("unavailable", why) where not even that is possible (no nvcc)."""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import random
import shutil
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

import torch

from avo.harness import build, channel, check, guard, inputs, sandbox, timing  # before any candidate, on purpose
from avo.schema import Definition, EvaluationStatus, Solution, Workload

S = EvaluationStatus


class Fail(Exception):
    def __init__(self, status: EvaluationStatus, log: str, check: str | None = None):
        super().__init__(log)
        self.status, self.log, self.check = status, log, check


def _tail(text: str, n: int = 2000) -> str:
    return text if len(text) <= n else "..." + text[-n:]


def _value_returning(fn: Callable, d: Definition) -> Callable:
    """A value-returning entry (`destination_passing_style: false`: a tensor, a tuple in output
    order, or a dict by output name) called the way every entry is: its results are copied into the
    harness's poisoned output buffers, so every check applies unchanged. The copy is timed with it."""
    n_in, names = len(d.inputs), list(d.outputs)

    def call(*args):
        res = fn(*args[:n_in])
        if not names:
            return None
        if isinstance(res, dict):
            missing = [n for n in names if n not in res]
            if missing:
                raise Fail(S.INCORRECT_SHAPE, f"the returned dict has no output {missing[0]!r}")
            res = [res[n] for n in names]
        elif not isinstance(res, (tuple, list)):
            res = [res]
        if len(res) != len(names):
            raise Fail(S.INCORRECT_SHAPE, f"returned {len(res)} values for {len(names)} outputs ({', '.join(names)})")
        for name, out, r in zip(names, args[n_in:], res):
            if not isinstance(r, torch.Tensor):  # a DLPack tensor (tvm-ffi) or a Python number
                r = torch.from_dlpack(r) if hasattr(r, "__dlpack__") else torch.as_tensor(r, device=out.device)
            if tuple(r.shape) != tuple(out.shape):
                raise Fail(S.INCORRECT_SHAPE, f"{name}: returned shape {tuple(r.shape)} != {tuple(out.shape)}")
            if r.dtype != out.dtype:
                raise Fail(S.INCORRECT_DTYPE, f"{name}: returned dtype {r.dtype} != {out.dtype}")
            out.copy_(r)
        return None
    return call


def _refused(e: BaseException, info: dict) -> Fail | None:
    """A candidate's error that is the sandbox saying no (a write outside the scratch folder,
    another process's /proc files, a network socket): RUNTIME_ERROR with the check "sandbox"."""
    why = sandbox.denial(e) if info.get("layers") else None
    if why is None:
        return None
    layers = sandbox.summary(info).removeprefix("sandbox: ")
    return Fail(S.RUNTIME_ERROR, _tail(f"refused by the worker's sandbox ({layers}): {why}\n"
                                       f"{traceback.format_exc(limit=4)}"), "sandbox")


def _is_compile_error(e: BaseException) -> bool:
    names = {c.__name__ for c in type(e).__mro__}
    if "InterpreterError" in names:  # the interpreter wraps what a GPU compile rejects (bad arange,
        # unknown tl function, static_assert, type errors); memory or torch errors stay run-time ones
        return not isinstance(e.__cause__, (RuntimeError, MemoryError))
    return bool(names & {"CompilationError", "CompileTimeAssertionFailure", "OutOfResources"}) or \
        "triton.compiler" in type(e).__module__


class Worker:
    def __init__(self, conn: Connection, device: str, role: str, bulk: Path, ipc: bool = False):
        self.conn, self.mode, self.role, self.bulk, self.ipc = conn, device, role, bulk, ipc
        self.dev = "cuda" if device == "cuda" else "cpu"
        self.tmp = channel.worker_tmp_dir(role)  # removed at exit; by the runner or its sweep after a kill
        self.sandbox: dict = {}  # what `confine` set up (candidate role), for "ready" and messages
        self.guard: guard.RuntimeGuard | None = None  # armed by `arm`, before any candidate code loads
        self.refs: dict[str, dict] = {}

    def arm(self) -> dict:
        """Before any candidate code loads and after torch/CUDA initialisation: the candidate role's
        sandbox (avo/harness/sandbox.py), then the runtime guard's snapshot (pristine ids, the
        sandbox's own changes included). The reference role is trusted: it only makes itself
        non-dumpable (main). Returns the "ready" info."""
        if self.role == "candidate":
            if self.mode == "cuda":  # the persisting-L2 set-aside as it is before any candidate (timing.py)
                timing.persisting_l2()
            self.sandbox = sandbox.disabled() or sandbox.confine(self.tmp, self.bulk, self.mode, self.ipc)
        # candidate code loads from the scratch folder: frames and gc walks asked for from there are refused
        self.guard = guard.RuntimeGuard(code_roots=(str(self.tmp),) if self.role == "candidate" else ())
        return {"pid": os.getpid(), "sandbox": self.sandbox, "dumpable": sandbox.dumpable()}

    def _caught(self, e: BaseException | None = None) -> Fail | None:
        """The runtime guard's finding, if any: an error raised by candidate code may be the guard
        refusing it (a frame asked for), which is a hack, not a crash; so is what the timing loop
        found (timing.TimingHack: a persisting L2 set-aside)."""
        if isinstance(e, timing.TimingHack):
            return Fail(S.REWARD_HACK, str(e), e.check)
        finding = self.guard.verify() if self.guard else None
        return Fail(S.REWARD_HACK, finding[1], finding[0]) if finding else None

    def send(self, *msg: Any) -> None:
        channel.send(self.conn, msg, self.bulk, self.ipc)

    # ---- loading code ----
    def _load_module(self, sol: Solution, d: Definition, job: dict) -> Callable:
        if build.is_native(sol):
            return self._build_native(sol, d, float(job.get("compile_timeout_s") or build.DEFAULT_LIMIT_S))
        digest = hashlib.sha256(sol.model_dump_json().encode()).hexdigest()[:16]
        folder = self.tmp / f"sol_{digest}"
        for s in sol.sources:
            p = folder / s.path
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(s.content)
        if sol.spec.language not in ("triton", "python"):
            raise Fail(S.COMPILE_ERROR, f"language {sol.spec.language!r} is not built by avo's worker "
                       f"(triton, python, cuda, cpp)")
        modname = f"avo_candidate_{digest}"
        sys.path.insert(0, str(folder))
        try:
            spec = importlib.util.spec_from_file_location(modname, folder / sol.entry_file)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[modname] = mod
            spec.loader.exec_module(mod)
        except Exception as e:
            raise self._caught() or _refused(e, self.sandbox) or \
                Fail(S.COMPILE_ERROR, _tail(f"import failed: {type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"))
        finally:
            sys.path.remove(str(folder))
        fn = getattr(mod, sol.entry_symbol, None)
        if not callable(fn):
            raise Fail(S.COMPILE_ERROR, f"{sol.spec.entry_point}: no callable {sol.entry_symbol!r}")
        return fn if sol.spec.destination_passing_style else _value_returning(fn, d)

    def _build_native(self, sol: Solution, d: Definition, limit_s: float) -> Callable:
        """CUDA C++ / C++ (avo/harness/build.py): built and loaded where a CUDA GPU is, else only
        compile-checked (build.NotRun, reported as COMPILED_NOT_RUN). The build time goes to the runner."""
        self.send("phase", "build")
        try:
            if self.mode != "cuda":
                raise build.NotRun(build.check(sol, limit_s))
            fn, note = build.load(sol, limit_s)
        except build.BuildError as e:
            raise Fail(S.TIMEOUT if e.timeout else S.COMPILE_ERROR, e.log)
        self.send("build", note)
        return fn if sol.spec.destination_passing_style else _value_returning(fn, d)

    def _reference_ns(self, d: Definition, code: str | None = None) -> dict:
        code = code or d.reference
        key = hashlib.sha256(code.encode()).hexdigest()
        if key not in self.refs:
            ns: dict = {}
            exec(compile(code, f"<{d.name}/reference>", "exec"), ns)
            self.refs[key] = ns
        return self.refs[key]

    def _inputs(self, d: Definition, w: Workload, seed, root: str | None) -> dict:
        """`seed` is an int, or (seed, perturbation seed) for the perturbed inputs of a timed call."""
        base, pert = (seed, 0) if isinstance(seed, int) else seed
        ns = self._reference_ns(d)
        x = inputs.make_inputs(d, w, base, self.dev, ns.get("make_inputs"), Path(root) if root else None,
                               ns.get(d.custom_inputs_entrypoint) if d.custom_inputs_entrypoint else None)
        if pert:
            inputs.perturb_(x, pert, integers=d.perturb_integers)
        return x

    # ---- reference role ----
    def reference(self, job: dict) -> None:
        d = Definition.model_validate(job["definition"])
        w = Workload.model_validate(job["workload"])
        run = self._reference_ns(d)["run"]
        self._release_shared()
        for seed in job["seeds"]:
            t0 = time.perf_counter()
            x = inputs.upcast(self._inputs(d, w, seed, job.get("root")))
            with torch.no_grad():
                ret = run(*x.values())
            rets = [ret[n] for n in d.outputs] if isinstance(ret, dict) else \
                ret if isinstance(ret, (tuple, list)) else (ret,)
            result = {n: self._own(t) for n, t in zip(d.outputs, rets)}
            result.update({n: self._own(x[n]) for n in d.inplace})
            if self.mode == "cuda":
                torch.cuda.synchronize()
            # its own seconds (inputs + reference), not the round trip: the runner sizes the
            # post-timing checks by what a reference costs (runner.ALL_SETS_S)
            self.send("outputs", w.uuid, seed, result, time.perf_counter() - t0)
        self.send("done", {})

    # ---- candidate role ----
    def _call_checked(self, fn: Callable, d: Definition, args: dict, outs: dict, monitor: bool,
                      peer: bool = False) -> None:
        snap = inputs.snapshot(args, skip=tuple(d.inplace))
        meta = _tensor_meta({**args, **outs})
        rec = guard.aten_monitor() if monitor else None
        try:
            if rec is not None:
                with rec:
                    fn(*args.values(), *outs.values())
            else:
                fn(*args.values(), *outs.values())
            if self.mode == "cuda":
                torch.cuda.synchronize()
        except Fail:
            raise
        except Exception as e:
            refused = self._caught() or _refused(e, self.sandbox)
            if refused:
                raise refused
            status = S.COMPILE_ERROR if _is_compile_error(e) else S.RUNTIME_ERROR
            raise Fail(status, _tail(f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"))
        finding = self.guard.verify()
        if finding:
            raise Fail(S.REWARD_HACK, finding[1], finding[0])
        if self.mode == "cuda":
            why = timing.persisting_l2().finding(torch.cuda.current_stream().cuda_stream)
            if why:
                raise Fail(S.REWARD_HACK, why, "l2-persist")
        if rec is not None and not peer:
            op = guard.forbidden_op(rec.ops, d.forbidden_calls)
            if op:
                raise Fail(S.REWARD_HACK, f"called {op}, a library op that does the task", "library-call")
        # Same class and memory for every tensor argument: a result swapped for other memory or
        # turned into a (lazy) subclass is a replaced result. A result resized or re-viewed in place
        # is left to the comparison (INCORRECT_SHAPE / INCORRECT_DTYPE); a read-only input must keep
        # its shape, strides and dtype too.
        now = _tensor_meta({**args, **outs})
        moved = [k for k, m in now.items() if m[:2] != meta[k][:2]]
        if moved:
            raise Fail(S.REWARD_HACK, f"tensor argument {moved[0]!r} was replaced or re-classed instead of "
                       "written", "output-replaced")
        reshaped = [k for k in args if k in now and k not in d.inplace and now[k] != meta[k]]
        if reshaped:
            raise Fail(S.REWARD_HACK, f"input {reshaped[0]!r} was resized or re-viewed", "input-mutation")
        mutated = inputs.changed(args, snap)
        if mutated:
            raise Fail(S.REWARD_HACK, f"input {mutated[0]!r} was modified", "input-mutation")

    def _own(self, t: torch.Tensor) -> torch.Tensor:
        """A copy for the runner that the code under test no longer touches: on the GPU when it goes
        by CUDA IPC, else on the host (.cpu() of a CUDA tensor already is a copy)."""
        if t.is_cuda and not self.ipc:
            return t.detach().cpu()
        return t.detach().clone()

    def _release_shared(self) -> None:
        """Free the GPU copies the runner has already opened and dropped (torch keeps a shared
        block until its consumers let go; ipc_collect returns those to the allocator)."""
        if self.ipc:
            torch.cuda.ipc_collect()

    def _checked_results(self, fn, d: Definition, args: dict, outs: dict, job: dict) -> dict:
        """A checked call into NaN-poisoned outputs (a correctness trial, a probe made again, a refreshed
        set), and its results for the runner."""
        for o in outs.values():
            inputs.poison_(o)
        self._call_checked(fn, d, args, outs, monitor=True, peer=job.get("peer", False))
        return self._results(d, args, outs)

    def _results(self, d: Definition, args: dict, outs: dict) -> dict:
        res = {n: self._own(t) for n, t in outs.items()}
        res.update({n: self._own(args[n]) for n in d.inplace})
        return res

    def evaluate(self, job: dict) -> None:
        d = Definition.model_validate(job["definition"])
        sol = Solution.model_validate(job["solution"])
        wls = [Workload.model_validate(w) for w in job["workloads"]]
        self.send("phase", "import")
        fn = self._load_module(sol, d, job)
        finding = self.guard.verify()
        if finding:
            raise Fail(S.REWARD_HACK, finding[1], finding[0])
        # Correctness: every workload, fresh inputs per trial, outputs poisoned before each call.
        for w in wls:
            self._release_shared()
            for t, seed in enumerate(job["trial_seeds"][w.uuid]):
                self.send("phase", f"compile:{w.uuid}" if t == 0 else f"check:{w.uuid}")
                args = self._inputs(d, w, seed, job.get("root"))
                outs = inputs.alloc_outputs(d, w, self.dev)
                self.send("outputs", w.uuid, seed, self._checked_results(fn, d, args, outs, job))
        self.send("checked")
        go = channel.recv(self.conn)  # ("time", {uuid: sets whose last timed output is shown}) or "stop"
        if not (isinstance(go, tuple) and go[0] == "time"):
            return
        job = {**job, "post_checks": go[1]}
        base_ns = self._reference_ns(d, job.get("baseline"))
        for i, w in enumerate(wls):
            self.send("phase", f"time:{w.uuid}")
            if i:  # the reference worker shares this GPU and may still be computing the last workload's
                # outputs (the orchestrator compares as they arrive): timing over it would inflate the
                # events and, worse, the wall check (a legit kernel flagged as side-stream work)
                self.send("quiet")
                if channel.recv(self.conn) != "go":
                    return
                self._release_shared()  # every earlier output has been compared
            self.send("timing", w.uuid, self._time_workload(fn, base_ns["run"], d, w, job))
        self.send("done", {})

    def _time_workload(self, fn, base_fn, d: Definition, w: Workload, job: dict) -> dict:
        cfg = job["timing"]
        root = job.get("root")
        set_seeds = job["set_seeds"][w.uuid]
        n = len(set_seeds)
        sets = [self._inputs(d, w, s, root) for s in set_seeds]
        pristine = [inputs.snapshot({k: a[k] for k in d.inplace}) for a in sets]
        outs = [inputs.alloc_outputs(d, w, self.dev) for _ in sets]
        base_sets = [{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in a.items()} for a in sets]
        # Unpredictable to the candidate: the set order, the number of timed calls, which calls
        # have their output checked, and the input values of each call (perturbed every time).
        rng = random.SystemRandom()
        schedule = [i for _ in range(cfg["iters"] // n + 2) for i in rng.sample(range(n), n)]
        schedule = schedule[:cfg["iters"] + rng.randrange(n)]
        probed = set(rng.sample(range(len(schedule)), min(max(n, cfg["probes"]), len(schedule))))  # timed calls checked
        pert = [0] * n  # perturbation seed now applied to each set
        undo: list[list] = [[] for _ in range(n)]
        step = [-cfg["warmup"]]  # index of the call that prep is preparing (negative: warm-up)
        pending: list = [None] * n  # (seed pair) of the last call on a set when it is probed
        probes: list = []  # (seed pair, results on device) of probed calls

        def cand(i):
            fn(*sets[i].values(), *outs[i].values())

        def prep(i):  # outside the timed region
            if pending[i] is not None:  # the previous call on this set was probed: keep its result
                probes.append((pending[i], {k: v.clone() for k, v in self._results_dev(d, sets[i], outs[i]).items()}))
                pending[i] = None
            for o in outs[i].values():
                inputs.poison_(o)
            inputs.unperturb_(undo[i])
            for k, t in pristine[i].items():
                sets[i][k].copy_(t)
            pert[i] = rng.randrange(1, 2**62)
            undo[i] = inputs.perturb_(sets[i], pert[i], integers=d.perturb_integers)
            if step[0] in probed:
                pending[i] = (set_seeds[i], pert[i])
            step[0] += 1

        def base(i):
            base_fn(*base_sets[i].values())

        clk0, why0 = timing.gpu_clock_state() if self.mode == "cuda" else (None, [])
        method, method_note = timing.resolve_method(cfg.get("method", "events"), self.mode)
        try:
            samples = timing.time_interleaved([cand, base], [prep, None], n, cfg["warmup"], cfg["iters"],
                                              self.mode, schedule=schedule, method=method)
            if self.mode == "cuda":
                torch.cuda.synchronize()
        except Exception as e:
            raise self._caught(e) or _refused(e, self.sandbox) or \
                Fail(S.RUNTIME_ERROR, _tail(f"during timing: {type(e).__name__}: {e}"))
        clk1, why1 = timing.gpu_clock_state() if self.mode == "cuda" else (None, [])
        finding = self.guard.verify()
        if finding:
            raise Fail(S.REWARD_HACK, finding[1], finding[0])
        for i in range(n):
            expect = self._inputs(d, w, (set_seeds[i], pert[i]), root)
            bad = [k for k, v in expect.items() if k not in d.inplace and isinstance(v, torch.Tensor)
                   and not torch.equal(inputs.bits(v), inputs.bits(sets[i][k]))]
            if bad:
                raise Fail(S.REWARD_HACK, f"input {bad[0]!r} was modified during timing", "input-mutation")
        # The last timed call on post["last"] sets (picked at random; every set where the reference
        # is cheap, runner.ALL_SETS_S) must have produced the right
        # answer (taken now: the wall calls below overwrite them)...
        post = job["post_checks"][w.uuid]
        shown = sorted(rng.sample(range(n), min(n, post["last"])))
        last = {i: self._results(d, sets[i], outs[i]) for i in shown}
        wall = issue = None
        if self.mode == "cuda":  # before any output goes out, so no reference work shares the GPU
            wall, issue = timing.wall_per_call_ms(cand, n, cfg.get("wall_reps", 20), self.mode)
        # Where the reference is costly, a probed call is checked against the same kernel on the same
        # inputs outside the timed loop (rebuilt in new buffers, a checked call), not against the
        # reference: a kernel that skips or cheapens work only while timed disagrees with itself, and
        # the last/refreshed calls below still go to the reference. This spares ~8 fp32 references
        # per workload (~67 ms each for S4096 attention on an H100), most of the post-timing cost.
        for key, res in probes:  # res: already copies
            if post["probes_to_reference"]:  # a cheap reference: it judges the probes too
                self.send("outputs", w.uuid, key, res)
                continue
            again = self._checked_results(fn, d, self._inputs(d, w, key, root), inputs.alloc_outputs(d, w, self.dev), job)
            self.send("rerun", w.uuid, key, res, again)
            del again
        for i in shown:
            self.send("outputs", w.uuid, (set_seeds[i], pert[i]), last[i])
        # ...and after new values land in the same buffers (a cache keyed by pointer or shape
        # returns stale results here). These calls are checked like the correctness trials.
        for i, s in zip(rng.sample(range(n), len(job["refresh_seeds"][w.uuid])), job["refresh_seeds"][w.uuid]):
            inputs.unperturb_(undo[i])
            undo[i] = []
            fresh = self._inputs(d, w, s, root)
            for k, v in fresh.items():
                if isinstance(v, torch.Tensor):
                    sets[i][k].copy_(v)
            self.send("outputs", w.uuid, s, self._checked_results(fn, d, sets[i], outs[i], job))
        med, iqr = timing.median_iqr(samples[0])
        bmed, biqr = timing.median_iqr(samples[1])
        return dict(median_ms=med, iqr_ms=iqr, base_median_ms=bmed, base_iqr_ms=biqr, iters=len(samples[0]),
                    wall_ms=wall, issue_ms=issue, n_sets=n, clock_before=clk0, clock_after=clk1,
                    throttle=sorted(set(why0) | set(why1)), method=method, method_note=method_note)

    def _results_dev(self, d: Definition, args: dict, outs: dict) -> dict:
        return {**outs, **{k: args[k] for k in d.inplace}}

    def ab(self, job: dict) -> None:
        """Gate re-measurement: best (A) and candidate (B), interleaved call by call. Outputs are
        poisoned before each call and B's last output on each set must match A's: a candidate that
        skips work only here (after counting its calls) is caught."""
        d = Definition.model_validate(job["definition"])
        fns = [self._load_module(Solution.model_validate(s), d, job) for s in job["solutions"]]
        cfg = job["timing"]
        for w in (Workload.model_validate(x) for x in job["workloads"]):
            self.send("phase", f"ab:{w.uuid}")
            base = [self._inputs(d, w, s, job.get("root")) for s in job["set_seeds"][w.uuid]]
            # each solution gets its own copy of the in-place inputs; the rest is shared
            sets = [[{k: (v.clone() if k in d.inplace else v) for k, v in a.items()} for a in base] for _ in fns]
            outs = [[inputs.alloc_outputs(d, w, self.dev) for _ in base] for _ in fns]
            calls = [(lambda i, f=f, a=a, o=o: f(*a[i].values(), *o[i].values())) for f, a, o in zip(fns, sets, outs)]

            def prep_for(j):
                def prep(i):
                    for o in outs[j][i].values():
                        inputs.poison_(o)
                    for k in d.inplace:
                        sets[j][i][k].copy_(base[i][k])
                return prep

            why0 = timing.gpu_clock_state()[1] if self.mode == "cuda" else []
            try:
                samples = timing.time_interleaved(calls, [prep_for(j) for j in range(len(fns))], len(base),
                                                  cfg["warmup"], cfg["iters"] * job.get("rounds", 1), self.mode,
                                                  method=timing.resolve_method(cfg.get("method", "events"), self.mode)[0])
                if self.mode == "cuda":
                    torch.cuda.synchronize()
            except Exception as e:
                raise self._caught(e) or _refused(e, self.sandbox) or \
                    Fail(S.RUNTIME_ERROR, _tail(f"during A/B: {type(e).__name__}: {e}"))
            why1 = timing.gpu_clock_state()[1] if self.mode == "cuda" else []
            finding = self.guard.verify()
            if finding:
                raise Fail(S.REWARD_HACK, finding[1], finding[0])
            # B against A, each within the tolerance of the reference, may differ by twice it
            wt = d.tolerance_for(w)
            tol = wt.model_copy(update={"atol": 2 * wt.atol, "rtol": 2 * wt.rtol,
                                        "max_error_cap": 2 * wt.max_error_cap if wt.max_error_cap else None})
            for i in range(len(base)):  # on the device: a CPU float64 compare of 311 MB of logits takes seconds
                a = self._results_dev(d, sets[0][i], outs[0][i])
                for j in range(1, len(fns)):  # every other solution against the first (the gate: B against A)
                    b = self._results_dev(d, sets[j][i], outs[j][i])
                    for k in a:
                        r = check.compare(k, b[k], a[k], a[k].dtype, tol, device=self.dev)
                        if r.status != S.PASSED:
                            raise Fail(S.REWARD_HACK, f"A/B: the candidate's timed output differs from the best's: {r.detail}",
                                       "timed-output")
            self.send("timing", w.uuid, {"samples": samples, "throttle": sorted(set(why0) | set(why1))})
        self.send("done", {})


def _tensor_meta(values: dict) -> dict:
    return {k: (type(v), v.data_ptr(), tuple(v.shape), v.stride(), v.dtype)
            for k, v in values.items() if isinstance(v, torch.Tensor)}


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int) -> str:
    """This process ends when `parent` (the runner) does, even by kill -9: the kernel sends SIGKILL
    on the parent's death (prctl PR_SET_PDEATHSIG, Linux); elsewhere a daemon thread polls
    getppid(). Then the parent is checked once more: it may have died before the prctl. Returns
    how ("prctl" or "poll"). Call it before anything else, and the thread before RuntimeGuard's
    snapshot of the threads (a thread started later is the candidate's)."""
    how = "poll"
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
                how = "prctl"
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        print(f"avo worker: its runner (pid {parent}) is gone; exiting", file=sys.stderr, flush=True)
        os._exit(1)
    if how == "poll":
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(1)
        threading.Thread(target=watch, name="avo-parent-watch", daemon=True).start()
    return how


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--parent", type=int, required=True, help="the runner's pid: this process dies with it")
    ap.add_argument("--device", choices=["cuda", "interpret"], required=True)
    ap.add_argument("--role", choices=["candidate", "reference"], required=True)
    ap.add_argument("--bulk", type=Path, required=True)
    ap.add_argument("--ipc", action="store_true", help="send large CUDA outputs by CUDA IPC handle")
    a = ap.parse_args()
    die_with_parent(a.parent)
    if a.role == "reference":  # trusted: its memory and environment are not the candidate's to read
        sandbox.protect_self()
    conn = Connection(a.fd)
    w = Worker(conn, a.device, a.role, a.bulk, a.ipc and a.device == "cuda")

    def leave(code: int) -> None:  # without unwinding: the candidate's code may be on the stack
        shutil.rmtree(w.tmp, ignore_errors=True)
        os._exit(code)

    signal.signal(signal.SIGTERM, lambda *_: leave(128 + signal.SIGTERM))
    try:
        serve(w, conn, a.device)
    finally:
        shutil.rmtree(w.tmp, ignore_errors=True)


def serve(w: Worker, conn: Connection, device: str) -> None:
    if device == "cuda":
        torch.cuda.init()  # before "ready": the runner starts both workers at once, so this overlaps
    channel.send(conn, ("ready", w.arm()))  # the sandbox after CUDA's own files and threads are set up
    while True:
        try:
            job = channel.recv(conn)
        except EOFError:
            return
        try:
            getattr(w, job["op"])(job)
        except Fail as f:
            channel.send(conn, ("fail", f.status.value, f.check, f.log))
        except build.NotRun as n:  # compile-checked; no GPU here to run it
            channel.send(conn, ("not_run", n.log))
        except build.Unavailable as u:  # this machine cannot build it: not the candidate's failure
            channel.send(conn, ("unavailable", str(u)))
        except Exception as e:  # harness bug or broken reference: report, don't hide
            channel.send(conn, ("fail", S.RUNTIME_ERROR.value, None, _tail(f"worker error: {type(e).__name__}: {e}\n{traceback.format_exc()}")))
        if device == "cuda":
            try:
                torch.cuda.synchronize()
            except Exception:
                shutil.rmtree(w.tmp, ignore_errors=True)
                os._exit(3)  # CUDA context is gone (illegal address...): the runner restarts us


if __name__ == "__main__":
    main()
