#!/usr/bin/env python3
"""Generate Mamba reference fixtures for the `cram` Rust crate from Hugging Face transformers.

transformers' MambaForCausalLM (float32, CPU: its slow path `torch_forward`-style sequential
scan, as no CUDA kernels are installed) is the ground truth. The reference quantities (logits,
a right-padded batch, greedy generation, the gradient with respect to a prepended vector) are
computed by `build_reference` of scripts/make_fixtures.py, with the same conventions as the
Llama fixtures; see scripts/README.md.

Models (random init, fixed seeds, 2 layers, hidden 64, the tiny BPE tokenizer of
make_fixtures.py):
  mamba_tied         state_size 16, conv_kernel 4, expand 2, time_step_rank "auto" (4),
                     conv bias, no in/out projection bias, tied embeddings. Also written as
                     GGUF (`model.gguf`, llama.cpp's `mamba` layout, tensors in f32).
  mamba_untied_bias  state_size 8, conv_kernel 3, expand 3, time_step_rank 6, in/out
                     projection biases, no conv bias, untied embeddings.

Usage:
  python scripts/make_fixtures_mamba.py [--out tests/fixtures] [--only NAME ...]
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, MambaConfig, MambaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402

NAMES = ["mamba_tied", "mamba_untied_bias"]


def mamba_config_summary(model) -> dict:
    c = model.config
    return {
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_hidden_layers,
        "state_size": c.state_size,
        "conv_kernel": c.conv_kernel,
        "intermediate_size": c.intermediate_size,
        "time_step_rank": int(c.time_step_rank),
        "vocab_size": c.vocab_size,
        "layer_norm_epsilon": float(c.layer_norm_epsilon),
        "use_bias": bool(c.use_bias),
        "use_conv_bias": bool(c.use_conv_bias),
        "residual_in_fp32": bool(c.residual_in_fp32),
        "tie_word_embeddings": bool(getattr(c, "tie_word_embeddings", False)),
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
    }


def reinit_mamba_(model, seed):
    """make_fixtures' N(0, 0.2^2) re-initialisation, then Mamba-like A and dt: A_log near
    log(1..N) (so A = -exp(A_log) spans decay rates) and dt_proj.bias so that softplus(dt) is
    around 0.3; the final norm's scale is 1 + N(0, 0.1^2); logits are far from zero and the recurrence is stable."""
    mf.reinit_(model, seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        # `norm_f` is not caught by reinit_'s norm-name test.
        model.backbone.norm_f.weight.copy_(1.0 + 0.1 * torch.randn(model.config.hidden_size, generator=g))
        for layer in model.backbone.layers:
            m = layer.mixer
            n = m.A_log.shape[1]
            base = torch.log(torch.arange(1, n + 1, dtype=torch.float32))[None, :]
            m.A_log.copy_(base + 0.2 * torch.randn(m.A_log.shape, generator=g))
            m.dt_proj.bias.copy_(-1.0 + 0.5 * torch.randn(m.dt_proj.bias.shape, generator=g))
            m.D.copy_(1.0 + 0.2 * torch.randn(m.D.shape, generator=g))


def write_gguf(folder, model, tok):
    """The model as llama.cpp's converter writes a `mamba` GGUF (f32 tensors), with the
    tokenizer as a `gpt2` BPE vocabulary."""
    import gguf

    c = model.config
    path = os.path.join(folder, "model.gguf")
    w = gguf.GGUFWriter(path, "mamba")
    w.add_name("cram mamba fixture")
    w.add_context_length(2**20)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(0)
    w.add_head_count(0)
    w.add_block_count(c.num_hidden_layers)
    w.add_ssm_conv_kernel(c.conv_kernel)
    w.add_ssm_inner_size(c.intermediate_size)
    w.add_ssm_state_size(c.state_size)
    w.add_ssm_time_step_rank(int(c.time_step_rank))
    w.add_layer_norm_rms_eps(c.layer_norm_epsilon)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    tj = json.load(open(os.path.join(folder, "tokenizer.json"), encoding="utf-8"))
    vocab = tj["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    special = {a["id"] for a in tj["added_tokens"] if a["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))])
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_add_bos_token(True)

    names = {
        "norm": "attn_norm",
        "mixer.in_proj": "ssm_in",
        "mixer.conv1d": "ssm_conv1d",
        "mixer.x_proj": "ssm_x",
        "mixer.dt_proj": "ssm_dt",
        "mixer.out_proj": "ssm_out",
    }
    sd = model.state_dict()
    w.add_tensor("token_embd.weight", sd["backbone.embeddings.weight"].numpy())
    for i in range(c.num_hidden_layers):
        p = f"backbone.layers.{i}."
        for hf, gg in names.items():
            for suffix in ("weight", "bias"):
                k = f"{p}{hf}.{suffix}"
                if k in sd:
                    t = sd[k]
                    if gg == "ssm_conv1d" and suffix == "weight":
                        t = t.squeeze(1)  # [D, 1, K] -> [D, K], as the converter does
                    w.add_tensor(f"blk.{i}.{gg}.{suffix}", t.numpy().copy())
        w.add_tensor(f"blk.{i}.ssm_a", (-torch.exp(sd[p + "mixer.A_log"])).numpy())
        w.add_tensor(f"blk.{i}.ssm_d", sd[p + "mixer.D"].numpy().copy())
    w.add_tensor("output_norm.weight", sd["backbone.norm_f.weight"].numpy())
    if not c.tie_word_embeddings:
        w.add_tensor("output.weight", sd["lm_head.weight"].numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"   wrote {path} ({os.path.getsize(path)} bytes)")


