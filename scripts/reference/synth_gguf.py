#!/usr/bin/env python3
"""Writes a random-weight GGUF shaped like OLMoE-1B-7B (llama.cpp arch "olmoe"), for benchmarking.

Shape: 16 layers, hidden 2048, 16 heads x 128 (no GQA), 64 experts top-8, expert FFN 1024,
vocab 50304, rms eps 1e-5, rope theta 10000, ctx 4096. Attention, expert, embedding and output
matrices are Q4_0 (random nibbles, random f16 block scales sized so activations stay O(1));
norms and the router (ffn_gate_inp) are F32. The tokenizer is a byte-level "gpt2" BPE vocab
(256 byte tokens + a few merges + filler tokens up to 50304, <|endoftext|> = 50279 as in OLMoE),
enough for llama.cpp to load the model and for llama-bench. Tensors are generated and written one
at a time (GGUFWriter streaming), so memory stays at about one expert tensor (~76 MB).
The full file is ~3.9 GB. Weights are random: the output is meaningless, only speed/memory matter.

Nibbles are uniform on 1..15 by default, so every weight (q - 8)·d has mean zero and the random
routers route almost uniformly, like `d2moe synth`'s files. Files written before 2026-12-07 drew
nibbles on 0..15 (`--nibbles 0-15`): every weight then has mean -d/2, each matrix adds the same
shift to all of its outputs, that common component grows layer after layer until the normed
hidden state is nearly the same for every token, and every token routes to the same few experts
(llama.cpp then needs only a small part of the experts in memory).

Usage:
  python3 scripts/reference/synth_gguf.py OUT.gguf [--layers N] [--seed S] [--nibbles 1-15|0-15]
  python3 scripts/reference/synth_gguf.py --sizes FILE.gguf
      prints EXPERT_BYTES (sum of *_exps tensors), RESIDENT_BYTES (all other tensors) and
      FILE_BYTES, as shell assignments (eval-able).
Needs: pip install gguf numpy
"""
import argparse
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT

ARCH = "olmoe"
N_EMBD, N_HEAD, HEAD_DIM = 2048, 16, 128
N_EXPERT, N_EXPERT_USED, N_FF_EXP = 64, 8, 1024
N_VOCAB, N_CTX = 50304, 4096
EOS_ID, PAD_ID = 50279, 1
Q4_0_BLOCK, Q4_0_BYTES = 32, 18


