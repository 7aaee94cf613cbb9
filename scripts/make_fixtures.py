#!/usr/bin/env python3
"""Generate reference fixtures for the `cram` Rust crate from Hugging Face transformers.

transformers (float32, eager attention) is the ground truth. For every model a folder
<out>/<name>/ is written with `reference.json` and `reference.safetensors`; the two small
random-init models additionally get their weights (config.json, model.safetensors,
generation_config.json) and tokenizer (tokenizer.json, tokenizer_config.json) saved next
to the references so that the Rust side can load them.

Models:
  smollm2           SmolLM2-135M-Instruct Q4_1 GGUF, de-quantised by transformers to float32
                    (the GGUF itself is not copied into the fixtures).
  llama_gqa_tied    tiny Llama, GQA (4 q heads / 2 kv heads), tied embeddings.
  llama_rope3_bias  tiny Llama, MHA, untied, attention + MLP biases, llama3 RoPE scaling.

Usage:
  python scripts/make_fixtures.py [--gguf PATH] [--out tests/fixtures] [--only NAME ...]
"""

import argparse
import json
import math
import os
import random
import sys

import numpy as np
import torch
import torch.nn.functional as F

import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

DEFAULT_GGUF = os.path.expanduser("~/.cache/cram/models/SmolLM2-135M-Instruct.Q4_1.gguf")
SMOLLM_VOCAB_SLICE = 2048  # logits stored for smollm2 are logits[..., :2048]
GRAD_SEED = 1234
MAX_NEW_TOKENS = 20

# ----------------------------------------------------------------------------------------
# Text material
# ----------------------------------------------------------------------------------------

# Training corpus for the tiny byte-level BPE tokenizer.
BPE_CORPUS = [
    "The old lighthouse stood at the edge of the cliff, its white paint peeling after decades "
    "of salt and wind. Every evening the keeper climbed the narrow stairs to light the lamp, "
    "and every morning he wrote a short note in the logbook about the weather and the ships "
    "that had passed during the night.",
    "In the small village below, the baker opened his shop before sunrise. The smell of fresh "
    "bread drifted through the streets, waking the children who ran down to buy warm rolls "
    "before school. Their parents followed more slowly, talking about the harvest, the price "
    "of fish, and the storm that was expected at the end of the week.",
    "Learning a new language is a long journey. At first every sentence feels like a puzzle, "
    "and the simplest conversation requires great effort. With time, however, the words begin "
    "to flow, and one day you notice that you are thinking in the new language without "
    "translating in your head.",
    "The river runs quietly through the forest, past tall trees and mossy stones. Deer come "
    "to drink at the water in the early hours, and in the summer the children of the town "
    "swim in the deep pools where the current is slow and the water is cool and clear.",
    "Computers store numbers as bits, and every program is in the end a long list of simple "
    "instructions. A good programmer learns to think about the data first, and then about the "
    "steps that transform it into the answer that the user needs.",
    "She opened the letter with trembling hands. It had been written many years ago, but the "
    "ink was still dark and the handwriting was clear. As she read the first lines, she "
    "understood that her grandmother had kept a secret for the whole of her life.",
]

SMALL_TOKENIZER_TEXTS = [
    "The keeper climbed the stairs.",
    "Hello, world! How are you today?",
    "  leading and trailing spaces  ",
    "tabs\tand\nnew\n\nlines\r\n",
    "Caf\u00e9 na\u00efve \u4f60\u597d \u043f\u0440\u0438\u0432\u0435\u0442 \U0001f600",
    "numbers 1234567890 and 3.14159",
    "text with <s> and </s> inside",
    "",
]

SMOLLM_TOKENIZER_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you doing today?",
    "Once upon a time, in a land far, far away, there lived a curious little robot.",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber Stra\u00dfe \u00e5ngstr\u00f6m",
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u4eca\u5929\u5929\u6c14\u5f88\u597d\u3002\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3067\u3059\u3002",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u041a\u0430\u043a \u0434\u0435\u043b\u0430?",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "Emoji: \U0001f600\U0001f680\u2764\ufe0f \U0001f44d\U0001f3fd family \U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 flag \U0001f1eb\U0001f1f7",
    "a     b      c",
    "tabs\tbetween\t\twords",
    "line one\n\n\nline four\r\nline five\n",
    "   leading spaces",
    "trailing spaces   ",
    " ",
    "1234567890 3.14159 -42 1e-5 007 2025-01-31",
    "99999999999999999999 + 1 = 100000000000000000000",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
    "See https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct?x=1&y=%20 for details.",
    "Wait... what?!?! Really??? (yes) [no] {maybe} --- *** ### @@@ ~~~",
    "",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "literal <|endoftext|> in the middle",
    "I'm sure they'll say it's fine, we've done it, you'd agree.",
    "MixedCASE camelCase snake_case SCREAMING_CASE kebab-case",
    "\u00a0non-breaking\u00a0space and zero\u200bwidth",
]

