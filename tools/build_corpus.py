"""Build the embedded model's training corpus and saelab's shipped text sample.

Sources (all from Debian packages, available offline from the package registry):
  * python3.11-doc        - the Python 3.11 documentation's reST sources (PSF License)
  * libpython3.11-stdlib  - Python 3.11 standard-library source code (PSF License)
  * jargon-text           - The Jargon File 4.4.7 (public domain)

Usage:
    python tools/build_corpus.py --debs DIR --out build/corpus

DIR holds the three .deb files (`apt-get download python3.11-doc libpython3.11-stdlib jargon-text`).
Writes OUT/{train,test}.jsonl (the model's corpus, split by document) and the shipped sample
saelab/assets/texts/{train,test}.jsonl.gz (about 1 MB, a subset of the same split).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import re
import subprocess
import tempfile
from pathlib import Path

TEST_EVERY = 20          # one document in 20 (by hash) is held out
MIN_CHARS, MAX_CHARS = 120, 1500
SAMPLE_TRAIN_CHARS, SAMPLE_TEST_CHARS = 800_000, 200_000
ASSETS = Path(__file__).resolve().parents[1] / "saelab" / "assets" / "texts"


def _chunks(blocks: list[str], max_chars: int = MAX_CHARS) -> list[str]:
    """Greedily join consecutive blocks into chunks of at most max_chars."""
    out, cur = [], ""
    for block in blocks:
        if cur and len(cur) + len(block) + 2 > max_chars:
            out.append(cur)
            cur = ""
        cur = f"{cur}\n\n{block}" if cur else block
    if cur:
        out.append(cur)
    return [c[:max_chars] for c in out if len(c) >= MIN_CHARS]


def rst_documents(root: Path) -> list[tuple[str, str]]:
    docs = []
    for path in sorted(root.rglob("*.rst.txt")):
        text = path.read_text(encoding="utf-8", errors="replace")
        blocks = [b.strip("\n") for b in re.split(r"\n\s*\n", text) if b.strip()]
        for i, chunk in enumerate(_chunks(blocks)):
            docs.append((f"pydoc:{path.relative_to(root)}#{i}", chunk))
    return docs


def code_documents(root: Path) -> list[tuple[str, str]]:
    docs = []
    for path in sorted(p for p in root.rglob("*.py") if p.is_file()):
        if "test" in path.parts or "tests" in path.parts:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        # split at top-level definitions so that each chunk is a function / class / module header
        blocks = [b.strip("\n") for b in re.split(r"\n(?=(?:def |class |@))", text) if b.strip()]
        for i, chunk in enumerate(_chunks(blocks)):
            docs.append((f"stdlib:{path.relative_to(root)}#{i}", chunk))
    return docs


def jargon_documents(path: Path) -> list[tuple[str, str]]:
    text = gzip.open(path, "rt", encoding="utf-8", errors="replace").read()
    entries = re.split(r"\n(?=   :[^:\n]+:)", text)
    docs = []
    for entry in entries:
        m = re.match(r"\s*:([^:\n]+):", entry)
        if not m:
            continue
        paras = [" ".join(line.strip() for line in p.splitlines()) for p in re.split(r"\n\s*\n", entry)]
        body = "\n\n".join(p for p in paras if p).replace("{", "").replace("}", "")
        body = re.sub(r"^:([^:\n]+):", r"\1:", body)
        if "│" in body or "─" in body:
            continue  # tables in the front matter
        for i, chunk in enumerate(_chunks(body.split("\n\n"))):
            docs.append((f"jargon:{m.group(1).strip()}#{i}", chunk))
    return docs


def is_test(doc_id: str) -> bool:
    return int(hashlib.sha1(doc_id.encode()).hexdigest(), 16) % TEST_EVERY == 0


def kind_of(doc_id: str) -> str:
    return "code" if doc_id.startswith("stdlib:") else "prose"


def write_jsonl(path: Path, docs: list[dict], compress: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if compress else open
    with opener(path, "wt", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")


def sample(docs: list[dict], budget: int, rng: random.Random) -> list[dict]:
    """Random documents up to `budget` characters, balanced between prose and code."""
    out = []
    for kind, share in (("prose", 0.6), ("code", 0.4)):
        pool = [d for d in docs if d["kind"] == kind]
        rng.shuffle(pool)
        used = 0
        for d in pool:
            if used >= budget * share:
                break
            out.append(d)
            used += len(d["text"])
    rng.shuffle(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--debs", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("build/corpus"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for deb in sorted(args.debs.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        raw = (rst_documents(root / "usr/share/doc/python3.11/html/_sources")
               + code_documents(root / "usr/lib/python3.11")
               + jargon_documents(root / "usr/share/doc/jargon-text/jargon.txt.gz"))
    docs = {"train": [], "test": []}
    for doc_id, text in raw:
        docs["test" if is_test(doc_id) else "train"].append({"id": doc_id, "kind": kind_of(doc_id), "text": text})
    rng = random.Random(args.seed)
    for split, budget in (("train", SAMPLE_TRAIN_CHARS), ("test", SAMPLE_TEST_CHARS)):
        rng.shuffle(docs[split])
        write_jsonl(args.out / f"{split}.jsonl", docs[split])
        write_jsonl(ASSETS / f"{split}.jsonl.gz", sample(docs[split], budget, rng), compress=True)
        n_chars = sum(len(d["text"]) for d in docs[split])
        print(f"{split}: {len(docs[split])} documents, {n_chars / 1e6:.1f} M chars")


if __name__ == "__main__":
    main()
