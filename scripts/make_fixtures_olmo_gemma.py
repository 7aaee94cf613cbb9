#!/usr/bin/env python3
"""Reference fixtures for cram's OLMo and Gemma 3 implementations, from transformers.

Reuses the helpers of make_fixtures.py (same tokenizer, texts, reference quantities and file
layout; see scripts/README.md). Writes under <out>/:

  olmo_clip            tiny OLMo: GQA (4 q / 2 kv heads), untied, clip_qkv = 1.0 (most q/k/v
                       entries are clamped).
  olmo_plain           tiny OLMo: MHA, tied embeddings, attention bias, no clip_qkv.
  gemma3_swa_softcap   tiny Gemma 3 (Gemma3ForCausalLM): 3 layers sliding/full/sliding with a
                       window of 4 tokens, local rope base 1e4, global rope base 1e6 with linear
                       scaling 4, query_pre_attn_scalar 24, final_logit_softcapping 30,
                       attn_logit_softcapping 50 (which transformers' Gemma 3 does not apply),
                       GQA, tied embeddings.
  gemma3_plain         tiny Gemma 3: 2 layers from the legacy sliding_window_pattern = 2
                       (sliding, full), window 6, default rope, no soft-capping, untied, MHA.
  olmo_clip_gguf       olmo_clip's weights and tokenizer written as a llama.cpp `olmo` GGUF
                       (f32) with the gguf package's GGUFWriter, laid out as llama.cpp's converter
                       does; no transformers reference (transformers cannot load OLMo GGUFs).
  gemma3_270m          the real Gemma 3 270M Q4_K_M GGUF, de-quantised by transformers (the GGUF
                       is not copied; logits are stored for the first 2048 vocabulary entries plus
                       the argmax over the whole vocabulary).

Usage:
  python scripts/make_fixtures_olmo_gemma.py [--gguf PATH] [--out tests/fixtures] [--only NAME ...]
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402

import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    OlmoConfig,
    OlmoForCausalLM,
)

DEFAULT_GEMMA_GGUF = os.path.expanduser("~/.cache/cram/models/gemma-3-270m-q4_k_m.gguf")
GEMMA_VOCAB_SLICE = 2048

GEMMA_LOGIT_TEXTS = [
    "The capital of France is Paris, and the capital of Germany is",
    "Once upon a time, a small robot woke up in a quiet workshop and wondered where everyone had gone.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
]
GEMMA_GREEDY_PROMPTS = [
    "The capital of France is",
    "Once upon a time,",
    "def fibonacci(n):",
]

_base_config_summary = mf.config_summary


def config_summary(model):
    """make_fixtures' summary, with Gemma 3's per-layer-type rope parameters and switches."""
    c = model.config
    if c.model_type != "gemma3_text":
        return _base_config_summary(model)
    rp = dict(c.rope_parameters)
    flat = dict(c.rope_parameters["full_attention"])
    c.rope_parameters = flat
    try:
        out = _base_config_summary(model)
    finally:
        c.rope_parameters = rp
    out["rope_parameters"] = rp
    out.update(
        {
            "layer_types": list(c.layer_types),
            "sliding_window": c.sliding_window,
            "query_pre_attn_scalar": c.query_pre_attn_scalar,
            "final_logit_softcapping": c.final_logit_softcapping,
            "attn_logit_softcapping": c.attn_logit_softcapping,
        }
    )
    return out


mf.config_summary = config_summary


def make_tiny(name, out_dir, tok, seed, config_cls, model_cls, **cfg_kwargs):
    """As make_fixtures.make_tiny, for any config/model class."""
    mf.seed_everything(seed)
    kw = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        initializer_range=0.2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=None,
    )
    kw.update(cfg_kwargs)
    cfg = config_cls(**kw)
    model = model_cls(cfg)
    mf.reinit_(model, seed)
    if cfg.tie_word_embeddings:
        model.tie_weights()
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.eval()

    folder = os.path.join(out_dir, name)
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)

    model2 = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model2.requires_grad_(False)
    assert type(model2) is model_cls, type(model2)
    tok2 = AutoTokenizer.from_pretrained(folder)
    sd1, sd2 = model.state_dict(), model2.state_dict()
    assert sd1.keys() == sd2.keys()
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k

    ref_tok = mf.tokenizer_cases(tok2, mf.SMALL_TOKENIZER_TEXTS)
    ref, tensors = mf.build_reference(
        name, model2, tok2, mf.SMALL_LOGIT_TEXTS, mf.SMALL_BATCH_TEXTS, mf.SMALL_GREEDY_PROMPTS,
        mf.SMALL_GRAD_TEXT, None,
    )
    ref["tokenizer"] = ref_tok
    ref["init_seed"] = seed
    ref["architecture"] = model2.config.model_type
    ref = mf.reorder(ref)
    mf.write_reference(folder, ref, tensors)
    mf.summarize(name, model2, ref, tensors)
    s = tensors["logits_0"].std().item()
    print(f"   logits_0 std = {s:.3f}")
    assert s > 0.5
    return model2


def check_olmo_clip(model, clip):
    """The clamp must matter: count clamped q/k/v entries on a text."""
    hits = []
    attn = model.model.layers[0].self_attn
    hook = attn.q_proj.register_forward_hook(lambda m, i, o: hits.append((o.abs() > clip).float().mean().item()))
    with torch.no_grad():
        model(input_ids=torch.arange(2, 14)[None])
    hook.remove()
    print(f"   clip_qkv {clip}: fraction of layer-0 queries beyond the clip = {hits[0]:.2f}")
    assert hits[0] > 0.2


def check_gemma_window(model, window, tok):
    """The sliding window must matter: the logits change when it is widened."""
    ids = torch.tensor([tok(mf.SMALL_LOGIT_TEXTS[1])["input_ids"]])
    assert ids.shape[1] > window
    with torch.no_grad():
        a = model(input_ids=ids).logits
        old = model.config.sliding_window
        model.config.sliding_window = 10_000
        b = model(input_ids=ids).logits
        model.config.sliding_window = old
    d = (a - b).abs().max().item()
    print(f"   sliding window {window}: widening it changes the logits by up to {d:.3f}")
    assert d > 1e-2


def make_gemma_270m(gguf_path, out_dir):
    mf.seed_everything(0)
    d, fname = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=fname, dtype=torch.float32, attn_implementation="eager")
    model.requires_grad_(False)
    c = model.config
    print(
        f"gemma3_270m: {type(model).__name__}, layer_types={c.layer_types}, sliding_window={c.sliding_window}, "
        f"rope={c.rope_parameters}, query_pre_attn_scalar={c.query_pre_attn_scalar}, "
        f"softcap={c.final_logit_softcapping}/{c.attn_logit_softcapping}, eos={model.generation_config.eos_token_id}"
    )
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    ref_tok = mf.tokenizer_cases(tok, mf.SMOLLM_TOKENIZER_TEXTS)
    ref, tensors = mf.build_reference(
        "gemma3_270m", model, tok, GEMMA_LOGIT_TEXTS, mf.SMOLLM_BATCH_TEXTS, GEMMA_GREEDY_PROMPTS,
        mf.SMOLLM_GRAD_TEXT, GEMMA_VOCAB_SLICE,
    )
    ref["tokenizer"] = ref_tok
    ref["gguf_file"] = fname
    ref["logits_vocab_slice"] = GEMMA_VOCAB_SLICE
    ref["architecture"] = c.model_type
    ref = mf.reorder(ref)
    folder = os.path.join(out_dir, "gemma3_270m")
    mf.write_reference(folder, ref, tensors)
    mf.summarize("gemma3_270m", model, ref, tensors)


def llama_cpp_permute(w, n_head, n_head_kv):
    """llama.cpp's convert_hf_to_gguf.py `LlamaModel.permute` (also used for OLMo): the
    interleaved rotary row order of GGUF q/k weights."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_olmo_gguf(src_folder, out_folder):
    """Writes the `olmo_clip` fixture as a llama.cpp `olmo` GGUF (f32 tensors, gpt2 tokenizer),
    the way llama.cpp's converter lays it out (permuted q/k rows, clamp_kqv, no norm tensors).
    transformers cannot load OLMo GGUFs, so the Rust test compares it with the folder."""
    import json

    import numpy as np
    from gguf import GGUFWriter, TokenType
    from safetensors.numpy import load_file

    with open(os.path.join(src_folder, "config.json"), encoding="utf-8") as fh:
        c = json.load(fh)
    with open(os.path.join(src_folder, "tokenizer.json"), encoding="utf-8") as fh:
        tj = json.load(fh)
    sd = load_file(os.path.join(src_folder, "model.safetensors"))
    n_head, n_kv = c["num_attention_heads"], c["num_key_value_heads"]
    os.makedirs(out_folder, exist_ok=True)
    path = os.path.join(out_folder, "olmo_clip.gguf")
    w = GGUFWriter(path, "olmo")
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(c["num_hidden_layers"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_rope_dimension_count(c["hidden_size"] // n_head)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_eps(1e-5)
    w.add_rope_freq_base(c["rope_parameters"]["rope_theta"])
    w.add_clamp_kqv(c["clip_qkv"])
    vocab = tj["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    special = {a["content"] for a in tj["added_tokens"] if a.get("special")}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([int(TokenType.CONTROL if t in special else TokenType.NORMAL) for t in tokens])
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    w.add_token_merges(merges)
    w.add_bos_token_id(c["bos_token_id"])
    w.add_eos_token_id(c["eos_token_id"])
    w.add_add_bos_token(True)
    f = lambda name: np.ascontiguousarray(sd[name].astype(np.float32))  # noqa: E731
    w.add_tensor("token_embd.weight", f("model.embed_tokens.weight"))
    if "lm_head.weight" in sd:
        w.add_tensor("output.weight", f("lm_head.weight"))
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_q.weight", llama_cpp_permute(f(p + "self_attn.q_proj.weight"), n_head, n_head))
        w.add_tensor(f"blk.{i}.attn_k.weight", llama_cpp_permute(f(p + "self_attn.k_proj.weight"), n_head, n_kv))
        w.add_tensor(f"blk.{i}.attn_v.weight", f(p + "self_attn.v_proj.weight"))
        w.add_tensor(f"blk.{i}.attn_output.weight", f(p + "self_attn.o_proj.weight"))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", f(p + "mlp.gate_proj.weight"))
        w.add_tensor(f"blk.{i}.ffn_up.weight", f(p + "mlp.up_proj.weight"))
        w.add_tensor(f"blk.{i}.ffn_down.weight", f(p + "mlp.down_proj.weight"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"== olmo_clip_gguf: wrote {path} ({os.path.getsize(path)} bytes)")


TINY = ["olmo_clip", "olmo_plain", "gemma3_swa_softcap", "gemma3_plain"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=DEFAULT_GEMMA_GGUF)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures"))
    ap.add_argument("--only", nargs="*", default=None, help="subset of: " + " ".join(TINY + ["olmo_clip_gguf", "gemma3_270m"]))
    args = ap.parse_args()
    out = os.path.normpath(args.out)
    want = set(args.only or TINY + ["olmo_clip_gguf", "gemma3_270m"])
    torch.use_deterministic_algorithms(True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, threads {torch.get_num_threads()}")

    if want & set(TINY):
        mf.seed_everything(0)
        tok = mf.train_tiny_tokenizer()
    if "olmo_clip" in want:
        m = make_tiny(
            "olmo_clip", out, tok, seed=11, config_cls=OlmoConfig, model_cls=OlmoForCausalLM,
            num_key_value_heads=2, tie_word_embeddings=False, clip_qkv=1.0,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )
        check_olmo_clip(m, 1.0)
    if "olmo_clip_gguf" in want:
        write_olmo_gguf(os.path.join(out, "olmo_clip"), os.path.join(out, "olmo_clip_gguf"))
    if "olmo_plain" in want:
        make_tiny(
            "olmo_plain", out, tok, seed=12, config_cls=OlmoConfig, model_cls=OlmoForCausalLM,
            num_key_value_heads=4, tie_word_embeddings=True, attention_bias=True, clip_qkv=None,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        )
    if "gemma3_swa_softcap" in want:
        m = make_tiny(
            "gemma3_swa_softcap", out, tok, seed=13, config_cls=Gemma3TextConfig, model_cls=Gemma3ForCausalLM,
            num_hidden_layers=3, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"], sliding_window=4,
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1_000_000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            },
            final_logit_softcapping=30.0, attn_logit_softcapping=50.0, tie_word_embeddings=True,
            rms_norm_eps=1e-6,
        )
        check_gemma_window(m, 4, AutoTokenizer.from_pretrained(os.path.join(out, "gemma3_swa_softcap")))
    if "gemma3_plain" in want:
        m = make_tiny(
            "gemma3_plain", out, tok, seed=14, config_cls=Gemma3TextConfig, model_cls=Gemma3ForCausalLM,
            num_key_value_heads=4, head_dim=16, query_pre_attn_scalar=16, sliding_window_pattern=2,
            sliding_window=6, final_logit_softcapping=None, attn_logit_softcapping=None,
            tie_word_embeddings=False, rms_norm_eps=1e-6,
        )
        assert list(m.config.layer_types) == ["sliding_attention", "full_attention"], m.config.layer_types
        check_gemma_window(m, 6, AutoTokenizer.from_pretrained(os.path.join(out, "gemma3_plain")))
    if "gemma3_270m" in want:
        if not os.path.exists(args.gguf):
            sys.exit(f"GGUF not found: {args.gguf}")
        make_gemma_270m(args.gguf, out)


if __name__ == "__main__":
    main()
