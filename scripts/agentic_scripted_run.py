"""A short `avo evolve` whose agentic operators are driven by the scripted LLM server: shows the
agent path (real anthropic + openai SDK clients, tool loop, transcripts, retries, cost meter)
driving real evaluations (GPU with --device cuda) and the real commit gate.

The server (tests/fake_llm_server.py) listens on 127.0.0.1; the run is the `avo evolve` CLI in a
subprocess with a generated config: two agentic operators (anthropic, openai) on one island each
of grammar_bitmask, 4 attempts taken round-robin (anthropic, openai, anthropic, openai), so the
server's turns are consumed in a fixed order. Each scripted attempt: read_file kernel.py; an edit
that breaks a Triton call (tl.arange -> tl.arang); evaluate (COMPILE_ERROR); repair + one knob
change; evaluate; submit; submit again after the critique. The first openai attempt starts with
an HTTP 429 (Retry-After) that the client retries. The gate decides for real (commit or reject).

    .venv/bin/python scripts/agentic_scripted_run.py --device interpret      # CPU, ~30 s
    .venv/bin/python scripts/agentic_scripted_run.py --device cuda --json out/agentic-scripted.json

Exit 1 when the script was not consumed in order, an attempt did not reach the gate, the
accounting is off, or the dummy API key appears in any file written (transcripts included).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from fake_llm_server import FakeLLMServer, Turn, call  # noqa: E402

from avo.lineage import AttemptRecord, Lineage  # noqa: E402

KEY_ENV = "AVO_SCRIPTED_AGENT_KEY"
PRICE_IN, PRICE_OUT = 3.0, 15.0  # $/Mtok in the generated config
USAGE = dict(input_tokens=2400, output_tokens=180)  # per scripted turn
TURNS = 7  # model turns per attempt
BREAK = ("tl.arange(0, BLOCK_SIZE)", "tl.arang(0, BLOCK_SIZE)")  # the deliberate compile error
WORKLOADS = {"cuda": ["gpu_b128_v151936_float32", "gpu_b512_v151936_float32"], "interpret": ["cpu_b3_v1000_float32"]}
GATE = {"cuda": {"min_gain": 0.01, "rounds": 3}, "interpret": {"min_gain": 0.05, "rounds": 2}}
ENDPOINT = {"anthropic": "/v1/messages", "openai": "/v1/chat/completions"}
OPERATOR = {"anthropic": "claude-scripted", "openai": "gpt-scripted"}


@dataclass(frozen=True)
class Plan:
    """One scripted attempt: the knob change made after the repair (edits that still apply
    whether or not the island's previous attempt was committed)."""
    provider: str
    search: str
    replace: str
    note: str
    rate_limited: bool = False


PLANS = [  # the run's round-robin order: island 0 (anthropic), island 1 (openai), ...
    Plan("anthropic", "BLOCK_SIZE=256,", "BLOCK_SIZE=1024,", "BLOCK_SIZE 256 -> 1024: 4x fewer programs per row"),
    Plan("openai", "RMW=False", "RMW=False, SKIP_ONES=True",
         "SKIP_ONES: a block whose bitmask words are all -1 issues no store", rate_limited=True),
    Plan("anthropic", "num_warps=4,", "num_warps=8,", "num_warps 4 -> 8: more loads in flight per program"),
    Plan("openai", "RMW=False", "RMW=False, PERSISTENT=True, PROGRAMS_PER_SM=4",
         "persistent grid: 4 programs per SM loop over the blocks"),
]


def turns_for(p: Plan) -> list[Turn]:
    t: list[Turn] = [Turn(status=429, retry_after="0.2")] if p.rate_limited else []
    return t + [
        Turn(text="Plan: read the kernel, then one knob change.", calls=[call("read_file", path="kernel.py")], **USAGE),
        Turn(text="Deliberately break a Triton call to see the harness report it.",
             calls=[call("edit", path="kernel.py", search=BREAK[0], replace=BREAK[1])], **USAGE),
        Turn(calls=[call("evaluate")], **USAGE),
        Turn(text="Compile error as expected: repair it and make the real change.",
             calls=[call("edit", path="kernel.py", search=BREAK[1], replace=BREAK[0]),
                    call("edit", path="kernel.py", search=p.search, replace=p.replace)], **USAGE),
        Turn(calls=[call("evaluate")], **USAGE),
        Turn(calls=[call("submit", note=p.note)], **USAGE),
        Turn(calls=[call("submit", note=p.note)], **USAGE),  # confirms after the critique
    ]


def config(srv: FakeLLMServer, device: str, lineage: Path) -> dict[str, Any]:
    def op(provider: str) -> dict[str, Any]:
        return dict(kind="agentic", name=OPERATOR[provider], provider=provider, model=f"scripted-{provider}",
                    base_url=srv.anthropic_url if provider == "anthropic" else srv.openai_url, api_key_env=KEY_ENV,
                    max_steps=12, price_in_per_mtok=PRICE_IN, price_out_per_mtok=PRICE_OUT, timeout_s=60.0,
                    max_retries=2, backoff_s=0.1)
    return dict(run=f"agentic-scripted-{device}", lineage_dir=str(lineage), tasks=["grammar_bitmask"],
                workloads={"grammar_bitmask": WORKLOADS[device]}, operators=[op("anthropic"), op("openai")],
                islands=[dict(operator=OPERATOR[p], task="grammar_bitmask") for p in ("anthropic", "openai")],
                budget=dict(attempts=len(PLANS), wall_minutes=30, llm_usd=5.0), gate=GATE[device], device=device)


def evaluations(transcript: Path) -> list[dict[str, Any]]:
    """The agent's evaluate calls as it saw them: status, hardware, per-workload ms, error line."""
    out = []
    for line in transcript.read_text().splitlines():
        e = json.loads(line)
        if e["event"] != "tool" or e["name"] != "evaluate":
            continue
        lines = e["result"].splitlines()
        head = lines[0] if lines else ""
        ms = {}
        for ln in lines:
            parts = ln.split()
            if len(parts) >= 3 and parts[0] in sum(WORKLOADS.values(), []):
                ms[parts[0]] = None if parts[2] == "-" else float(parts[2])
        errs = [ln.strip() for ln in lines if "Error" in ln and ":" in ln]
        out.append(dict(status=head.removeprefix("status: ").split()[0] if head.startswith("status:") else head,
                        hardware=head.rsplit("; ", 1)[-1].rstrip("]") if ";" in head else "", ms=ms,
                        error=next((x for x in errs if "arang" in x), errs[-1] if errs else "")[:160],
                        seconds=e.get("seconds")))
    return out


def turn_events(transcript: Path) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, transcript.read_text().splitlines()) if e["event"] == "turn"]


