#!/usr/bin/env python3
"""PyTorch baseline: forward + backward to the input embeddings on SmolLM2-135M.

The GGUF is loaded (de-quantised) by transformers in float32 (or --dtype bfloat16, on
--device cpu or cuda); every weight is frozen
(requires_grad_(False)), so backward only produces d loss / d inputs_embeds, which is the
workload of cramming (optimising input vectors of a frozen LM).

For each batch size B in --batches and length L (--len):
  inputs_embeds ~ randn[B, L, H] * std(embedding matrix), requires_grad
  loss = cross_entropy(logits.view(-1, V), random labels)
  loss.backward()
Timing: --warmup steps (default 2), then the median of --steps steps (default 5).
GFLOP/s counts 4 x parameters x B x L per step (forward 2, backward to the inputs 2).

With --json, one line per configuration in the schema of `cram bench fwd-bwd --json`:
  {"impl": "pytorch", "bench": "fwd_bwd", "batch": B, "len": L, "ms_per_step": ..., "gflops": ...,
   "reps": ..., "backend": "torch X", "threads": N}

Usage:
  python scripts/bench_torch.py [--threads 2] [--gguf PATH | --model DIR] [--json]

--model loads a Hugging Face folder (config.json + safetensors) instead of the GGUF; the
input width is that of the input embedding matrix (OPT's word_embed_proj_dim).
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

DEFAULT_GGUF = os.path.expanduser("~/.cache/cram/models/SmolLM2-135M-Instruct.Q4_1.gguf")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gguf", default=DEFAULT_GGUF)
    ap.add_argument("--model", default=None, help="a Hugging Face model folder (instead of --gguf)")
    ap.add_argument("--json", action="store_true", help="print one JSON line per configuration")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--len", type=int, default=128, dest="length")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="transformers attention implementation")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    dev = torch.device(args.device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from transformers import AutoModelForCausalLM
    import transformers

    transformers.utils.logging.disable_progress_bar()

    if args.model:
        with open(os.path.join(args.model, "config.json")) as f:
            model_type = json.load(f).get("model_type")
        # Mamba has no attention implementation to choose.
        kwargs = {} if model_type == "mamba" else {"attn_implementation": args.attn}
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, **kwargs)
    else:
        d, fname = os.path.split(os.path.abspath(args.gguf))
        model = AutoModelForCausalLM.from_pretrained(
            d, gguf_file=fname, dtype=dtype, attn_implementation=args.attn
        )
    model.to(dev)
    model.eval()
    model.requires_grad_(False)
    assert all(p.dtype == dtype for p in model.parameters())
    H = model.get_input_embeddings().weight.shape[1]
    V = model.config.vocab_size
    emb_std = model.get_input_embeddings().weight.std().item()
    n_params = sum(p.numel() for p in model.parameters())  # tied matrices counted once
    if not args.json:
        print(
            f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
            f"attn {args.attn}, hidden {H}, vocab {V}",
            file=sys.stderr,
        )

    L = args.length
    for B in args.batches:
        g = torch.Generator().manual_seed(B)
        x = (torch.randn(B, L, H, generator=g) * emb_std).to(dev, dtype).requires_grad_(True)
        labels = torch.randint(0, V, (B, L), generator=g).to(dev)
        mask = torch.ones(B, L, dtype=torch.long, device=dev)

        def step():
            x.grad = None
            logits = model(inputs_embeds=x, attention_mask=mask, use_cache=False).logits
            loss = F.cross_entropy(logits.reshape(-1, V).float(), labels.reshape(-1))
            loss.backward()
            return loss.item()  # waits for the device

        for _ in range(args.warmup):
            step()
        times = []
        for _ in range(args.steps):
            sync()
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1000.0)
        assert x.grad is not None and torch.isfinite(x.grad).all()
        ms = statistics.median(times)
        rec = {
            "impl": "pytorch",
            "bench": "fwd_bwd",
            "batch": B,
            "len": L,
            "ms_per_step": round(ms, 3),
            "gflops": round(4.0 * n_params * B * L / (ms / 1000.0) / 1e9, 3),
            "reps": args.steps,
            "backend": f"torch {torch.__version__} {args.device} {args.dtype}",
            "dtype": {"float32": "f32", "bfloat16": "bf16"}[args.dtype],
            "device": args.device,
            "threads": torch.get_num_threads(),
        }
        if args.json:
            print(json.dumps(rec), flush=True)
        else:
            tok_s = B * L / (ms / 1000.0)
            print(
                f"pytorch B={B} L={L}: {ms:.1f} ms/step (median of {args.steps}; min {min(times):.1f}, "
                f"max {max(times):.1f}), {rec['gflops']:.1f} GFLOP/s, {tok_s:.0f} tokens/s",
                flush=True,
            )


if __name__ == "__main__":
    main()
