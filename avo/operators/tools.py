"""The agent's tools. Each tool is defined once (name, description, pydantic argument model,
function) and rendered for both providers through `ToolSpec`. Tools act on a `ToolEnv`: the
step's workspace (the candidate kernel), the run's lineage (read-only git), the knowledge base
and the evaluator. A tool returns text for the model; `ToolError` text goes back as an error
result and the loop continues."""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from avo.operators.base import LineageView, StepContext
from avo.operators.knowledge import KBError, KnowledgeBase
from avo.operators.llm import ToolCall, ToolSpec
from avo.tasks import source_hash

MAX_RESULT_CHARS = 12000
_REF = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./~^@{}-]*$")


class ToolError(Exception):
    """A tool call that cannot be done; the message goes back to the model as an error result."""


class EvalRecord(BaseModel):
    hash: str
    status: str
    speedup_vs_best: Optional[float] = None


@dataclass
class ToolEnv:
    workspace: Path
    view: LineageView
    ctx: StepContext
    parent_source: str
    kb: Optional[KnowledgeBase] = None
    repo: Any = None  # git.Repo of the lineage, or None
    max_evaluations: int = 8
    critique: Optional[Callable[[str], str]] = None  # kernel source -> critique prompt (first submit)
    profiler: Optional[Callable[[str, Optional[str]], str]] = None  # (source, workload) -> summary
    shell_timeout_s: Optional[float] = None  # the most a shell command may run; None: no shell tool
    evaluations: list[EvalRecord] = field(default_factory=list)
    critiqued: bool = False
    submitted: Optional[str] = None  # the note, once submit is accepted
    gave_up: Optional[str] = None

    @property
    def kernel_path(self) -> Path:
        return self.workspace / self.view.kernel_name

    def kernel_source(self) -> str:
        return self.kernel_path.read_text() if self.kernel_path.exists() else ""

    def local(self, path: str) -> Path:
        p = Path(path or ".")
        if p.is_absolute() or ".." in p.parts:
            raise ToolError(f"path {path!r} must be relative to the workspace, without '..'")
        return self.workspace / p


# ---- argument models (their JSON schema is what the model sees) ----
class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ListFilesArgs(_Args):
    ref: Optional[str] = Field(None, description="lineage commit/branch; omit for the workspace")


class ReadFileArgs(_Args):
    path: str = Field(description="file path (workspace-relative, or inside the lineage when ref is given)")
    ref: Optional[str] = Field(None, description="lineage commit/branch to read from; omit for the workspace")
    start_line: Optional[int] = Field(None, ge=1)
    end_line: Optional[int] = Field(None, ge=1)


class EditArgs(_Args):
    path: str = Field(description="workspace file to edit, e.g. kernel.py")
    search: str = Field(description="exact text to replace; must occur exactly once (include context lines)")
    replace: str = Field(description="replacement text")


class WriteFileArgs(_Args):
    path: str
    content: str = Field(description="the whole new file content")


class EvaluateArgs(_Args):
    path: Optional[str] = Field(None, description="workspace kernel to evaluate; default: the step's kernel file")


class ShellArgs(_Args):
    command: str = Field(description="bash command line, run in the workspace folder (e.g. "
                         "'python -c ...', 'TRITON_INTERPRET=1 python bench.py', a compile with PTX dump)")
    timeout_s: Optional[float] = Field(None, gt=0, description="seconds before the command is killed; "
                                       "default and maximum: the operator's shell limit")


class LineageLogArgs(_Args):
    ref: Optional[str] = Field(None, description="branch/commit; omit for all branches")
    n: int = Field(20, ge=1, le=200)


class LineageShowArgs(_Args):
    ref: str = Field(description="commit or branch")


class LineageDiffArgs(_Args):
    a: str = Field(description="older commit")
    b: str = Field(description="newer commit")
    path: Optional[str] = None


class KBSearchArgs(_Args):
    query: str = Field(description="keywords, e.g. 'persistent kernel launch overhead'")
    tags: list[str] = Field(default_factory=list, description="only documents with one of these tags")
    k: int = Field(5, ge=1, le=20)


class KBReadArgs(_Args):
    path: str = Field(description="document path from kb_search")


class ProfileArgs(_Args):
    workload: Optional[str] = Field(None, description="workload uuid; default: the largest GPU workload")


