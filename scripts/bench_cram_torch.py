#!/usr/bin/env python3
"""PyTorch baseline of cramming: the paper's seed protocol, one text at a time.

Follows Kuratov et al. 2025 ("Cramming 1568 Tokens into a Single Vector") as their code runs
it: the model (here the SmolLM2 GGUF, de-quantised by transformers to float32) is loaded and
frozen, then for one text of L tokens a single trainable [mem] vector (randn * std of the
input-embedding matrix) is prepended to the text's token embeddings and optimised with
AdamW(lr 1e-2, betas (0.9, 0.9), weight decay 0.01) on the mean next-token cross-entropy
over the text (the vector predicts the first token, as cram's default `full` convention).
Every step does forward, loss, token accuracy (argmax; the protocol stops on accuracy 1.0),
backward and the optimiser step.

Timing: 1 untimed warm-up step, then the median of --steps steps. The seed protocol loads the
model once per text, so its texts per hour are

    texts_per_hour = 3600 / (load_s + S * step_s)

with load_s the measured model load time (from_pretrained of the GGUF, de-quantisation
included; the model is loaded twice and the second, warm load is used, so one-off import and
file-cache costs are not counted), step_s the median step time and S = --steps-per-text (default 1000, as
`cram bench cram`). `texts_per_hour_no_reload` leaves load_s out.

Texts: with --texts FILE (JSON lines {"len": L, "index": i, "ids": [...]}, as written by
`cram bench cram --dump-texts FILE`) the first text of each length is used; otherwise random
token ids (the step time does not depend on the tokens).

With --json, one line per length in the schema of `cram bench cram --json`:
  {"impl": "pytorch", "bench": "cram", "batch": 1, "len": L, "ms_per_step": ..., "gflops": ...,
   "steps_per_text": S, "texts_per_hour": ..., "load_s": ..., "texts_per_hour_no_reload": ...}
GFLOP/s counts 4 x parameters x (L + 1) per step (forward 2, backward to the inputs 2).

Usage:
  python scripts/bench_cram_torch.py [--threads 2] [--lens 64 128] [--steps 10]
                                     [--steps-per-text 1000] [--texts FILE] [--json]
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


def load_model(gguf, attn):
    from transformers import AutoModelForCausalLM

    d, fname = os.path.split(os.path.abspath(gguf))
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=fname, dtype=torch.float32, attn_implementation=attn)
    model.eval()
    model.requires_grad_(False)
    return model, time.perf_counter() - t0


def read_texts(path):
    by_len = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                by_len.setdefault(rec["len"], rec["ids"])
    return by_len


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gguf", default=DEFAULT_GGUF)
    ap.add_argument("--lens", type=int, nargs="+", default=[64, 128], help="text lengths L in tokens")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per length (after 1 warm-up step)")
    ap.add_argument("--steps-per-text", type=int, default=1000, help="steps a text is assumed to need (S)")
    ap.add_argument("--texts", help="JSON lines of token ids from `cram bench cram --dump-texts`")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="transformers attention implementation")
    ap.add_argument("--json", action="store_true", help="print one JSON line per length")
    args = ap.parse_args()
    if args.steps < 1 or args.steps_per_text < 1:
        ap.error("--steps and --steps-per-text must be at least 1")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import transformers

    transformers.utils.logging.disable_progress_bar()

    # The first load also pays one-off costs (lazy imports, file cache); the seed protocol's
    # per-text reload is the second one.
    model, first_load_s = load_model(args.gguf, args.attn)
    del model
    model, load_s = load_model(args.gguf, args.attn)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    n_params = sum(p.numel() for p in model.parameters())  # tied matrices counted once
    emb = model.get_input_embeddings()
    H = model.config.hidden_size
    V = model.config.vocab_size
    emb_std = emb.weight.std().item()
    texts = read_texts(args.texts) if args.texts else {}
    backend = f"torch {torch.__version__}"
    if not args.json:
        print(
            f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
            f"attn {args.attn}, hidden {H}, vocab {V}, parameters {n_params}, model load {load_s:.2f} s "
            f"(first load {first_load_s:.2f} s)",
            file=sys.stderr,
        )

    n_mem = 1
    for L in args.lens:
        g = torch.Generator().manual_seed(L)
        if L in texts:
            ids = torch.tensor(texts[L], dtype=torch.long)
            assert ids.numel() == L, f"--texts: text of len {L} has {ids.numel()} ids"
        else:
            ids = torch.randint(0, V, (L,), generator=g)
        ids = ids.unsqueeze(0)
        with torch.no_grad():
            text_emb = emb(ids)  # [1, L, H], constant
        mem = torch.nn.Parameter(torch.randn(1, n_mem, H, generator=g) * emb_std)
        opt = torch.optim.AdamW([mem], lr=1e-2, betas=(0.9, 0.9), eps=1e-8, weight_decay=0.01)

        def step():
            opt.zero_grad(set_to_none=True)
            x = torch.cat([mem, text_emb], dim=1)
            logits = model(inputs_embeds=x, use_cache=False).logits
            # Position n_mem - 1 + j predicts token j.
            pred_logits = logits[0, n_mem - 1 : n_mem - 1 + L]
            loss = F.cross_entropy(pred_logits, ids[0])
            acc = (pred_logits.argmax(-1) == ids[0]).float().mean().item()
            loss.backward()
            opt.step()
            return loss.item(), acc

        step()  # warm-up
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            loss, acc = step()
            times.append(time.perf_counter() - t0)
        assert torch.isfinite(mem).all()
        s = statistics.median(times)
        S = args.steps_per_text
        rec = {
            "impl": "pytorch",
            "bench": "cram",
            "batch": 1,
            "len": L,
            "ms_per_step": round(s * 1000.0, 3),
            "gflops": round(4.0 * n_params * (L + n_mem) / s / 1e9, 3),
            "steps_per_text": S,
            "texts_per_hour": round(3600.0 / (load_s + S * s), 3),
            "load_s": round(load_s, 3),
            "first_load_s": round(first_load_s, 3),
            "texts_per_hour_no_reload": round(3600.0 / (S * s), 3),
            "n_mem": n_mem,
            "timed_steps": args.steps,
            "final_accuracy": round(acc, 3),
            "backend": backend,
            "threads": torch.get_num_threads(),
        }
        if args.json:
            print(json.dumps(rec), flush=True)
        else:
            print(
                f"pytorch seed protocol L={L}: {s * 1000:.1f} ms/step (median of {args.steps}; min "
                f"{min(times) * 1000:.1f}, max {max(times) * 1000:.1f}), {rec['gflops']:.1f} GFLOP/s; at {S} steps/text "
                f"with a {load_s:.2f} s model load per text: {rec['texts_per_hour']:.1f} texts/hour "
                f"({rec['texts_per_hour_no_reload']:.1f} without the reload); accuracy after {args.steps + 1} steps {acc:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
