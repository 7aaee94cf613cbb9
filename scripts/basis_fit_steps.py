"""Prints the joint fitting steps recorded in a basis file (a safetensors
file: an 8-byte header length, the JSON header, whose metadata entry
`cram-basis` holds `fit_steps`).

Usage: python3 scripts/basis_fit_steps.py RUN_DIR/basis.safetensors
"""
import json
import sys

with open(sys.argv[1], "rb") as f:
    head = json.loads(f.read(int.from_bytes(f.read(8), "little")))
print(json.loads(head["__metadata__"]["cram-basis"])["fit_steps"])
