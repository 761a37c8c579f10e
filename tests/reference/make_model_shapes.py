#!/usr/bin/env python3
"""Writes tests/data/<model>.shapes.json: the parameter shapes of well-known open models, for `tally memory --shapes`.

Each model is built from its transformers config class on the meta device (shapes only: no memory, no weights,
nothing downloaded), with the published configuration of the checkpoint written out below. The list is
model.named_parameters(): every trained tensor once (tied embeddings once, as the optimizers see them), in the
shape list format tally reads: {"description": ..., "tensors": [{"name", "shape", "dtype"}]}, dtype the checkpoint's
published one. docs/memory.md's table is `scripts/memory_table.sh` over these files.

Regenerate: python3 tests/reference/make_model_shapes.py   (needs torch and transformers)
"""
import json
import os

import torch
import transformers as t

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "data")

MODELS = {
    # file: (model class, config, description, the checkpoint's dtype)
    "gpt2_124m": (t.GPT2LMHeadModel, t.GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024),
                  "GPT-2 124M (openai-community/gpt2): GPT2LMHeadModel, 12 layers, width 768, vocabulary 50257, "
                  "lm_head tied to wte", "float32"),
    "gpt2_1.5b": (t.GPT2LMHeadModel, t.GPT2Config(n_layer=48, n_embd=1600, n_head=25, vocab_size=50257,
                                                  n_positions=1024),
                  "GPT-2 1.5B (openai-community/gpt2-xl): GPT2LMHeadModel, 48 layers, width 1600, lm_head tied to wte",
                  "float32"),
    "llama2_7b": (t.LlamaForCausalLM, t.LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                                    num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                                                    max_position_embeddings=4096, tie_word_embeddings=False),
                  "LLaMA-2 7B (meta-llama/Llama-2-7b-hf): LlamaForCausalLM, 32 layers, width 4096, MLP 11008, "
                  "vocabulary 32000, untied lm_head", "float16"),
    "mistral_7b": (t.MistralForCausalLM, t.MistralConfig(hidden_size=4096, intermediate_size=14336,
                                                         num_hidden_layers=32, num_attention_heads=32,
                                                         num_key_value_heads=8, vocab_size=32000,
                                                         tie_word_embeddings=False),
                   "Mistral 7B (mistralai/Mistral-7B-v0.1): MistralForCausalLM, 32 layers, width 4096, MLP 14336, "
                   "8 key-value heads, vocabulary 32000", "bfloat16"),
    "bert_base": (t.BertModel, t.BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                            intermediate_size=3072, vocab_size=30522, max_position_embeddings=512),
                  "BERT-base (google-bert/bert-base-uncased): BertModel with its pooler, 12 layers, width 768, "
                  "vocabulary 30522", "float32"),
    "t5_base": (t.T5ForConditionalGeneration, t.T5Config(d_model=768, d_ff=3072, d_kv=64, num_layers=12,
                                                         num_decoder_layers=12, num_heads=12, vocab_size=32128),
                "T5-base (google-t5/t5-base): T5ForConditionalGeneration, 12 + 12 layers, width 768, vocabulary "
                "32128, embeddings shared and tied", "float32"),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, (cls, config, description, dtype) in MODELS.items():
        with torch.device("meta"):
            model = cls(config)
        tensors = [{"name": n, "shape": list(p.shape), "dtype": dtype} for n, p in model.named_parameters()]
        count = sum(p.numel() for _, p in model.named_parameters())
        path = os.path.join(OUT, f"{name}.shapes.json")
        with open(path, "w") as f:
            f.write('{"description": ' + json.dumps(description) + ',\n "transformers": ' +
                    json.dumps(t.__version__) + ',\n "parameters": ' + str(count) + ',\n "tensors": [\n')
            f.write(",\n".join("  " + json.dumps(x) for x in tensors))
            f.write("\n ]}\n")
        print(f"wrote {path}: {len(tensors)} tensors, {count:,} parameters")


if __name__ == "__main__":
    main()
