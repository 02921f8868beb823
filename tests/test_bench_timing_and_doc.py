"""The benchmark scripts' shared parts on CPU: avo.harness.timing.device_ms (their device-time column;
the CUDA path is the evaluator's event timing, run on the GPU by scripts/bench_*.py) and the doc sections."""
import time

from avo.harness.timing import device_ms


def test_device_ms_gives_one_median_per_function_in_order_and_counts_calls():
    calls = {"fast": 0, "slow": 0}

    def fast():
        calls["fast"] += 1

    def slow():
        calls["slow"] += 1
        time.sleep(0.003)

    fast_ms, slow_ms = device_ms([fast, slow], iters=12, warmup=2, device="cpu")
    assert calls == {"fast": 14, "slow": 14}  # warm-up plus timed calls, interleaved
    assert fast_ms < 1.0 and 2.9 <= slow_ms < 30.0


def test_bench_memory_bound_subset_run_keeps_the_full_table(tmp_path):
    import importlib.util
    from avo.tasks import REPO_ROOT
    spec = importlib.util.spec_from_file_location("bmb_under_test", REPO_ROOT / "scripts" / "bench_memory_bound.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    doc = tmp_path / "benchmarks.md"
    mod.write_doc("all families v1\n", doc)
    mod.write_doc("decode layer v1\n", doc, tasks=["megakernel_decode_layer"])
    mod.write_doc("all families v2\n", doc, tasks=list(mod.BENCH_TASKS))
    mod.write_doc("decode layer v2\n", doc, tasks=["megakernel_decode_layer"])
    text = doc.read_text()
    assert "all families v2" in text and "decode layer v2" in text
    assert "v1" not in text and text.count("<!-- bench_memory_bound -->") == 1
    assert text.count("<!-- bench_memory_bound megakernel_decode_layer -->") == 1


def test_doc_section_markers_count_only_on_their_own_line():
    """Prose that names a section's marker inline (the session notes in docs/benchmarks.md do) is
    not taken for it: a bench run once replaced everything from such a sentence to the end marker."""
    from avo.ui.doc_section import replace_marked_section
    begin, end = "<!-- bench_memory_bound megakernel_decode_layer -->", "<!-- /bench_memory_bound megakernel_decode_layer -->"
    text = (f"# Notes\n\nthe full table is in the `{begin}` section below.\n\n## Session notes\nkept\n\n"
            f"{begin}\nold table\n{end}\n\n## after\nalso kept\n")
    new = replace_marked_section(text, begin, end, "new table\n")
    assert "old table" not in new and "new table" in new
    assert f"in the `{begin}` section below" in new and "## Session notes\nkept" in new and new.endswith("## after\nalso kept\n")
    assert replace_marked_section("# Notes\n", begin, end, "t").endswith(f"\n\n{begin}\nt\n{end}\n")  # absent: appended


def test_bench_memory_bound_plans_the_evolved_decode_layer_under_a_cuda_graph():
    """With an evolved decode layer the plan adds its CUDA-graph replay (what an engine that graphs
    its decode step runs); layout tasks and a run without an evolved kernel do not get one."""
    import subprocess
    import sys
    from avo.tasks import REPO_ROOT
    bench = REPO_ROOT / "scripts" / "bench_memory_bound.py"
    evolved = REPO_ROOT / "kernels" / "megakernel" / "evolved" / "decode_layer_h100" / "sources" / "kernel.py"
    cmd = [sys.executable, str(bench), "--dry-run", "--tasks", "megakernel_decode_layer", "layout_transpose2d"]
    r = subprocess.run(cmd + ["--kernel", f"megakernel_decode_layer={evolved}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    mk = [line for line in r.stdout.splitlines() if "gpu_b1_kv4000" in line]
    assert mk and "evolved | evolved (CUDA graph) | seed" in mk[0]
    assert "CUDA graph" not in "".join(line for line in r.stdout.splitlines() if "16384x16384" in line)
    plain = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0 and "evolved (CUDA graph)" not in plain.stdout


def test_call_kernel_script_checks_the_output_it_profiles(tmp_path):
    """scripts/call_kernel.py (the ncu/nsys target) on the interpreter: the seed matches the
    reference (exit 0); a seed whose down projection drops the residual does not (exit 1); an
    unknown workload is a one-line error (exit 2)."""
    import os
    import subprocess
    import sys
    from avo.tasks import REPO_ROOT
    script = REPO_ROOT / "scripts" / "call_kernel.py"
    seed = REPO_ROOT / "kernels" / "megakernel" / "decode_layer_seed.py"
    broken = tmp_path / "broken.py"
    text = seed.read_text()
    assert "w_down, out, mode=1, res=h," in text
    broken.write_text(text.replace("w_down, out, mode=1, res=h,", "w_down, out, mode=0, res=h,"))
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    def call(kernel, wl="cpu_b3_kv37_float32_g3"):
        return subprocess.run([sys.executable, str(script), "megakernel_decode_layer", str(kernel), wl, "--device", "cpu",
                               "--calls", "1"], capture_output=True, text=True, timeout=300, env=env, cwd=REPO_ROOT)
    ok, bad, missing = call(seed), call(broken), call(seed, "gpu_b1_kv4000_bfloat16")
    assert ok.returncode == 0 and "matches the reference" in ok.stdout, ok.stdout + ok.stderr
    assert bad.returncode == 1 and "MISMATCH" in bad.stdout, bad.stdout + bad.stderr
    assert missing.returncode == 2 and "no cpu workload" in missing.stderr


def test_engine_decode_layer_peer_matches_the_task_reference():
    """bench_memory_bound's engine-style peer (fused weights, F.rms_norm, its own cache slot, SDPA
    with enable_gqa) computes the task's layer: same out, k_new and v_new on the CPU workloads,
    including an empty cache and a GQA group of 3."""
    import importlib.util
    import torch
    from avo.harness.check import compare
    from avo.harness.inputs import make_inputs
    from avo.tasks import REPO_ROOT
    spec = importlib.util.spec_from_file_location("bmb_engine", REPO_ROOT / "scripts" / "bench_memory_bound.py")
    bmb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bmb)
    task = bmb.load_task("megakernel_decode_layer")
    ns, d = bmb.reference_ns(task), task.definition
    for w in task.select("cpu"):
        args = list(make_inputs(d, w, 0, "cpu", ns.get("make_inputs")).values())
        want = ns["run"](*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
        got = bmb.engine_decode_layer(*args)()
        for name, g, e in zip(d.result_names, got, want):
            assert compare(name, g, e, e.dtype, d.tolerance, device="cpu").status.value == "PASSED", (w.uuid, name)


def test_sweep_knobs_peer_flag_takes_one_name_and_bad_input_is_one_line():
    """scripts/sweep_knobs.py on a CPU stops at 'no CUDA device' once its arguments parse: a --peer
    before the settings leaves them to the settings (it used to swallow every argument after it);
    an unknown peer, a setting outside TUNABLES and bad JSON are one-line errors (exit 2)."""
    import subprocess
    import sys
    from avo.tasks import REPO_ROOT
    def sweep(*args):
        r = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "sweep_knobs.py"), "grammar_bitmask",
                            "kernels/grammar/bitmask_seed.py", *args], capture_output=True, text=True, timeout=120,
                           cwd=REPO_ROOT)
        return r.returncode, r.stderr.strip().splitlines()
    assert sweep("--peer", "xgrammar triton", "{}", '{"WORD_TILE": true}') == (2, ["error: no CUDA device"])
    assert sweep("{}", "--peers", "xgrammar triton") == (2, ["error: no CUDA device"])
    rc, err = sweep("--peer", "bogus", "{}")
    assert rc == 2 and err == ["error: peer 'bogus' is not one of grammar_bitmask's: xgrammar triton, xgrammar cuda"]
    rc, err = sweep('{"WORD_TILE": 3}')
    assert rc == 2 and len(err) == 1 and "WORD_TILE=3 not in the kernel's TUNABLES" in err[0]
    rc, err = sweep("{nope")
    assert rc == 2 and len(err) == 1 and "is not JSON" in err[0]
    rc, err = sweep("{}", "--batches", "16,64")
    assert rc == 2 and err == ["error: --batches is for the decode layer, not grammar_bitmask"]


