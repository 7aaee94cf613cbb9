"""The convergence study's texts as JSONL (id, text): rows k * n / N of a CSV
for k = 0..N-1, N texts spread over the whole file (crates/cli/examples/
convergence_study.rs picks the same ones).

Usage: python3 scripts/study_texts.py DATA.csv N > texts.jsonl
"""
import csv
import json
import sys

csv.field_size_limit(1 << 30)
rows = list(csv.DictReader(open(sys.argv[1], encoding="utf-8")))
n = int(sys.argv[2])
for k in range(n):
    r = rows[k * len(rows) // n]
    print(json.dumps({"id": r.get("id") or str(k * len(rows) // n), "text": r["text"]}))
