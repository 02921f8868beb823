"""The knowledge base the agents search: `knowledge_base/**/*.md` with YAML front matter
(`title`, `tags`, `applies_to`). Documents are split into sections at markdown headings and
ranked with BM25 (a TF-IDF variant) over the section text plus its document's title and tags."""
from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Optional

import yaml
from pydantic import BaseModel, Field

from avo.tasks import REPO_ROOT

DEFAULT_KB_DIR = REPO_ROOT / "knowledge_base"
_WORD = re.compile(r"[a-z0-9_]+")


class KBError(Exception):
    pass


class KBDoc(BaseModel):
    path: str  # relative to the knowledge-base root
    title: str
    tags: list[str] = Field(default_factory=list)
    applies_to: list[str] = Field(default_factory=list)
    body: str


class KBSection(BaseModel):
    doc: str  # KBDoc.path
    heading: str
    text: str


class KBHit(BaseModel):
    path: str
    title: str
    heading: str
    tags: list[str]
    score: float
    snippet: str


def stem(w: str) -> str:
    """A crude suffix stripper: decode/decoding/decoded, cache/caches, kernel/kernels meet."""
    for suf in ("ation", "ing", "ed", "es", "s"):
        if len(w) > len(suf) + 3 and w.endswith(suf) and not w.endswith("ss"):
            w = w[:-len(suf)]
            break
    return w[:-1] if len(w) > 4 and w.endswith("e") else w


def tokens(text: str) -> list[str]:
    """Lower-case stemmed words; identifiers like num_warps also yield their parts."""
    out: list[str] = []
    for w in _WORD.findall(text.lower()):
        parts = [w] + ([p for p in w.split("_") if p] if "_" in w else [])
        for p in parts:
            p = stem(p)
            if len(p) >= 2:
                out.append(p)
    return out


def parse_doc(path: Path, root: Path) -> KBDoc:
    text = path.read_text(encoding="utf-8")
    meta: dict = {}
    body = text
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end < 0:
            raise KBError(f"{path}: front matter opened with --- but never closed")
        try:
            meta = yaml.safe_load(text[3:end]) or {}
        except yaml.YAMLError as e:
            raise KBError(f"{path}: bad front matter: {' '.join(str(e).split())}") from None
        body = text[end + 4:].lstrip("\n")
    rel = path.relative_to(root).as_posix()
    listify = lambda v: [str(x) for x in v] if isinstance(v, list) else ([str(v)] if v else [])
    return KBDoc(path=rel, title=str(meta.get("title") or path.stem), tags=listify(meta.get("tags")),
                 applies_to=listify(meta.get("applies_to")), body=body)


def split_sections(doc: KBDoc) -> list[KBSection]:
    out, heading, buf = [], doc.title, []
    for line in doc.body.splitlines():
        if line.startswith("#"):
            if "".join(buf).strip():
                out.append(KBSection(doc=doc.path, heading=heading, text="\n".join(buf).strip()))
            heading, buf = line.lstrip("#").strip(), []
        else:
            buf.append(line)
    if "".join(buf).strip():
        out.append(KBSection(doc=doc.path, heading=heading, text="\n".join(buf).strip()))
    return out


class KnowledgeBase:
    K1, B = 1.4, 0.5

    def __init__(self, root: Optional[Path] = None):
        self.root = Path(root or DEFAULT_KB_DIR)
        if not self.root.is_dir():
            raise KBError(f"knowledge base folder {self.root} does not exist")
        self.docs = {d.path: d for d in (parse_doc(p, self.root) for p in sorted(self.root.rglob("*.md"))
                                         if p.name.lower() != "readme.md")}
        self.sections = [s for d in self.docs.values() for s in split_sections(d)]
        self._tf: list[Counter] = []
        for s in self.sections:
            d = self.docs[s.doc]
            # The section's heading counts three times, the document's title and tags once each.
            self._tf.append(Counter(tokens(s.text) + 3 * tokens(s.heading) + tokens(" ".join([d.title] + d.tags))))
        n = len(self.sections)
        df = Counter(t for tf in self._tf for t in tf)
        self._idf = {t: math.log(1 + (n - c + 0.5) / (c + 0.5)) for t, c in df.items()}
        self._len = [sum(tf.values()) for tf in self._tf]
        self._avg = (sum(self._len) / n) if n else 1.0

    def all_tags(self) -> list[str]:
        return sorted({t for d in self.docs.values() for t in d.tags})

    def search(self, query: str, tags: Optional[list[str]] = None, k: int = 5) -> list[KBHit]:
        q = set(tokens(query))
        want = {t.lower() for t in tags or []}
        hits = []
        for i, s in enumerate(self.sections):
            d = self.docs[s.doc]
            if want and not want & {t.lower() for t in d.tags}:
                continue
            tf = self._tf[i]
            score = 0.0
            for t in q:
                f = tf.get(t, 0)
                if f:
                    score += self._idf[t] * f * (self.K1 + 1) / (f + self.K1 * (1 - self.B + self.B * self._len[i] / self._avg))
            if score > 0 or (want and not q):
                hits.append(KBHit(path=s.doc, title=d.title, heading=s.heading, tags=d.tags, score=round(score, 3),
                                  snippet=_snippet(s.text, q)))
        hits.sort(key=lambda h: -h.score)
        return hits[:k]

    def read(self, path: str) -> KBDoc:
        path = path.strip().lstrip("./")
        if path in self.docs:
            return self.docs[path]
        by_name = [d for p, d in self.docs.items() if p.endswith("/" + path) or Path(p).stem == Path(path).stem]
        if len(by_name) == 1:
            return by_name[0]
        raise KBError(f"no knowledge-base document {path!r}; kb_search returns the paths")


def _snippet(text: str, q: set[str], width: int = 360) -> str:
    """The lines around the first line that mentions a query word."""
    lines = [l for l in text.splitlines() if l.strip()]
    best = next((i for i, l in enumerate(lines) if q & set(tokens(l))), 0)
    out = " ".join(" ".join(lines[max(0, best - 1):best + 3]).split())
    return out[:width] + ("..." if len(out) > width else "")
