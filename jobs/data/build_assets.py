"""Regenerate the bundled sample corpus, tokenizer and shards in jobs/assets/, byte for byte.

python -m jobs.data.build_assets            # rewrite jobs/assets/
python -m jobs.data.build_assets --check    # rebuild in a temporary folder and compare with jobs/assets/
"""

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

from . import corpus
from .locations import ASSETS_DIR
from .shards import ShardWriter
from .tokenizer import file_sha256, load_tokenizer, train_tokenizer

CORPUS_BYTES_PER_SOURCE = 320 * 1024
# Small shards so that the bundled sources span several files and exercise cross-shard reads.
SHARD_TOKENS = 32 * 1024
BUILT = ("corpus", "shards", "tokenizer.model")


def build(out_dir: str | os.PathLike, corpus_bytes: int = CORPUS_BYTES_PER_SOURCE, vocab_size: int = 4096) -> None:
    out = Path(out_dir)
    for sub in ("corpus", "shards"):
        shutil.rmtree(out / sub, ignore_errors=True)
    (out / "corpus").mkdir(parents=True)
    texts = {source: corpus.generate(source, corpus_bytes) for source in corpus.SOURCES}
    for source, lines in texts.items():
        (out / "corpus" / f"{source}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")

    model = train_tokenizer((line for s in corpus.SOURCES for line in texts[s]), vocab_size=vocab_size, minloglevel=2)
    tokenizer_path = out / "tokenizer.model"
    tokenizer_path.write_bytes(model)
    sp = load_tokenizer(str(tokenizer_path))
    digest = file_sha256(tokenizer_path)
    for source, lines in texts.items():
        with ShardWriter(out / "shards" / source, source, sp.vocab_size(), digest, sp.eos_id(), SHARD_TOKENS) as w:
            for ids in sp.encode(lines):
                w.add_document(ids)


def _built_files(root: Path) -> set[str]:
    """The files under `root` that build() writes; jobs/assets also holds prep/, which jobs.data.prep builds."""
    found = set()
    for name in BUILT:
        path = root / name
        for p in [path] if path.is_file() else path.rglob("*"):
            if p.is_file():
                found.add(str(p.relative_to(root)))
    return found


def _differences(a: Path, b: Path) -> list[str]:
    names_a, names_b = _built_files(a), _built_files(b)
    diffs = [f"only in {a}: {n}" for n in sorted(names_a - names_b)]
    diffs += [f"only in {b}: {n}" for n in sorted(names_b - names_a)]
    diffs += [f"differs: {n}" for n in sorted(names_a & names_b) if not filecmp.cmp(a / n, b / n, shallow=False)]
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ASSETS_DIR), help="assets folder to write (default: jobs/assets)")
    parser.add_argument("--check", action="store_true", help="rebuild elsewhere and compare with --out")
    args = parser.parse_args(argv)
    if not args.check:
        build(args.out)
        print(f"wrote {args.out}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        build(tmp)
        diffs = _differences(Path(tmp), Path(args.out))
    for line in diffs:
        print(line, file=sys.stderr)
    print("assets are up to date" if not diffs else f"{len(diffs)} difference(s)")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