SMOLLM_LOGIT_TEXTS = [
    "The capital of France is Paris, and the capital of Germany is",
    "Once upon a time, a small robot woke up in a quiet workshop and wondered where everyone had gone.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
]
SMALL_LOGIT_TEXTS = [
    "The keeper climbed the narrow stairs.",
    "In the village the baker opened his shop before sunrise.",
    "A good programmer thinks about the data first.",
]

SMOLLM_BATCH_TEXTS = [
    "Water boils at one hundred degrees Celsius.",
    "The library was quiet except for the soft sound of pages turning and the ticking clock.",
]
SMALL_BATCH_TEXTS = [
    "The river runs quietly.",
    "She opened the old letter with trembling hands.",
]

SMOLLM_GREEDY_PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):",
]
SMALL_GREEDY_PROMPTS = [
    "The keeper",
    "Learning a new language",
    "Computers store",
]

SMOLLM_GRAD_TEXT = "Cramming many tokens into a single trainable input vector of a frozen language model works surprisingly well."
SMALL_GRAD_TEXT = "The children ran down to buy warm bread."


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).cpu().contiguous()


def i64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.int64).cpu().contiguous()


def rope_params(config) -> dict:
    """rope_theta / scaling, both for transformers v5 (`rope_parameters`) and v4."""
    rp = getattr(config, "rope_parameters", None)
    if isinstance(rp, dict) and rp:
        return dict(rp)
    out = {"rope_theta": getattr(config, "rope_theta", 10000.0), "rope_type": "default"}
    rs = getattr(config, "rope_scaling", None)
    if rs:
        out.update(rs)
        out["rope_type"] = rs.get("rope_type", rs.get("type", "default"))
    return out


def config_summary(model) -> dict:
    c = model.config
    rp = rope_params(c)
    return {
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
        "intermediate_size": c.intermediate_size,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_position_embeddings,
        "rope_theta": float(rp["rope_theta"]),
        "rope_parameters": rp,
        "rms_norm_eps": float(c.rms_norm_eps) if hasattr(c, "rms_norm_eps") else None,
        "tie_word_embeddings": bool(getattr(c, "tie_word_embeddings", False)),
        "attention_bias": bool(getattr(c, "attention_bias", False)),
        "mlp_bias": bool(getattr(c, "mlp_bias", False)),
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
    }


@torch.no_grad()
def forward_logits(model, ids) -> torch.Tensor:
    x = torch.tensor([ids], dtype=torch.long)
    return model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0]


def tokenizer_cases(tok, texts):
    cases = []
    for t in texts:
        ids = tok(t)["input_ids"]
        ids_ns = tok(t, add_special_tokens=False)["input_ids"]
        cases.append(
            {"text": t, "ids": list(ids), "ids_no_special": list(ids_ns), "decoded": tok.decode(ids_ns)}
        )
    return cases


def greedy_manual(model, prompt_ids, eos_ids, n):
    """Reference greedy loop without KV cache (cross-check for model.generate)."""
    ids = list(prompt_ids)
    out = []
    for _ in range(n):
        nxt = int(forward_logits(model, ids)[-1].argmax())
        out.append(nxt)
        ids.append(nxt)
        if nxt in eos_ids:
            break
    return out


