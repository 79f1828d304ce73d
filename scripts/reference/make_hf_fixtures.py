#!/usr/bin/env python3
"""Tiny random checkpoints of every architecture with logits from Hugging Face transformers.

Writes Tests/D2MoETests/Fixtures/<name>/{config.json, model.safetensors, expected.json}: two
sequences of different lengths with their full logits (one forward each), and three greedy decode
steps of sequence 0 with the KV cache. Not run in CI (torch + transformers are ~3 GB):
    python3 -m venv .venv && .venv/bin/pip install torch transformers safetensors
    .venv/bin/python scripts/reference/make_hf_fixtures.py
"""
import json, os
import torch
import transformers
from transformers import (LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM, Qwen2MoeConfig,
                          Qwen2MoeForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM, OlmoeConfig, OlmoeForCausalLM,
                          Gemma3TextConfig, Gemma3ForCausalLM)

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "D2MoETests", "Fixtures")
COMMON = dict(vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
              max_position_embeddings=256, attn_implementation="eager")

MODELS = {
    "llama": (LlamaForCausalLM, LlamaConfig(**COMMON, num_hidden_layers=2, intermediate_size=128, tie_word_embeddings=False,
              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 16}, rope_theta=10000.0)),
    "mixtral": (MixtralForCausalLM, MixtralConfig(**COMMON, num_hidden_layers=2, intermediate_size=32, num_local_experts=8,
                num_experts_per_tok=2, rope_theta=1e6)),
    "qwen2_moe": (Qwen2MoeForCausalLM, Qwen2MoeConfig(**COMMON, num_hidden_layers=3, intermediate_size=128,
                  moe_intermediate_size=32, shared_expert_intermediate_size=48, num_experts=8, num_experts_per_tok=2,
                  norm_topk_prob=False, mlp_only_layers=[1], decoder_sparse_step=1, tie_word_embeddings=False)),
    "qwen3_moe": (Qwen3MoeForCausalLM, Qwen3MoeConfig(**COMMON, num_hidden_layers=2, intermediate_size=128, head_dim=16,
                  moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
                  tie_word_embeddings=False)),
    "olmoe": (OlmoeForCausalLM, OlmoeConfig(**COMMON, num_hidden_layers=2, intermediate_size=32, num_experts=8,
              num_experts_per_tok=2, norm_topk_prob=False, clip_qkv=3.0, tie_word_embeddings=False)),
    "gemma3": (Gemma3ForCausalLM, Gemma3TextConfig(**COMMON, num_hidden_layers=3, intermediate_size=128, head_dim=16,
               sliding_window=4, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
               query_pre_attn_scalar=24, rope_theta=100000.0, rope_local_base_freq=1000.0,
               hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True)),
}


def rounded(t):
    return [float(f"{v:.7g}") for v in t.tolist()]


def main():
    for name, (cls, config) in MODELS.items():
        torch.manual_seed(0)
        model = cls(config).eval().float()
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.1)
        folder = os.path.join(OUT, name)
        os.makedirs(folder, exist_ok=True)
        model.save_pretrained(folder, safe_serialization=True)
        for extra in ("generation_config.json",):
            path = os.path.join(folder, extra)
            if os.path.exists(path):
                os.remove(path)
        g = torch.Generator().manual_seed(1)
        seqs = [torch.randint(0, config.vocab_size, (11,), generator=g), torch.randint(0, config.vocab_size, (7,), generator=g)]
        logits = []
        with torch.no_grad():
            for s in seqs:
                logits.append([rounded(row) for row in model(s[None]).logits[0]])
            out = model(seqs[0][None], use_cache=True)
            cache = out.past_key_values
            nxt = out.logits[0, -1].argmax()
            generated, steps = [], []
            for _ in range(3):
                generated.append(int(nxt))
                out = model(nxt.view(1, 1), past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                steps.append(rounded(out.logits[0, -1]))
                nxt = out.logits[0, -1].argmax()
        with open(os.path.join(folder, "expected.json"), "w") as f:
            json.dump({"input_ids": [s.tolist() for s in seqs], "logits": logits, "generated_ids": generated,
                       "step_logits": steps, "torch": torch.__version__, "transformers": transformers.__version__}, f)
        size = sum(os.path.getsize(os.path.join(folder, x)) for x in os.listdir(folder))
        print(f"{name}: {size / 1e6:.2f} MB, files {sorted(os.listdir(folder))}")


if __name__ == "__main__":
    main()