def test_sweep_grid_batches_reach_the_decode_layer_sweep():
    """A grid run's "batches"/"kv" (the persistent megakernel's tl.dot path, only past batch 8)
    become --batches/--kv, which build the decode layer's workloads at those batches."""
    import importlib.util
    from avo.tasks import REPO_ROOT, load_task
    spec = importlib.util.spec_from_file_location("sweep_knobs", REPO_ROOT / "scripts" / "sweep_knobs.py")
    sk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sk)
    argvs = sk.grid_argvs(sk.grid_path("megakernel-persistent"), None)
    dot = next(a for a in argvs if "--batches" in a)
    assert dot[dot.index("--batches") + 1] == "16,64" and dot[dot.index("--kv") + 1] == "4000"
    assert '{"DOT_STAGES": 3}' in dot
    wls = sk.bmb.batch_sweep(load_task("megakernel_decode_layer"), sk.bmb.parse_batches("16,64"), 4000)
    assert [(w.uuid, w.axes["batch"]) for w in wls] == [("gpu_b16_kv4000_bfloat16", 16), ("gpu_b64_kv4000_bfloat16", 64)]


def test_bitmask_floor_counts_sectors_and_reads_the_recorded_peer(tmp_path):
    """tests/bitmask_floor.py: a fully blocked sector is a write, a mixed one a read and a write,
    an allowed one nothing (fp32: 8 tokens a sector); the tail sector past vocab counts as mixed; the
    recorded xgrammar device µs comes from the doc's bench rows and sets the 1.3x column."""
    import importlib.util
    import torch
    from avo.tasks import REPO_ROOT
    spec = importlib.util.spec_from_file_location("bitmask_floor", REPO_ROOT / "tests" / "bitmask_floor.py")
    bf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bf)
    blocked = torch.zeros(2, 20, dtype=torch.bool)  # sectors per row: tokens 0-7, 8-15, 16-19 (+4 pad)
    blocked[0, :8] = True  # row 0: sector 0 full
    blocked[1, 9] = True  # row 1: sector 1 mixed
    blocked[1, 16:20] = True  # row 1: tail sector blocked on every real token -> mixed
    assert bf.sector_bytes(blocked, 4) == (32, 2 * 2 * 32)
    assert bf.sector_bytes(blocked[:, :16], 2) == (0, 2 * 2 * 32)  # bf16: 16 a sector, both rows mixed
    doc = tmp_path / "b.md"
    doc.write_text("| grammar_bitmask | cpu_b3_v1000_float32 | xgrammar triton | 9.0 | 1 | 1% | 1.0 | 13.0 | 1.0 | ok |\n")
    assert bf.recorded_xgrammar_us(doc) == {("cpu_b3_v1000_float32", "xgrammar triton"): 13.0}
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert bf.main(["--workloads", "cpu_b3", "--doc", str(doc)]) == 0
    row = out.getvalue().strip().splitlines()[-1].split("|")
    assert row[1].strip() == "cpu_b3_v1000_float32" and row[8].strip() == "13.0" and row[9].strip() == "10.0"
    assert row[10].strip() == "yes"
    assert bf.main(["--workloads", "nope"]) == 2
