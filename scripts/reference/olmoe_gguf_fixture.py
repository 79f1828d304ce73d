#!/usr/bin/env python3
"""Writes the tiny OLMoE test checkpoint as a GGUF file laid out the way llama.cpp's converter does.

Input: Tests/D2MoETests/Fixtures/olmoe/{config.json, model.safetensors} (from make_hf_fixtures.py).
Output: Tests/D2MoETests/Fixtures/olmoe/model.gguf, float32, architecture "olmoe".

Independent of d2moe: tensor names come from the gguf package's own map for MODEL_ARCH.OLMOE, and
the experts of each layer are stacked into one (experts, rows, cols) tensor per projection, as
llama.cpp's OlmoeModel.modify_tensors does. Two deliberate differences from convert_hf_to_gguf.py:
no tokenizer (the test only compares logits), and the checkpoint's rms_norm_eps (1e-6) is kept where
the converter hard-codes 1e-5, so the logits stay comparable with transformers' expected.json.

Usage: python3 scripts/reference/olmoe_gguf_fixture.py      Needs: pip install gguf numpy
"""
import json
import os
import struct

import numpy as np
import gguf

DIR = os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "D2MoETests", "Fixtures", "olmoe")


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=np.float32).reshape(info["shape"])
    return out


def main():
    cfg = json.load(open(os.path.join(DIR, "config.json")))
    tensors = read_safetensors(os.path.join(DIR, "model.safetensors"))
    layers, n_exp = cfg["num_hidden_layers"], cfg["num_experts"]
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.OLMOE, layers)

    merged = {}
    for bid in range(layers):
        for proj in ("down_proj", "gate_proj", "up_proj"):
            names = [f"model.layers.{bid}.mlp.experts.{e}.{proj}.weight" for e in range(n_exp)]
            merged[f"model.layers.{bid}.mlp.experts.{proj}.weight"] = np.stack([tensors.pop(n) for n in names])
    tensors.update(merged)

    out = os.path.join(DIR, "model.gguf")
    w = gguf.GGUFWriter(out, "olmoe")
    w.add_name("d2moe olmoe test fixture")
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(layers)
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_expert_count(n_exp)
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    w.add_vocab_size(cfg["vocab_size"])
    for name in sorted(tensors):
        gname = tmap.get_name(name, try_suffixes=(".weight",))
        assert gname is not None, f"no GGUF name for {name}"
        w.add_tensor(gname, np.ascontiguousarray(tensors[name]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{out}: {os.path.getsize(out)} bytes")


if __name__ == "__main__":
    main()