class SubmitArgs(_Args):
    note: str = Field(description="one line: what changed and why it should be faster (the commit subject)")


class GiveUpArgs(_Args):
    reason: str


# ---- tool functions ----
def _numbered(text: str, start: int = 1, end: Optional[int] = None) -> str:
    lines = text.splitlines()
    end = min(end or len(lines), len(lines))
    return "\n".join(f"{i:5d}  {lines[i - 1]}" for i in range(start, end + 1))


def _git(env: ToolEnv, *args: str) -> str:
    if env.repo is None:
        raise ToolError("this run has no lineage repository yet")
    try:
        return env.repo.git.execute(["git", *args])
    except Exception as e:  # GitCommandError and friends: the message is the useful part
        raise ToolError(f"git {' '.join(args[:2])} failed: {' '.join(str(getattr(e, 'stderr', e)).split())[:400]}") from None


def _ref(ref: str) -> str:
    if not _REF.match(ref or ""):
        raise ToolError(f"bad ref {ref!r}: a commit hash or branch name")
    return ref


def list_files(env: ToolEnv, a: ListFilesArgs) -> str:
    if a.ref:
        return _git(env, "ls-tree", "-r", "--name-only", _ref(a.ref))
    files = sorted(p.relative_to(env.workspace).as_posix() for p in env.workspace.rglob("*")
                   if p.is_file() and not any(part.startswith((".", "__pycache__")) for part in p.relative_to(env.workspace).parts))
    return "\n".join(files) or "(empty workspace)"


def read_file(env: ToolEnv, a: ReadFileArgs) -> str:
    if a.ref:
        if a.path.startswith("/") or ".." in a.path.split("/"):
            raise ToolError(f"bad path {a.path!r}")
        text = _git(env, "show", f"{_ref(a.ref)}:{a.path}")
    else:
        p = env.local(a.path)
        if not p.is_file():
            raise ToolError(f"{a.path}: no such file in the workspace (list_files shows what exists)")
        text = p.read_text(errors="replace")
    n = len(text.splitlines())
    head = f"{a.path}{' @ ' + a.ref if a.ref else ''}: {n} lines (line numbers are not part of the file)\n"
    return head + _numbered(text, a.start_line or 1, a.end_line)


def nearest_line(text: str, search: str) -> str:
    """Where the first line of `search` most nearly occurs, to say how the search text differs."""
    want = next((l for l in search.splitlines() if l.strip()), "").strip()
    if not want:
        return ""
    lines = text.splitlines()
    scored = [(difflib.SequenceMatcher(None, want, l.strip()).ratio(), i) for i, l in enumerate(lines)]
    if not scored:
        return ""
    ratio, i = max(scored)
    return f" Nearest line {i + 1} ({ratio:.0%} similar): {lines[i].strip()!r}; your first line: {want!r}."


def edit(env: ToolEnv, a: EditArgs) -> str:
    p = env.local(a.path)
    if not p.is_file():
        raise ToolError(f"{a.path}: no such file in the workspace")
    if not a.search:
        raise ToolError("search is empty: give the exact text to replace (use write_file to rewrite a whole file)")
    text = p.read_text()
    count = text.count(a.search)
    if count == 0:
        raise ToolError(f"search text not found in {a.path} (it must match exactly, whitespace included)."
                        + nearest_line(text, a.search))
    if count > 1:
        at = [text[:m.start()].count("\n") + 1 for m in re.finditer(re.escape(a.search), text)]
        raise ToolError(f"search text found {count} times in {a.path} (lines {', '.join(map(str, at))}); "
                        "include more surrounding lines so it matches exactly once")
    new = text.replace(a.search, a.replace, 1)
    p.write_text(new)
    line = text[:text.index(a.search)].count("\n") + 1
    return f"edited {a.path} at line {line}: {len(a.search.splitlines())} lines -> {len(a.replace.splitlines())} lines"