def byte_level_tokens():
    """GPT-2 bytes_to_unicode: the 256 printable stand-ins for raw bytes, in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def tokenizer():
    toks = byte_level_tokens()
    merges = ["Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "Ġt he", "e r"]
    for m in merges:
        toks.append(m.replace(" ", ""))
    types = [gguf.TokenType.NORMAL] * len(toks)
    while len(toks) < N_VOCAB:
        i = len(toks)
        if i == EOS_ID:
            toks.append("<|endoftext|>")
            types.append(gguf.TokenType.CONTROL)
        elif i == PAD_ID:
            toks.append("<|padding|>")
            types.append(gguf.TokenType.CONTROL)
        else:
            toks.append(f"<|filler_{i}|>")
            types.append(gguf.TokenType.USER_DEFINED)
    assert len(toks) == N_VOCAB and len(set(toks)) == N_VOCAB
    return toks, [int(t) for t in types], merges


def tensor_plan(n_layers):
    """(name, numpy-order element shape, kind). ggml ne is the reverse of the shape here."""
    plan = [("token_embd.weight", (N_VOCAB, N_EMBD), "q4")]
    for i in range(n_layers):
        b = f"blk.{i}."
        plan += [
            (b + "attn_norm.weight", (N_EMBD,), "norm"),
            (b + "attn_q.weight", (N_EMBD, N_EMBD), "q4"),
            (b + "attn_k.weight", (N_EMBD, N_EMBD), "q4"),
            (b + "attn_v.weight", (N_EMBD, N_EMBD), "q4"),
            (b + "attn_output.weight", (N_EMBD, N_EMBD), "q4"),
            (b + "attn_q_norm.weight", (N_EMBD,), "norm"),
            (b + "attn_k_norm.weight", (N_EMBD,), "norm"),
            (b + "ffn_norm.weight", (N_EMBD,), "norm"),
            (b + "ffn_gate_inp.weight", (N_EXPERT, N_EMBD), "router"),
            (b + "ffn_gate_exps.weight", (N_EXPERT, N_FF_EXP, N_EMBD), "q4"),
            (b + "ffn_down_exps.weight", (N_EXPERT, N_EMBD, N_FF_EXP), "q4"),
            (b + "ffn_up_exps.weight", (N_EXPERT, N_FF_EXP, N_EMBD), "q4"),
        ]
    plan += [("output_norm.weight", (N_EMBD,), "norm"), ("output.weight", (N_VOCAB, N_EMBD), "q4")]
    return plan


def q4_0_random(rng, shape, nibbles="1-15"):
    """Random Q4_0 blocks: uint8 array of shape (*shape[:-1], shape[-1]/32*18).

    Block layout: f16 scale d, then 16 bytes; byte j holds element j (low nibble) and j+16 (high).
    """
    fan_in = shape[-1]
    n_blocks = int(np.prod(shape)) // Q4_0_BLOCK
    out = np.empty((n_blocks, Q4_0_BYTES), dtype=np.uint8)
    if nibbles == "0-15":
        # (q-8)*d for q uniform on 0..15: std ~4.6 d, mean -d/2
        d0 = 1.0 / (4.6 * np.sqrt(fan_in))
        out[:, 2:] = np.frombuffer(rng.bytes(n_blocks * 16), dtype=np.uint8).reshape(n_blocks, 16)
    else:
        # q uniform on 1..15: (q-8)*d uniform on -7d..7d, std sqrt(56/3) d ~4.32 d, mean 0
        d0 = 1.0 / (4.32 * np.sqrt(fan_in))
        q = rng.integers(1, 16, size=(n_blocks, Q4_0_BLOCK), dtype=np.uint8)
        out[:, 2:] = q[:, :16] | (q[:, 16:] << 4)
    # aim for weight std ~ 1/sqrt(fan_in)
    out[:, :2] = rng.uniform(0.5 * d0, 1.5 * d0, n_blocks).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return out.reshape(*shape[:-1], shape[-1] // Q4_0_BLOCK * Q4_0_BYTES)


def make(rng, shape, kind, nibbles):
    if kind == "q4":
        return q4_0_random(rng, shape, nibbles)
    if kind == "norm":
        return np.ones(shape, dtype=np.float32)
    return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)


def write(path, n_layers, seed, nibbles):
    toks, types, merges = tokenizer()
    w = gguf.GGUFWriter(path, ARCH, use_temp_file=False)
    w.add_name(f"synthetic OLMoE-1B-7B shape ({n_layers} layers, random Q4_0, nibbles {nibbles})")
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q4_0))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF_EXP)
    w.add_expert_feed_forward_length(N_FF_EXP)
    w.add_block_count(n_layers)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_expert_count(N_EXPERT)
    w.add_expert_used_count(N_EXPERT_USED)
    w.add_vocab_size(N_VOCAB)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("olmo")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(EOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_pad_token_id(PAD_ID)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)

    plan = tensor_plan(n_layers)
    for name, shape, kind in plan:
        if kind == "q4":
            nbytes = int(np.prod(shape)) // Q4_0_BLOCK * Q4_0_BYTES
            byte_shape = (*shape[:-1], shape[-1] // Q4_0_BLOCK * Q4_0_BYTES)
            w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=QT.Q4_0)
        else:
            w.add_tensor_info(name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for k, (name, shape, kind) in enumerate(plan):
        w.write_tensor_data(make(rng, shape, kind, nibbles))
        if name.endswith("ffn_up_exps.weight") or k == len(plan) - 1:
            print(f"  wrote {name} ({k + 1}/{len(plan)})", file=sys.stderr, flush=True)
    w.close()
    print(f"{path}: {os.path.getsize(path)} bytes, {len(plan)} tensors, {n_layers} layers")


def sizes(path):
    r = gguf.GGUFReader(path)
    exp = sum(int(t.n_bytes) for t in r.tensors if "_exps." in t.name)
    rest = sum(int(t.n_bytes) for t in r.tensors if "_exps." not in t.name)
    print(f"EXPERT_BYTES={exp}")
    print(f"RESIDENT_BYTES={rest}")
    print(f"FILE_BYTES={os.path.getsize(path)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="output .gguf (or the file to measure with --sizes)")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nibbles", choices=["1-15", "0-15"], default="1-15",
                    help="range of the random Q4_0 codes: 1-15 (zero-mean weights) or 0-15 (the files before 2026-12-07)")
    ap.add_argument("--sizes", action="store_true", help="print expert / non-expert tensor bytes of OUT")
    a = ap.parse_args()
    if a.sizes:
        sizes(a.out)
    else:
        write(a.out, a.layers, a.seed, a.nibbles)


if __name__ == "__main__":
    main()
