#!/usr/bin/env python3
"""Reference fixtures for cram's LayerNorm-family architectures: GPT-NeoX (Pythia), GPT-2, OPT.

Same conventions and the same reference code path as `make_fixtures.py` (whose helpers this
script imports): transformers (float32, eager attention) is the ground truth; every model is a
small random-initialised model saved with `save_pretrained` next to the fixture tokenizer, plus
`reference.json` / `reference.safetensors` (logits, a right-padded batch, greedy ids, the
gradient with respect to one prepended input vector).

Models (hidden 64, 2 layers, 4 heads, the 400-token fixture tokenizer):
  pythia_parallel   GPT-NeoX, use_parallel_residual=true, rotary_pct 0.25, gelu_new; v5 config keys.
  pythia_serial     GPT-NeoX, use_parallel_residual=false, rotary_pct 0.25, rotary_emb_base 1000,
                    gelu (exact); the config holds the classic Pythia keys (rotary_pct,
                    rotary_emb_base) instead of rope_parameters.
  gpt2_gelu_new     GPT-2, gelu_new, n_inner unset (4 * n_embd), scaled attention.
  gpt2_relu_unscaled GPT-2, relu, n_inner 96, scale_attn_weights=false,
                    scale_attn_by_inverse_layer_idx=true, layer_norm_epsilon 1e-6.
  opt_proj          OPT, word_embed_proj_dim 32 < hidden_size 64 (project_in/out), pre-LN, relu.
  opt_postln        OPT, do_layer_norm_before=false (post-LN, no final norm), enable_bias=false,
                    layer_norm_elementwise_affine=false, gelu.

GGUF files (llama.cpp's tensor names and metadata, written as convert_hf_to_gguf.py does, f32,
with the fixture tokenizer as `tokenizer.ggml.*` metadata) under <out>/gguf/:
  gpt2_gelu_new.gguf, pythia_serial.gguf

Usage:
  python scripts/make_fixtures_ln.py [--out tests/fixtures] [--only NAME ...]
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402

import gguf  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    OPTConfig,
    OPTForCausalLM,
)

ALL = ["pythia_parallel", "pythia_serial", "gpt2_gelu_new", "gpt2_relu_unscaled", "opt_proj", "opt_postln"]
GGUF_MODELS = {"gpt2_gelu_new": "gpt2", "pythia_serial": "gptneox"}


def reinit_ln_(model, seed, std=0.2):
    """Deterministic re-initialisation with a large std so the logits are far from zero:
    LayerNorm scales 1 + N(0, 0.1^2), LayerNorm shifts N(0, 0.1^2), everything else N(0, std^2)."""
    g = torch.Generator().manual_seed(seed)
    norm_params = set()
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            norm_params.update(id(p) for p in m.parameters())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if id(p) in norm_params:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


def summary(model) -> dict:
    """The `config` entry of reference.json, under the field names the Rust test checks."""
    c = model.config
    rp = getattr(c, "rope_parameters", None)
    return {
        "model_type": c.model_type,
        "hidden_size": c.hidden_size,
        "input_size": int(model.get_input_embeddings().weight.shape[1]),
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_attention_heads,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_position_embeddings,
        "rope_parameters": dict(rp) if isinstance(rp, dict) else None,
        "tie_word_embeddings": bool(getattr(c, "tie_word_embeddings", False)),
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
    }


def build_model(name, tok):
    """The config and model for one fixture."""
    common = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=None)
    if name.startswith("pythia"):
        parallel = name == "pythia_parallel"
        cfg = GPTNeoXConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=128, layer_norm_eps=1e-5, use_parallel_residual=parallel,
            hidden_act="gelu_new" if parallel else "gelu", tie_word_embeddings=False,
            rotary_pct=0.25, rotary_emb_base=10000 if parallel else 1000, **common,
        )
        return cfg, GPTNeoXForCausalLM(cfg)
    if name.startswith("gpt2"):
        if name == "gpt2_gelu_new":
            extra = dict(activation_function="gelu_new", n_inner=None, scale_attn_weights=True,
                         layer_norm_epsilon=1e-5)
        else:
            extra = dict(activation_function="relu", n_inner=96, scale_attn_weights=False,
                         scale_attn_by_inverse_layer_idx=True, layer_norm_epsilon=1e-6)
        cfg = GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128, **extra, **common)
        return cfg, GPT2LMHeadModel(cfg)
    if name == "opt_proj":
        cfg = OPTConfig(
            hidden_size=64, word_embed_proj_dim=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
            max_position_embeddings=128, do_layer_norm_before=True, activation_function="relu", **common,
        )
        return cfg, OPTForCausalLM(cfg)
    if name == "opt_postln":
        cfg = OPTConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128, max_position_embeddings=128,
            do_layer_norm_before=False, enable_bias=False, layer_norm_elementwise_affine=False,
            activation_function="gelu", **common,
        )
        return cfg, OPTForCausalLM(cfg)
    raise ValueError(name)


def legacy_pythia_keys(path):
    """Real Pythia checkpoints name the rotary settings `rotary_pct` / `rotary_emb_base`;
    transformers v5 reads them (and writes `rope_parameters`). Rewrite the config that way."""
    with open(path, encoding="utf-8") as fh:
        c = json.load(fh)
    rp = c.pop("rope_parameters")
    c["rotary_pct"] = rp["partial_rotary_factor"]
    c["rotary_emb_base"] = rp["rope_theta"]
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(c, fh, indent=2, sort_keys=True)
        fh.write("\n")


# ----------------------------------------------------------------------------------------
# GGUF (as llama.cpp's convert_hf_to_gguf.py writes GPT-2 and GPT-NeoX)
# ----------------------------------------------------------------------------------------


def add_tokenizer_metadata(w, folder, tok):
    raw = json.load(open(os.path.join(folder, "tokenizer.json"), encoding="utf-8"))
    merges = raw["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    tokens = tok.convert_ids_to_tokens(list(range(len(tok))))
    special = set(tok.all_special_ids)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_add_bos_token(True)


def write_gguf(name, arch, model, tok, folder, out_dir):
    c = model.config
    n_layer = c.num_hidden_layers
    march = {"gpt2": gguf.MODEL_ARCH.GPT2, "gptneox": gguf.MODEL_ARCH.GPTNEOX}[arch]
    names = gguf.get_tensor_name_map(march, n_layer)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.gguf")
    w = gguf.GGUFWriter(path, arch)
    w.add_name(name)
    w.add_block_count(n_layer)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_head_count(c.num_attention_heads)
    if arch == "gpt2":
        w.add_feed_forward_length(c.n_inner or 4 * c.hidden_size)
        w.add_layer_norm_eps(c.layer_norm_epsilon)
    else:
        hd = c.hidden_size // c.num_attention_heads
        rp = c.rope_parameters
        w.add_feed_forward_length(c.intermediate_size)
        w.add_rope_dimension_count(int(rp["partial_rotary_factor"] * hd))
        w.add_rope_freq_base(float(rp["rope_theta"]))
        w.add_parallel_residual(c.use_parallel_residual)
        w.add_layer_norm_eps(c.layer_norm_eps)
    add_tokenizer_metadata(w, folder, tok)
    n, h = c.num_attention_heads, c.hidden_size
    for hf_name, t in model.state_dict().items():
        if hf_name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        t = t.detach().float().clone()
        if arch == "gpt2" and hf_name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
            t = t.transpose(0, 1)  # Conv1D [in, out] -> [out, in]
        if arch == "gptneox" and ".attention.query_key_value." in hf_name:
            # per-head interleaved q,k,v rows -> all q, all k, all v
            if hf_name.endswith(".weight"):
                t = t.reshape(n, 3, h // n, h)
                t = torch.cat([t[:, j].reshape(-1, h) for j in range(3)], dim=0)
            else:
                t = t.reshape(n, 3, h // n)
                t = torch.cat([t[:, j].reshape(-1) for j in range(3)], dim=0)
        g_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert g_name is not None, hf_name
        w.add_tensor(g_name, t.contiguous().numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"   wrote {path} ({os.path.getsize(path)} bytes)")


# ----------------------------------------------------------------------------------------


def make(name, out_dir, tok, seed):
    mf.seed_everything(seed)
    cfg, model = build_model(name, tok)
    reinit_ln_(model, seed)
    if getattr(cfg, "tie_word_embeddings", False):
        model.tie_weights()
        assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    model.eval()

    folder = os.path.join(out_dir, name)
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    if name == "pythia_serial":
        legacy_pythia_keys(os.path.join(folder, "config.json"))

    # Reload exactly what the Rust side will read, and use that for the references.
    model2 = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model2.requires_grad_(False)
    tok2 = AutoTokenizer.from_pretrained(folder)
    sd1, sd2 = model.state_dict(), model2.state_dict()
    assert sd1.keys() == sd2.keys(), (sd1.keys() ^ sd2.keys())
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k
    if name.startswith("pythia"):
        assert model2.config.rope_parameters == model.config.rope_parameters
        assert torch.equal(model.gpt_neox.rotary_emb.inv_freq, model2.gpt_neox.rotary_emb.inv_freq)
        print(f"   rope {model2.config.rope_parameters}, inv_freq {model2.gpt_neox.rotary_emb.inv_freq.tolist()}")
    raw = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    for t in mf.SMALL_TOKENIZER_TEXTS:
        assert tok(t)["input_ids"] == tok2(t)["input_ids"] == raw.encode(t).ids, t

    ref, tensors = mf.build_reference(
        name, model2, tok2, mf.SMALL_LOGIT_TEXTS, mf.SMALL_BATCH_TEXTS, mf.SMALL_GREEDY_PROMPTS,
        mf.SMALL_GRAD_TEXT, None, summary=summary,
    )
    ref["tokenizer"] = mf.tokenizer_cases(tok2, mf.SMALL_TOKENIZER_TEXTS)
    ref["init_seed"] = seed
    ref = mf.reorder(ref)
    mf.write_reference(folder, ref, tensors)
    mf.summarize(name, model2, ref, tensors)
    s = tensors["logits_0"].std().item()
    print(f"   logits_0 std = {s:.3f}")
    assert s > 0.5
    if name in GGUF_MODELS:
        write_gguf(name, GGUF_MODELS[name], model2, tok2, folder, os.path.join(out_dir, "gguf"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures"))
    ap.add_argument("--only", nargs="*", default=None, help="subset of: " + " ".join(ALL))
    args = ap.parse_args()
    out = os.path.normpath(args.out)
    want = args.only or ALL
    torch.use_deterministic_algorithms(True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, gguf {gguf.__name__}")
    mf.seed_everything(0)
    tok = mf.train_tiny_tokenizer()
    for i, name in enumerate(ALL):
        if name in want:
            make(name, out, tok, seed=10 + i)


if __name__ == "__main__":
    main()