def build_reference(name, model, tok, logit_texts, batch_texts, greedy_prompts, grad_text, vocab_slice,
                    summary=None):
    """Compute every reference quantity. Returns (json_dict, tensors_dict).

    `summary(model)` gives the `config` entry (default: `config_summary`, for Llama)."""
    model.eval()
    tensors = {}
    V = model.config.vocab_size
    vs = V if vocab_slice is None else vocab_slice

    bos_id = tok.bos_token_id
    eos_id = tok.eos_token_id
    probe = tok("hello")["input_ids"]
    add_bos = bool(bos_id is not None and len(probe) > 0 and probe[0] == bos_id)

    ref = {
        "name": name,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "bos_id": bos_id,
        "eos_id": eos_id,
        "add_bos": add_bos,
    }

    # ---- logits ------------------------------------------------------------------------
    ref["logits"] = []
    single = []
    for i, text in enumerate(logit_texts):
        ids = tok(text)["input_ids"]
        assert 10 <= len(ids) <= 40, (name, text, len(ids))
        lg = forward_logits(model, ids)
        single.append(lg)
        tensors[f"logits_{i}"] = f32(lg[:, :vs])
        if vocab_slice is not None:
            tensors[f"argmax_{i}"] = i64(lg.argmax(-1))
        ref["logits"].append({"text": text, "ids": list(ids)})

    # ---- batch (right padding) ---------------------------------------------------------
    bids = [tok(t)["input_ids"] for t in batch_texts]
    assert len(bids[0]) != len(bids[1])
    T = max(len(x) for x in bids)
    pad = eos_id if eos_id is not None else 0
    x = torch.full((len(bids), T), pad, dtype=torch.long)
    m = torch.zeros((len(bids), T), dtype=torch.long)
    for b, seq in enumerate(bids):
        x[b, : len(seq)] = torch.tensor(seq)
        m[b, : len(seq)] = 1
    with torch.no_grad():
        blg = model(input_ids=x, attention_mask=m).logits
    for b, seq in enumerate(bids):
        valid = blg[b, : len(seq)]
        solo = forward_logits(model, seq)
        diff = (valid - solo).abs().max().item()
        assert diff < 1e-4, f"{name}: batched vs unbatched logits differ by {diff}"
        tensors[f"batch_logits_{b}"] = f32(valid[:, :vs])
    ref["batch"] = {"texts": list(batch_texts), "ids": [list(s) for s in bids], "pad_id": pad}

    # ---- greedy ------------------------------------------------------------------------
    eos_list = model.generation_config.eos_token_id
    if eos_list is None:
        eos_list = [] if eos_id is None else [eos_id]
    elif isinstance(eos_list, int):
        eos_list = [eos_list]
    gcfg = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=MAX_NEW_TOKENS,
        eos_token_id=eos_list if eos_list else None,
        pad_token_id=pad,
        bos_token_id=bos_id,
        repetition_penalty=1.0,
    )
    ref["greedy"] = []
    for prompt in greedy_prompts:
        pids = tok(prompt)["input_ids"]
        x = torch.tensor([pids], dtype=torch.long)
        with torch.no_grad():
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gcfg)
        new = [int(t) for t in out[0, len(pids):].tolist()]
        manual = greedy_manual(model, pids, set(eos_list), MAX_NEW_TOKENS)
        assert new == manual, f"{name}: generate {new} != manual greedy {manual}"
        # generate() stops after emitting EOS (which is kept as the last id).
        stopped = bool(new and new[-1] in eos_list)
        ref["greedy"].append(
            {
                "prompt": prompt,
                "prompt_ids": list(pids),
                "token_ids": new,
                "stopped_at_eos": stopped,
            }
        )

    # ---- gradient w.r.t. one prepended vector --------------------------------------------
    ids = tok(grad_text)["input_ids"]
    assert 16 <= len(ids) <= 24, (name, grad_text, len(ids))
    # The rows `embed` returns: the embedding module's output, which for Gemma
    # is the weight scaled by sqrt(hidden_size) (identical to the weight for Llama).
    with torch.no_grad():
        emb = model.get_input_embeddings()(torch.arange(model.config.vocab_size))
    emb_std = emb.detach().std()
    g = torch.Generator().manual_seed(GRAD_SEED)
    H = emb.shape[1]  # the width of the input embeddings (OPT: word_embed_proj_dim)
    v = (torch.randn(H, generator=g) * emb_std).to(torch.float32)
    v_param = v.clone().requires_grad_(True)
    idt = torch.tensor(ids, dtype=torch.long)
    with torch.enable_grad():
        inputs = torch.cat([v_param[None], emb.detach()[idt]], dim=0)[None]  # [1, T+1, H]
        logits = model(inputs_embeds=inputs, attention_mask=torch.ones(1, len(ids) + 1, dtype=torch.long)).logits
        loss = F.cross_entropy(logits[0, : len(ids)], idt)
        loss.backward()
    tensors["grad_vector"] = f32(v)
    tensors["grad"] = f32(v_param.grad)
    ref["grad"] = {"text": grad_text, "ids": list(ids), "loss": float(loss.item()), "emb_std": float(emb_std.item())}

    ref["config"] = (summary or config_summary)(model)
    return ref, tensors


