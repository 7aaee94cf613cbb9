#!/usr/bin/env python3
"""Build the text data shipped in data/ from the shared stand-in data sets.

Standard library only; deterministic (no randomness: the PG-19 sample takes
evenly spaced chunks of each book).

    python3 scripts/make_data_sample.py [--shared ../shared/data] [--out data]

Writes:

* data/pg19_standin_sample.csv: PER_SOURCE chunks of each book of
  pg19_standin.csv (all of a book's chunks when it has fewer), chunk
  floor(i * n / PER_SOURCE) of the book's n chunks for i = 0..PER_SOURCE-1,
  in the order of the full file. Same header (id,source,text) and rows.
* data/modern_prose.csv: a byte copy of modern_prose_2025_2026.csv.
* data/vocab_100k.txt: a byte copy of vocab_100k.txt.
* data/paper_tokens_to_bytes.json: a byte copy of paper_tokens_to_bytes.json.

data/PROVENANCE.md is written by hand (it copies the shared PROVENANCE.md);
this script prints the SHA-256 digests it quotes.
"""

import argparse
import csv
import hashlib
import shutil
import sys
from collections import OrderedDict
from pathlib import Path

PER_SOURCE = 25


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sample_pg19(src: Path, dst: Path) -> None:
    with src.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames
        rows = list(reader)
    by_source = OrderedDict()
    for pos, row in enumerate(rows):
        by_source.setdefault(row["source"], []).append(pos)
    keep = set()
    for positions in by_source.values():
        n = len(positions)
        if n <= PER_SOURCE:
            keep.update(positions)
        else:
            keep.update(positions[i * n // PER_SOURCE] for i in range(PER_SOURCE))
    with dst.open("w", newline="", encoding="utf-8") as f:
        # The shared file ends rows with "\n" and quotes only where needed.
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for pos, row in enumerate(rows):
            if pos in keep:
                writer.writerow(row)
    print(f"{dst}: {len(keep)} of {len(rows)} chunks, {len(by_source)} sources")


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=root.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=root / "data")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    sample_pg19(args.shared / "pg19_standin.csv", args.out / "pg19_standin_sample.csv")
    shutil.copyfile(args.shared / "modern_prose_2025_2026.csv", args.out / "modern_prose.csv")
    shutil.copyfile(args.shared / "vocab_100k.txt", args.out / "vocab_100k.txt")
    shutil.copyfile(
        args.shared / "paper_tokens_to_bytes.json", args.out / "paper_tokens_to_bytes.json"
    )
    for name in [
        args.shared / "pg19_standin.csv",
        args.out / "pg19_standin_sample.csv",
        args.out / "modern_prose.csv",
        args.out / "vocab_100k.txt",
        args.out / "paper_tokens_to_bytes.json",
    ]:
        print(f"sha256 {sha256(name)}  {name.name}  {name.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
