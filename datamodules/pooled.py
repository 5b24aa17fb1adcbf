"""Several corpora as one: `data=pooled` for label-free pretraining on a pool (and cross-corpus evaluation).

Each member corpus goes through its own parser and manifest (its own quality checks and report);
the records are concatenated. Speaker ids are already corpus-qualified (`emodb:03`, `ased:12`), so
two corpora never share a speaker, and the pool refuses a member listed twice rather than double its
clips. The pool is described by `corpus_options.corpora`, a list of `{corpus, root, options}`:

    python train.py experiment=contrastive_mtl data=pooled \
      'data.corpus_options.corpora=[{corpus: emodb, root: /data/emodb}, {corpus: ased, root: /data/ased}]'
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from datamodules.records import ClipRecord

POOLED = "pooled"


def pool_members(options: Mapping[str, Any] | None) -> list[dict]:
    """`corpus_options.corpora` checked: each member has a corpus name and (except synthetic) an existing root."""
    members = list((options or {}).get("corpora") or [])
    if not members:
        raise ValueError("data=pooled needs data.corpus_options.corpora: a list of {corpus: <name>, root: <folder>} "
                         "(see datamodules/pooled.py)")
    out, seen = [], Counter()
    for i, m in enumerate(members):
        if not isinstance(m, Mapping) or "corpus" not in m:
            raise ValueError(f"data.corpus_options.corpora[{i}]={m!r}: expected a mapping with a 'corpus' key "
                             "(and 'root', optionally 'options')")
        unknown = set(m) - {"corpus", "root", "options"}
        if unknown:
            raise ValueError(f"data.corpus_options.corpora[{i}]: unknown key(s) {sorted(unknown)}; "
                             "expected corpus, root, options")
        corpus, root = str(m["corpus"]), m.get("root")
        if corpus == POOLED:
            raise ValueError(f"data.corpus_options.corpora[{i}]: a pool cannot contain another pool")
        if corpus != "synthetic" and (root is None or not Path(str(root)).exists()):
            raise FileNotFoundError(f"data.corpus_options.corpora[{i}].root={root!r} ({corpus}) does not exist: "
                                    "set it to the folder of that corpus (see docs/corpora.md)")
        seen[corpus] += 1
        out.append({"corpus": corpus, "root": None if root is None else str(root), "options": dict(m.get("options") or {})})
    twice = [c for c, n in seen.items() if n > 1]
    if twice:
        raise ValueError(f"data.corpus_options.corpora lists {twice} more than once: every clip would count twice")
    return out


def pooled_records(options: Mapping[str, Any] | None, load: Callable[..., list[ClipRecord]],
                   **load_kwargs: Any) -> list[ClipRecord]:
    """Every member's records (through `load(corpus, root, options=..., **load_kwargs)`), concatenated."""
    records: list[ClipRecord] = []
    owner: dict[str, str] = {}
    for m in pool_members(options):
        part = load(m["corpus"], m["root"] or "", options=m["options"], **load_kwargs)
        for r in part:
            prev = owner.setdefault(r.speaker, m["corpus"])
            if prev != m["corpus"]:  # parsers qualify speaker ids; a clash means one does not
                raise ValueError(f"speaker id {r.speaker!r} occurs in {prev} and {m['corpus']}: speaker ids must be "
                                 "corpus-qualified (ClipRecord.speaker)")
        records.extend(part)
    return records


def pooled_roots(options: Mapping[str, Any] | None) -> dict[str, str]:
    """{corpus: resolved root} of the members: what checkpoints record as the corpora they learned from."""
    return {m["corpus"]: str(Path(m["root"]).resolve()) if m["root"] else "" for m in pool_members(options)}


def corpus_of(speaker: str) -> str:
    """The corpus part of a corpus-qualified speaker id ("emodb:03" -> "emodb")."""
    return str(speaker).split(":", 1)[0]


def per_corpus_counts(records: Sequence[ClipRecord]) -> dict[str, dict[str, int]]:
    clips, speakers = Counter(), {}
    for r in records:
        c = corpus_of(r.speaker)
        clips[c] += 1
        speakers.setdefault(c, set()).add(r.speaker)
    return {c: {"clips": clips[c], "speakers": len(speakers[c])} for c in sorted(clips)}
