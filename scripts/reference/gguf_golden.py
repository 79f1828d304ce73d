#!/usr/bin/env python3
"""Golden values for the GGUF reader, from the `gguf` Python package (an independent reader).

For each real GGUF file and each quant type present, a few real tensors: the first 2048
dequantized values, and sum / sum of squares (float64) of the whole dequantized tensor; plus
metadata values the Swift reader must reproduce. Writes Tests/D2MoEFormatsTests/Golden/<model>.json.

Usage: scripts/reference/gguf_golden.py models/SmolLM2-135M-Instruct.Q4_1.gguf models/gemma-3-270m-q4_k_m.gguf
Needs: pip install gguf numpy (gguf 0.17+).
"""
import hashlib, json, os, sys
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "D2MoEFormatsTests", "Golden")


def field_value(reader, key):
    f = reader.fields[key]
    kind = f.types[0].name
    if kind == "STRING":
        return bytes(f.parts[f.data[0]]).decode()
    if kind == "ARRAY":
        if f.types[1].name == "STRING":
            return [bytes(f.parts[i]).decode() for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    return f.parts[f.data[0]].tolist()[0]


def main(paths):
    for path in paths:
        reader = GGUFReader(path)
        sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
        by_type = {}
        for t in reader.tensors:
            by_type.setdefault(t.tensor_type.name, []).append(t)
        tensors = []
        for type_name, items in sorted(by_type.items()):
            # The first, the largest and a middle tensor of each type.
            picks = {items[0].name: items[0], items[len(items) // 2].name: items[len(items) // 2]}
            big = max(items, key=lambda t: int(t.n_elements))
            picks[big.name] = big
            for t in picks.values():
                values = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
                tensors.append({
                    "name": t.name,
                    "type": type_name,
                    "dimensions": [int(d) for d in t.shape],
                    "first": [float(v) for v in values[:2048]],
                    "sum": float(values.astype(np.float64).sum()),
                    "sum_squares": float((values.astype(np.float64) ** 2).sum()),
                })
        arch = field_value(reader, "general.architecture")
        metadata = {k: field_value(reader, k) for k in [
            "general.architecture", f"{arch}.context_length", f"{arch}.embedding_length", f"{arch}.block_count",
            "tokenizer.ggml.model", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"]
            if k in reader.fields}
        tokens = field_value(reader, "tokenizer.ggml.tokens")
        metadata["token_count"] = len(tokens)
        metadata["tokens_first"] = tokens[:50]
        metadata["tokens_last"] = tokens[-50:]
        metadata["tensor_count"] = len(reader.tensors)
        name = os.path.basename(path).replace(".gguf", "")
        os.makedirs(OUT, exist_ok=True)
        with open(os.path.join(OUT, name + ".json"), "w") as f:
            json.dump({"file": os.path.basename(path), "sha256": sha, "metadata": metadata, "tensors": tensors}, f)
        print(name, sorted(by_type), len(tensors), "tensors")


if __name__ == "__main__":
    main(sys.argv[1:])