def write_reference(folder, ref, tensors):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "reference.json"), "w", encoding="utf-8") as fh:
        json.dump(ref, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(folder, "reference.safetensors"))


def summarize(name, model, ref, tensors):
    c = ref["config"]
    print(f"== {name}")
    print(
        f"   dtype={model.dtype} params={c['num_parameters']} hidden={c['hidden_size']} layers={c['num_hidden_layers']} "
        f"heads={c['num_attention_heads']}/{c['num_key_value_heads']} vocab={c['vocab_size']} "
        f"rope={c['rope_parameters']} tied={c['tie_word_embeddings']}"
    )
    print(f"   bos={ref['bos_id']} eos={ref['eos_id']} add_bos={ref['add_bos']} tokenizer cases={len(ref['tokenizer'])}")
    for e in ref["logits"]:
        print(f"   logits T={len(e['ids'])}: {e['text'][:50]!r}")
    for e in ref["greedy"]:
        print(f"   greedy {e['prompt'][:30]!r} -> {e['token_ids']} eos={e['stopped_at_eos']}")
    print(f"   grad loss={ref['grad']['loss']:.6f} emb_std={ref['grad']['emb_std']:.6f} |grad|={tensors['grad'].norm():.6e}")
    print(f"   tensors: " + ", ".join(f"{k}{list(v.shape)}" for k, v in tensors.items()))


# ----------------------------------------------------------------------------------------
# SmolLM2 (GGUF)
# ----------------------------------------------------------------------------------------


def make_smollm2(gguf_path, out_dir):
    seed_everything(0)
    d, fname = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=fname, dtype=torch.float32, attn_implementation="eager"
    )
    model.requires_grad_(False)
    dtypes = {p.dtype for p in model.parameters()}
    print(f"smollm2: loaded GGUF via transformers, parameter dtypes = {dtypes}")
    assert dtypes == {torch.float32}, dtypes
    assert model.config.vocab_size == 49152 and model.config.hidden_size == 576

    ref_tok = tokenizer_cases(tok, SMOLLM_TOKENIZER_TEXTS)
    ref, tensors = build_reference(
        "smollm2", model, tok, SMOLLM_LOGIT_TEXTS, SMOLLM_BATCH_TEXTS, SMOLLM_GREEDY_PROMPTS,
        SMOLLM_GRAD_TEXT, SMOLLM_VOCAB_SLICE,
    )
    ref["tokenizer"] = ref_tok
    ref["gguf_file"] = fname
    ref["logits_vocab_slice"] = SMOLLM_VOCAB_SLICE
    ref = reorder(ref)
    folder = os.path.join(out_dir, "smollm2")
    write_reference(folder, ref, tensors)
    summarize("smollm2", model, ref, tensors)


# ----------------------------------------------------------------------------------------
# Tiny random Llama models
# ----------------------------------------------------------------------------------------


def train_tiny_tokenizer() -> PreTrainedTokenizerFast:
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        min_frequency=2,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(BPE_CORPUS, trainer=trainer)
    assert tk.token_to_id("<s>") == 0 and tk.token_to_id("</s>") == 1
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A",
        pair="<s> $A <s> $B",
        special_tokens=[("<s>", 0)],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>")