def make_mamba(name, out_dir, tok, seed, gguf_too, **cfg_kwargs):
    mf.seed_everything(seed)
    cfg = MambaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        layer_norm_epsilon=1e-5,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
        use_mambapy=False,
        use_associative_scan=False,
        **cfg_kwargs,
    )
    model = MambaForCausalLM(cfg)
    reinit_mamba_(model, seed)
    if cfg.tie_word_embeddings:
        model.tie_weights()
        assert model.lm_head.weight.data_ptr() == model.backbone.embeddings.weight.data_ptr()
    else:
        assert model.lm_head.weight.data_ptr() != model.backbone.embeddings.weight.data_ptr()
    model.eval()

    folder = os.path.join(out_dir, name)
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)

    model2 = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model2.requires_grad_(False)
    tok2 = AutoTokenizer.from_pretrained(folder)
    sd1, sd2 = model.state_dict(), model2.state_dict()
    assert sd1.keys() == sd2.keys()
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k

    # build_reference is shared with the Llama fixtures; only its config summary differs.
    mf.config_summary = mamba_config_summary
    ref, tensors = mf.build_reference(
        name, model2, tok2, mf.SMALL_LOGIT_TEXTS, mf.SMALL_BATCH_TEXTS, mf.SMALL_GREEDY_PROMPTS,
        mf.SMALL_GRAD_TEXT, None,
    )
    ref["init_seed"] = seed
    ref = mf.reorder(ref)
    mf.write_reference(folder, ref, tensors)
    c = ref["config"]
    print(f"== {name}: {c}")
    for e in ref["greedy"]:
        print(f"   greedy {e['prompt'][:30]!r} -> {e['token_ids']} eos={e['stopped_at_eos']}")
    print(f"   grad loss={ref['grad']['loss']:.6f} |grad|={tensors['grad'].norm():.6e}")
    s = tensors["logits_0"].std().item()
    print(f"   logits_0 std = {s:.3f}, max |logit| = {tensors['logits_0'].abs().max().item():.3f}")
    assert s > 0.5
    if gguf_too:
        write_gguf(folder, model2, tok2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures"))
    ap.add_argument("--only", nargs="*", default=None, help="subset of: " + " ".join(NAMES))
    args = ap.parse_args()
    out = os.path.normpath(args.out)
    want = set(args.only or NAMES)
    torch.use_deterministic_algorithms(True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__}")
    mf.seed_everything(0)
    tok = mf.train_tiny_tokenizer()
    if "mamba_tied" in want:
        make_mamba(
            "mamba_tied", out, tok, seed=11, gguf_too=True,
            state_size=16, conv_kernel=4, expand=2, time_step_rank="auto",
            use_bias=False, use_conv_bias=True, tie_word_embeddings=True,
        )
    if "mamba_untied_bias" in want:
        make_mamba(
            "mamba_untied_bias", out, tok, seed=12, gguf_too=False,
            state_size=8, conv_kernel=3, expand=3, time_step_rank=6,
            use_bias=True, use_conv_bias=False, tie_word_embeddings=False,
        )


if __name__ == "__main__":
    main()