def key_leaks(key: str, root: Path, extra: dict[str, str]) -> list[str]:
    """Files under root (plus the lineage's git history and notes, and `extra` texts) holding key."""
    hits = [str(f) for f in root.rglob("*") if f.is_file() and "objects" not in f.parts and key.encode() in f.read_bytes()]
    if (root / ".git").exists():
        hist = subprocess.run(["git", "-C", str(root), "log", "--all", "-p", "--show-notes=*"],
                              capture_output=True, text=True).stdout
        hits += ["git history"] if key in hist else []
    return hits + [name for name, text in extra.items() if key in text]


def run_evolve(cfg_path: Path, env: dict[str, str], timeout_s: float) -> tuple[int, str]:
    """`avo evolve -c cfg --no-live`, echoed as it goes; (exit code, output)."""
    avo = Path(sys.executable).parent / "avo"
    cmd = [str(avo)] if avo.exists() else [sys.executable, "-m", "avo.cli"]
    proc = subprocess.Popen(cmd + ["evolve", "-c", str(cfg_path), "--no-live"], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    t0 = time.monotonic()
    assert proc.stdout is not None
    for line in proc.stdout:
        print("  | " + line, end="", flush=True)
        lines.append(line)
        if time.monotonic() - t0 > timeout_s:
            proc.kill()
            break
    return proc.wait(), "".join(lines)


def fmt_ms(ms: dict[str, Optional[float]]) -> str:
    return ", ".join(f"{w} {'-' if v is None else f'{v:.4f}'} ms" for w, v in ms.items()) or "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "interpret"], default="interpret")
    ap.add_argument("--out", type=Path, default=None,
                    help="lineage dir (must not exist; default lineages/agentic-scripted-<device>-<time>)")
    ap.add_argument("--json", type=Path, default=None, help="write the summary here")
    ap.add_argument("--timeout-min", type=float, default=25.0, help="kill `avo evolve` after this long")
    a = ap.parse_args()
    out = (a.out or REPO / "lineages" / f"agentic-scripted-{a.device}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} exists; pass a new --out", file=sys.stderr)
        return 2
    key = f"sk-avo-scripted-{secrets.token_hex(12)}"
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY")}
    env[KEY_ENV] = key
    script = [t for p in PLANS for t in turns_for(p)]
    expected_paths = [ENDPOINT[p.provider] for p in PLANS for _ in range(TURNS + p.rate_limited)]
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="avo-scripted-") as tmp, FakeLLMServer(script) as srv:
        cfg_path = Path(tmp) / "config.yaml"
        cfg_path.write_text(yaml.safe_dump(config(srv, a.device, out), sort_keys=False))
        print(f"scripted LLM server on 127.0.0.1:{srv.port} ({len(script)} turns); lineage {out}", flush=True)
        t0 = time.monotonic()
        code, log = run_evolve(cfg_path, env, a.timeout_min * 60)
        wall = time.monotonic() - t0
        paths = [r.path for r in srv.requests]
        auth = [r.headers.get("x-api-key") or r.headers.get("authorization", "") for r in srv.requests]
        remaining = srv.remaining
    if code != 0:
        problems.append(f"avo evolve exited {code}")
    if remaining:
        problems.append(f"{remaining} scripted turns were not consumed")
    if paths != expected_paths:
        short = lambda ps: " ".join("A" if x == ENDPOINT["anthropic"] else "O" if x == ENDPOINT["openai"] else x for x in ps)  # noqa: E731
        problems.append(f"requests out of script order (A anthropic, O openai): expected {short(expected_paths)}, "
                        f"got {short(paths)}")
    if not auth or not all(key in h for h in auth):
        problems.append("the dummy key did not reach the server on every request")
    records: list[AttemptRecord] = []
    if (out / ".git").exists():
        with Lineage.open(out) as lin:
            records = lin.attempts()
    if len(records) != len(PLANS):
        problems.append(f"{len(records)} attempts logged, {len(PLANS)} scripted")

    per_turn_usd = (USAGE["input_tokens"] * PRICE_IN + USAGE["output_tokens"] * PRICE_OUT) / 1e6
    rows: list[dict[str, Any]] = []
    for plan, rec in zip(PLANS, records):
        tr = Path(rec.transcript) if rec.transcript else None
        evals = evaluations(tr) if tr and tr.exists() else []
        turns = turn_events(tr) if tr and tr.exists() else []
        retries = [r for t in turns for r in t.get("retries", [])]
        g = rec.gate
        row = dict(attempt=rec.id, island=rec.island, operator=rec.operator, provider=plan.provider,
                   change=f"{plan.search} -> {plan.replace}", status=rec.status, accepted=rec.accepted,
                   commit=rec.commit, note=rec.note, evaluate_calls=evals, retries=retries,
                   gate=None if g is None else dict(gain=g.gain, noise=g.noise, threshold=g.threshold, rounds=g.rounds,
                                                    best_ms=g.best_ms, cand_ms=g.cand_ms, per_workload=g.per_workload),
                   speedup_vs_seed=rec.speedup_vs_seed, tokens=rec.tokens, cost_usd=rec.cost_usd, turns=len(turns),
                   transcript=str(tr) if tr else None, error=rec.error[:300])
        rows.append(row)
        bad = lambda msg: problems.append(f"{rec.id} ({plan.provider}): {msg}")  # noqa: E731
        if rec.operator != OPERATOR[plan.provider]:
            bad(f"operator {rec.operator}, expected {OPERATOR[plan.provider]}")
        if rec.status not in ("PASSED", "REJECTED") or g is None:
            bad(f"did not reach the gate: {rec.status}: {(rec.error or rec.note)[:200]}")
        if [e["status"] for e in evals] != ["COMPILE_ERROR", "PASSED"]:
            bad(f"agent evaluations {[e['status'] for e in evals]}, expected COMPILE_ERROR then PASSED")
        if len(turns) != TURNS or rec.tokens != TURNS * sum(USAGE.values()) or \
                not math.isclose(rec.cost_usd, TURNS * per_turn_usd, rel_tol=1e-6):
            bad(f"accounting: {len(turns)} turns, {rec.tokens} tokens, ${rec.cost_usd:.6f}")
        if len(retries) != int(plan.rate_limited):
            bad(f"{len(retries)} retries recorded, expected {int(plan.rate_limited)}")
    leaks = key_leaks(key, out, {"avo evolve output": log}) if out.exists() else []
    if leaks:
        problems.append(f"the API key was written to: {', '.join(leaks[:5])}")

    print(f"\n== agentic scripted run: device {a.device}, {len(rows)} attempts, {wall:.0f} s, lineage {out}")
    for r in rows:
        print(f"{r['attempt']} island {r['island']} {r['operator']} ({r['provider']}): {r['change']}")
        for i, e in enumerate(r["evaluate_calls"], 1):
            err = f" | {e['error']}" if e["error"] and e["status"] != "PASSED" else ""
            print(f"   evaluate {i}: {e['status']} [{e['hardware']}] {fmt_ms(e['ms'])}{err}")
        g = r["gate"]
        if g:
            ab = ", ".join(f"{w} {g['best_ms'].get(w, math.nan):.4f} -> {g['cand_ms'].get(w, math.nan):.4f} ms"
                           for w in g["best_ms"])
            verdict = f"COMMITTED {r['commit'][:8]} ({r['speedup_vs_seed']:.3f}x vs seed)" if r["accepted"] else "REJECTED"
            print(f"   gate: {verdict}; gain {g['gain']:+.2%} (noise {g['noise']:.2%}, threshold {g['threshold']:.2%}, "
                  f"{g['rounds']} rounds); A/B {ab}")
        else:
            print(f"   gate: not reached: {r['status']}: {(r['error'] or r['note'])[:120]}")
        print(f"   {r['turns']} turns, {r['tokens']} tokens, ${r['cost_usd']:.4f}, "
              f"retries {[x['error'][:40] for x in r['retries']]}; transcript {r['transcript']}")
    ep = Counter(paths)
    print(f"server requests: {dict(ep)} ({len(paths)} total); turns left {remaining}; "
          f"LLM cost ${sum(r['cost_usd'] for r in rows):.4f}, {sum(r['tokens'] for r in rows)} tokens; "
          f"key in files: {'YES' if leaks else 'no'}")
    print("OK" if not problems else "PROBLEMS:\n  " + "\n  ".join(problems))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(dict(device=a.device, lineage=str(out), wall_s=round(wall, 1), exit_code=code,
                                          requests=dict(ep), turns_left=remaining, attempts=rows, problems=problems),
                                     indent=1, default=str))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