def reinit_(model, seed, std=0.2):
    """Deterministic re-initialisation with a large std so the logits are far from zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


def check_llama3_rope(model):
    rp = rope_params(model.config)
    hd = model.config.head_dim
    base = float(rp["rope_theta"])
    plain = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    scaled = model.model.rotary_emb.inv_freq.float()
    factor = rp["factor"]
    unchanged = torch.isclose(scaled, plain, rtol=1e-6)
    divided = torch.isclose(scaled, plain / factor, rtol=1e-6)
    smooth = ~(unchanged | divided)
    print(
        f"   llama3 rope: inv_freq unchanged={int(unchanged.sum())} divided-by-factor={int(divided.sum())} "
        f"smoothed={int(smooth.sum())} of {len(plain)}"
    )
    assert not torch.allclose(scaled, plain), "llama3 scaling did not change inv_freq"
    assert unchanged.any() and divided.any() and smooth.any(), "want all three llama3 branches exercised"


def add_legacy_rope_keys(path):
    """transformers v5 writes only `rope_parameters`; also write the v4 / Hub-style keys
    `rope_theta` and `rope_scaling` so that either convention can be parsed. transformers v5
    reloads such a config identically (checked by the reload below)."""
    with open(path, encoding="utf-8") as fh:
        c = json.load(fh)
    rp = c.get("rope_parameters")
    if isinstance(rp, dict) and "rope_theta" in rp:
        c["rope_theta"] = rp["rope_theta"]
        scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
        c["rope_scaling"] = scaling if scaling.get("rope_type", "default") != "default" else None
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(c, fh, indent=2, sort_keys=True)
        fh.write("\n")


def make_tiny(name, out_dir, tok, seed, **cfg_kwargs):
    seed_everything(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        initializer_range=0.2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=None,
        **cfg_kwargs,
    )
    model = LlamaForCausalLM(cfg)
    reinit_(model, seed)
    if cfg.tie_word_embeddings:
        model.tie_weights()
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.eval()

    folder = os.path.join(out_dir, name)
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    add_legacy_rope_keys(os.path.join(folder, "config.json"))

    # Reload exactly what the Rust side will read, and use that for the references.
    model2 = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model2.requires_grad_(False)
    tok2 = AutoTokenizer.from_pretrained(folder)
    sd1, sd2 = model.state_dict(), model2.state_dict()
    assert sd1.keys() == sd2.keys()
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k
    raw = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    for t in SMALL_TOKENIZER_TEXTS:
        a = tok(t)["input_ids"]
        assert a == tok2(t)["input_ids"] == raw.encode(t).ids, (t, a)
        assert tok(t, add_special_tokens=False)["input_ids"] == raw.encode(t, add_special_tokens=False).ids

    assert rope_params(model2.config) == rope_params(model.config), (rope_params(model2.config), rope_params(model.config))
    assert torch.equal(model.model.rotary_emb.inv_freq, model2.model.rotary_emb.inv_freq)
    if rope_params(model2.config).get("rope_type") == "llama3":
        check_llama3_rope(model2)

    ref_tok = tokenizer_cases(tok2, SMALL_TOKENIZER_TEXTS)
    ref, tensors = build_reference(
        name, model2, tok2, SMALL_LOGIT_TEXTS, SMALL_BATCH_TEXTS, SMALL_GREEDY_PROMPTS, SMALL_GRAD_TEXT, None
    )
    ref["tokenizer"] = ref_tok
    ref["init_seed"] = seed
    ref = reorder(ref)
    write_reference(folder, ref, tensors)
    summarize(name, model2, ref, tensors)
    # sanity: logits are not tiny
    s = tensors["logits_0"].std().item()
    print(f"   logits_0 std = {s:.3f}")
    assert s > 0.5


def reorder(ref):
    order = ["name", "transformers_version", "torch_version", "bos_id", "eos_id", "add_bos", "tokenizer",
             "logits", "batch", "greedy", "grad", "config"]
    out = {k: ref[k] for k in order if k in ref}
    out.update({k: v for k, v in ref.items() if k not in out})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=DEFAULT_GGUF)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures"))
    ap.add_argument("--only", nargs="*", default=None, help="subset of: smollm2 llama_gqa_tied llama_rope3_bias")
    args = ap.parse_args()
    out = os.path.normpath(args.out)
    want = set(args.only or ["smollm2", "llama_gqa_tied", "llama_rope3_bias"])
    torch.use_deterministic_algorithms(True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, threads {torch.get_num_threads()}")

    if want & {"llama_gqa_tied", "llama_rope3_bias"}:
        seed_everything(0)
        tok = train_tiny_tokenizer()
        print(f"tiny tokenizer: vocab {len(tok)}")
        if "llama_gqa_tied" in want:
            make_tiny(
                "llama_gqa_tied", out, tok, seed=1,
                num_key_value_heads=2, tie_word_embeddings=True,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            )
        if "llama_rope3_bias" in want:
            make_tiny(
                "llama_rope3_bias", out, tok, seed=2,
                num_key_value_heads=4, tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
                rope_parameters={
                    "rope_type": "llama3",
                    "rope_theta": 500000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                },
            )
    if "smollm2" in want:
        if not os.path.exists(args.gguf):
            sys.exit(f"GGUF not found: {args.gguf}")
        make_smollm2(args.gguf, out)


if __name__ == "__main__":
    main()
