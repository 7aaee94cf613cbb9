"""Greedy decoding of cram vector files with Hugging Face transformers.

The project's ground truth decodes what cram wrote: for each file, the
layout's fixed token in front (the sink, when the file's layout has one),
then the file's vectors, as `inputs_embeds` of the model loaded by
transformers from the same GGUF file; greedy generation of the file's
`n_tokens` tokens (the `paper` loss convention gives the first one); and the
generated ids' SHA-256 (little-endian u32, as `cram` hashes them) against
the file's `tokens_sha256`, the ids of the text it holds. Files whose
numbers are `z` under a shared basis (`--low-dim` with a learned, random or
PCA basis) are refused: decode them with `cram decompress`.

Usage: python3 scripts/decode_torch.py [--gguf PATH] FILE...
Needs: pip install torch transformers gguf accelerate safetensors
Prints one line per file and exits 1 if any file does not decode to its
text.
"""

import argparse
import hashlib
import json
import os
import struct
import sys

import torch

DEFAULT_GGUF = os.path.expanduser("~/.cache/cram/models/SmolLM2-135M-Instruct.Q4_1.gguf")


def read_file(path):
    """The file's cram metadata and its vectors [n_mem, width]."""
    from safetensors.torch import load_file

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    meta = json.loads(header["__metadata__"]["cram"])
    return meta, load_file(path)["mem"].to(torch.float32)


def tokens_sha256(ids):
    return hashlib.sha256(b"".join(struct.pack("<I", i) for i in ids)).hexdigest()


@torch.no_grad()
def greedy(model, embed, prefix, ids, count):
    """`count` ids greedily after `prefix` embeddings and the given `ids`."""
    x = torch.cat([prefix] + [embed(torch.tensor([i])) for i in ids], 0).unsqueeze(0)
    out = model(inputs_embeds=x, use_cache=True)
    ids = list(ids)
    while len(ids) < count:
        nxt = int(out.logits[0, -1].argmax())
        ids.append(nxt)
        if len(ids) == count:
            break
        out = model(
            inputs_embeds=embed(torch.tensor([[nxt]])),
            past_key_values=out.past_key_values,
            use_cache=True,
        )
    return ids


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=DEFAULT_GGUF, help="the model's GGUF file")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    d, fname = os.path.split(os.path.abspath(args.gguf))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=fname, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    embed = model.get_input_embeddings()
    bad = 0
    for path in args.files:
        meta, vectors = read_file(path)
        low = meta["config"].get("low_dim")
        if low and low["basis"] != "own":
            sys.exit(f"{path}: holds z under a shared basis ({low['basis']}); decode it with cram decompress")
        sink = meta.get("layout", {}).get("sink")
        parts = ([embed(torch.tensor([sink]))] if sink is not None else []) + [vectors]
        given = [meta["first_token"]] if meta["loss"] == "paper" else []
        ids = greedy(model, embed, torch.cat(parts, 0), given, meta["n_tokens"])
        ok = tokens_sha256(ids) == meta["tokens_sha256"]
        bad += not ok
        print(f"{path}: {meta['n_tokens']} tokens, transformers greedy decoding {'matches' if ok else 'DIFFERS FROM'} the text")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