def write_file(env: ToolEnv, a: WriteFileArgs) -> str:
    p = env.local(a.path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(a.content)
    return f"wrote {a.path} ({len(a.content.splitlines())} lines)"


def evaluate(env: ToolEnv, a: EvaluateArgs) -> str:
    from avo.operators.feedback import format_report
    if env.ctx.evaluate is None:
        raise ToolError("no evaluator in this step")
    if len(env.evaluations) >= env.max_evaluations:
        raise ToolError(f"evaluation limit reached ({env.max_evaluations} this step): submit or give_up")
    p = env.local(a.path or env.view.kernel_name)
    if not p.is_file():
        raise ToolError(f"{p.name}: no such file in the workspace")
    src = p.read_text()
    try:
        rep = env.ctx.evaluate(src)
    except Exception as e:  # HarnessError: the evaluator itself failed, not the kernel
        raise ToolError(f"evaluator failed: {' '.join(str(e).split())[:600]}") from None
    text, vs_best = format_report(rep, env.view.best.latencies_ms)
    env.evaluations.append(EvalRecord(hash=source_hash(src), status=rep.status.value, speedup_vs_best=vs_best))
    return text + f"\n(evaluation {len(env.evaluations)} of at most {env.max_evaluations} this step)"


def shell(env: ToolEnv, a: ShellArgs) -> str:
    if env.ctx.run_shell is None or env.shell_timeout_s is None:
        raise ToolError("no shell in this step")
    if not a.command.strip():
        raise ToolError("command is empty")
    limit = min(a.timeout_s or env.shell_timeout_s, env.shell_timeout_s)
    try:
        res = env.ctx.run_shell(a.command, env.workspace, limit)
    except Exception as e:  # the folder could not be shipped, the evaluator actor was lost, ...
        raise ToolError(f"shell failed: {' '.join(str(e).split())[:600]}") from None
    return res.text()


def lineage_log(env: ToolEnv, a: LineageLogArgs) -> str:
    return _git(env, "log", "--format=%h %ad %d %s", "--date=short", "-n", str(a.n), _ref(a.ref) if a.ref else "--all")


def lineage_show(env: ToolEnv, a: LineageShowArgs) -> str:
    ref = _ref(a.ref)
    out = _git(env, "show", "--stat", "--format=commit %H%nDate: %ad%n%n%B", ref)
    notes = _git(env, "for-each-ref", "--format=%(refname)", "refs/notes").split()
    for nref in notes:
        try:
            note = env.repo.git.execute(["git", "notes", f"--ref={nref}", "show", ref])
        except Exception:
            continue
        out += f"\n--- note {nref} ---\n{note}"
    return out


def lineage_diff(env: ToolEnv, a: LineageDiffArgs) -> str:
    args = ["diff", _ref(a.a), _ref(a.b)]
    if a.path:
        args += ["--", a.path]
    return _git(env, *args) or "(no difference)"


def kb_search(env: ToolEnv, a: KBSearchArgs) -> str:
    if env.kb is None:
        raise ToolError("no knowledge base in this run")
    hits = env.kb.search(a.query, a.tags, a.k)
    if not hits:
        return f"no matches for {a.query!r}; known tags: {', '.join(env.kb.all_tags())}"
    return "\n\n".join(f"[{h.score:.2f}] {h.path} :: {h.heading}  (tags: {', '.join(h.tags)})\n  {h.snippet}" for h in hits)


def kb_read(env: ToolEnv, a: KBReadArgs) -> str:
    if env.kb is None:
        raise ToolError("no knowledge base in this run")
    try:
        d = env.kb.read(a.path)
    except KBError as e:
        raise ToolError(str(e)) from None
    return f"# {d.title}\n(tags: {', '.join(d.tags)}; applies to: {', '.join(d.applies_to) or 'all'})\n\n{d.body}"


def profile(env: ToolEnv, a: ProfileArgs) -> str:
    if env.profiler is None:
        raise ToolError("profiling is not available here (needs a GPU and ncu)")
    return env.profiler(env.kernel_source(), a.workload)


def submit(env: ToolEnv, a: SubmitArgs) -> str:
    src = env.kernel_source()
    if not src.strip():
        raise ToolError(f"{env.view.kernel_name} is empty")
    if src == env.parent_source:
        raise ToolError(f"{env.view.kernel_name} is unchanged from the parent version: edit it first, or give_up")
    h = source_hash(src)
    if h in env.view.seen_hashes:
        raise ToolError("this exact kernel was already tried on this task: change it, or give_up")
    if env.critique is not None and not env.critiqued:
        env.critiqued = True  # the first submit gets a critique; calling submit again confirms
        return env.critique(src)
    env.submitted = " ".join(a.note.split()) or "agentic edit"
    return "submitted: the gate will re-measure it against the island best"


def give_up(env: ToolEnv, a: GiveUpArgs) -> str:
    env.gave_up = " ".join(a.reason.split()) or "no reason given"
    return "step ended"


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    args: type[BaseModel]
    run: Callable[[ToolEnv, Any], str]

    def spec(self) -> ToolSpec:
        schema = _strip_titles(self.args.model_json_schema())
        schema.setdefault("properties", {})
        return ToolSpec(name=self.name, description=self.description, parameters=schema)


def _strip_titles(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip_titles(v) for k, v in obj.items() if k != "title"}
    if isinstance(obj, list):
        return [_strip_titles(v) for v in obj]
    return obj


ALL_TOOLS = [
    Tool("list_files", "List files of the workspace, or of a lineage commit when ref is given.", ListFilesArgs, list_files),
    Tool("read_file", "Read a file (with line numbers) from the workspace or from a lineage commit.", ReadFileArgs, read_file),
    Tool("edit", "Replace one exact occurrence of `search` with `replace` in a workspace file.", EditArgs, edit),
    Tool("write_file", "Create or overwrite a workspace file.", WriteFileArgs, write_file),
    Tool("evaluate", "Run the real evaluator on the kernel: correctness on every workload, timing, speedup, % of SOL.", EvaluateArgs, evaluate),
    Tool("shell", "Run a bash command in the workspace folder: compile a variant and dump PTX/SASS, "
         "micro-benchmark a fragment, a quick Python check. stdout+stderr come back (head and tail of long "
         "output) with the exit code; the command is killed at its time limit. No network, no API keys; writes "
         "only inside the workspace and the compile caches. GPU use waits its turn like an evaluation. "
         "`evaluate` gives the verdict that counts.", ShellArgs, shell),
    Tool("lineage_log", "Commits of the run's lineage (accepted versions), newest first.", LineageLogArgs, lineage_log),
    Tool("lineage_show", "One lineage commit: message, files, notes (traces).", LineageShowArgs, lineage_show),
    Tool("lineage_diff", "Diff between two lineage commits.", LineageDiffArgs, lineage_diff),
    Tool("kb_search", "Search the knowledge base (hardware facts, Triton and attention techniques, measured anchors).", KBSearchArgs, kb_search),
    Tool("kb_read", "Read one knowledge-base document.", KBReadArgs, kb_read),
    Tool("profile", "Profile the current kernel with Nsight Compute: a short summary (SOL %, memory, occupancy).", ProfileArgs, profile),
    Tool("submit", "Hand the current kernel to the commit gate. The first call returns a critique to answer; call again to confirm.", SubmitArgs, submit),
    Tool("give_up", "End this step without a proposal.", GiveUpArgs, give_up),
]


def tools_for(env: ToolEnv) -> list[Tool]:
    """The tools that work in this environment (profile only with a profiler, lineage only with a
    repo, shell only where the step offers one and the operator allows it)."""
    skip = set()
    if env.profiler is None:
        skip.add("profile")
    if env.repo is None:
        skip |= {"lineage_log", "lineage_show", "lineage_diff"}
    if env.kb is None:
        skip |= {"kb_search", "kb_read"}
    if env.ctx.run_shell is None or env.shell_timeout_s is None:
        skip.add("shell")
    return [t for t in ALL_TOOLS if t.name not in skip]


def run_tool(env: ToolEnv, tools: list[Tool], call: ToolCall) -> tuple[str, bool]:
    """(result text, is_error). Unknown tools, bad arguments and tool failures come back as text."""
    by_name = {t.name: t for t in tools}
    tool = by_name.get(call.name)
    if tool is None:
        return f"unknown tool {call.name!r}; available: {', '.join(by_name)}", True
    if call.parse_error:
        return f"{call.name}: {call.parse_error}", True
    try:
        args = tool.args.model_validate(call.arguments)
    except ValidationError as e:
        probs = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'arguments'}: {x['msg']}" for x in e.errors())
        return f"{call.name}: bad arguments: {probs}", True
    try:
        out = tool.run(env, args)
    except ToolError as e:
        return f"{call.name}: {e}", True
    if len(out) > MAX_RESULT_CHARS:
        out = out[:MAX_RESULT_CHARS] + f"\n[... {len(out) - MAX_RESULT_CHARS} more characters cut; read a line range]"
    return out, False
