#!/usr/bin/env python3
"""Writes tests/reference/state_bytes/: the optimizer state the reference implementations really allocate.

For a few Hugging Face architectures built locally from their config classes with small random weights (GPT-2,
LLaMA, BERT, T5: tiny configurations, nothing downloaded) and one hand-made module with 0-d, 1-D, 3-D and 4-D
parameters (a convolution and stacked experts), runs one real optimizer step in PyTorch with
came_pytorch.CAME (0.1.3), torch.optim.AdamW, transformers' Adafactor with and without beta1, and torch.optim.SGD
with and without momentum, and records every entry of optimizer.state[p] per parameter name: a tensor's shape, dtype
and bytes (numel * element size), or the Python type of a value that is no tensor (a step count kept as an int).

Files (each small JSON, one per model):
  state_bytes/<model>.json  {"model", "built_from", "versions", "tensors": [{"name", "shape", "dtype"}],
                             "cases": {case: {"reference", "tally": {"optimizer", "settings"},
                                              "state": {param: {key: {"shape", "dtype", "bytes"} | {"python": type}}}}}}
  state_bytes/llama_tiny.safetensors           the LLaMA model's parameters (a real safetensors file)
  state_bytes/llama_tiny_sharded/              the same model saved by save_pretrained in two shards, with its
                                               model.safetensors.index.json
"tensors" lists model.named_parameters() (tied weights once, as the optimizers see them): the shapes tally's
prediction starts from. tests/train/memory_shapes.cpp reads these files and checks tally's state, tensor by tensor,
against what the references allocated; tests/cli/memory_shapes.sh reads the safetensors files.

Regenerate: python3 tests/reference/make_state_bytes_reference.py   (needs torch, transformers, came-pytorch==0.1.3,
safetensors)
"""
import json
import os
import shutil

import came_pytorch
import safetensors
import torch
import transformers
from came_pytorch import CAME
from safetensors.torch import save_file
from transformers.optimization import Adafactor

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "state_bytes")

# Each case: the reference optimizer as built here, and the tally optimizer and settings that should match it.
CASES = {
    "came": (lambda ps: CAME(ps, lr=1e-3), "CAME(lr=1e-3)", "came", {}),
    "adamw": (lambda ps: torch.optim.AdamW(ps, lr=1e-3), "torch.optim.AdamW(lr=1e-3)", "adamw", {}),
    "adafactor_beta1": (
        lambda ps: Adafactor(ps, lr=1e-3, beta1=0.9, scale_parameter=False, relative_step=False, warmup_init=False),
        "Adafactor(lr=1e-3, beta1=0.9, scale_parameter=False, relative_step=False, warmup_init=False)",
        "adafactor", {}),
    "adafactor_no_beta1": (
        lambda ps: Adafactor(ps, lr=1e-3, beta1=None, scale_parameter=False, relative_step=False, warmup_init=False),
        "Adafactor(lr=1e-3, beta1=None, scale_parameter=False, relative_step=False, warmup_init=False)",
        "adafactor", {"no-adafactor-beta1": "true"}),
    "sgd_momentum": (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), "torch.optim.SGD(lr=0.1, momentum=0.9)",
                     "sgd", {}),
    "sgd_plain": (lambda ps: torch.optim.SGD(ps, lr=0.1), "torch.optim.SGD(lr=0.1)", "sgd", {"momentum": "0"}),
}
REFERENCE = {"came": "came_pytorch.CAME", "adamw": "torch.optim.AdamW", "adafactor_beta1": "transformers Adafactor",
             "adafactor_no_beta1": "transformers Adafactor", "sgd_momentum": "torch.optim.SGD",
             "sgd_plain": "torch.optim.SGD"}


class ConvExperts(torch.nn.Module):
    """Parameters of every rank tally's rules distinguish: 0-d, 1-D, [1, n], 3-D stacked experts, a 4-D convolution."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 8, kernel_size=3)             # weight [8, 4, 3, 3], bias [8]
        self.experts = torch.nn.Parameter(torch.randn(4, 16, 24))    # 4 experts of 16 x 24
        self.row = torch.nn.Parameter(torch.randn(1, 16))
        self.temperature = torch.nn.Parameter(torch.tensor(1.0))     # 0-d

    def loss(self):
        x = torch.randn(2, 4, 6, 6)
        y = self.conv(x).mean() * self.temperature
        return y + (self.experts ** 2).mean() + (self.row ** 2).mean()


def hf_models():
    """name -> (builder, description of the config). Tiny configurations: every file stays a few kilobytes."""
    c = transformers
    return {
        "gpt2_tiny": (lambda: c.GPT2LMHeadModel(c.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64,
                                                             n_positions=32)),
                      "GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64, n_positions=32))"),
        "llama_tiny": (lambda: c.LlamaForCausalLM(c.LlamaConfig(hidden_size=16, intermediate_size=32,
                                                                num_hidden_layers=2, num_attention_heads=4,
                                                                num_key_value_heads=2, vocab_size=64,
                                                                max_position_embeddings=32)),
                       "LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, "
                       "num_attention_heads=4, num_key_value_heads=2, vocab_size=64, max_position_embeddings=32))"),
        "bert_tiny": (lambda: c.BertForMaskedLM(c.BertConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                                             num_attention_heads=2, vocab_size=64,
                                                             max_position_embeddings=32)),
                      "BertForMaskedLM(BertConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, "
                      "num_attention_heads=2, vocab_size=64, max_position_embeddings=32))"),
        "t5_tiny": (lambda: c.T5ForConditionalGeneration(c.T5Config(d_model=16, d_ff=32, d_kv=8, num_layers=2,
                                                                    num_heads=2, vocab_size=64, pad_token_id=0,
                                                                    decoder_start_token_id=0)),
                    "T5ForConditionalGeneration(T5Config(d_model=16, d_ff=32, d_kv=8, num_layers=2, num_heads=2, "
                    "vocab_size=64, pad_token_id=0, decoder_start_token_id=0))"),
    }


def loss_of(name, model):
    if name == "conv_experts":
        return model.loss()
    ids = torch.randint(0, 64, (2, 8))
    return model(input_ids=ids, labels=ids).loss


def state_record(value):
    if torch.is_tensor(value):
        return {"shape": list(value.shape), "dtype": str(value.dtype).replace("torch.", ""),
                "bytes": value.numel() * value.element_size()}
    return {"python": type(value).__name__}


def record(name, build, built_from):
    out = {"model": name, "built_from": built_from,
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "came_pytorch": "0.1.3", "safetensors": safetensors.__version__},
           "cases": {}}
    torch.manual_seed(0)
    model = build()
    named = list(model.named_parameters())  # tied weights once
    out["tensors"] = [{"name": n, "shape": list(p.shape), "dtype": str(p.dtype).replace("torch.", "")}
                      for n, p in named]
    for case, (make, described, tally_name, tally_settings) in CASES.items():
        torch.manual_seed(0)
        model = build()
        named = list(model.named_parameters())
        opt = make([p for _, p in named])
        opt.zero_grad()
        loss_of(name, model).backward()
        opt.step()
        state = {}
        for n, p in named:
            assert p.grad is not None, f"{name}: {n} got no gradient"
            state[n] = {k: state_record(v) for k, v in opt.state[p].items()}
        out["cases"][case] = {"reference": f"{REFERENCE[case]}: {described}",
                              "tally": {"optimizer": tally_name, "settings": tally_settings},
                              "state": state}
    return out, model


def write_json(path, doc):
    """Readable and small: one line per tensor, per case one line per parameter's state."""
    compact = lambda x: json.dumps(x, separators=(",", ":"))
    lines = ["{"]
    for key in ("model", "built_from", "versions"):
        lines.append(f" {json.dumps(key)}: {compact(doc[key])},")
    lines.append(' "tensors": [')
    lines.append(",\n".join("  " + compact(t) for t in doc["tensors"]))
    lines.append(" ],")
    lines.append(' "cases": {')
    cases = []
    for case, c in doc["cases"].items():
        state = ",\n".join(f"    {json.dumps(n)}: {compact(s)}" for n, s in c["state"].items())
        cases.append(f'  {json.dumps(case)}: {{"reference": {json.dumps(c["reference"])}, '
                     f'"tally": {compact(c["tally"])}, "state": {{\n{state}\n  }}}}')
    lines.append(",\n".join(cases))
    lines.append(" }")
    lines.append("}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    assert came_pytorch.__file__  # the package under test, 0.1.3 (pip install came-pytorch==0.1.3)
    torch.set_default_dtype(torch.float32)
    os.makedirs(OUT, exist_ok=True)
    models = dict(hf_models())
    models["conv_experts"] = (ConvExperts, "a module with a Conv2d(4, 8, 3), stacked experts [4, 16, 24], a [1, 16] "
                                           "row and a 0-d temperature")
    for name, (build, built_from) in models.items():
        doc, model = record(name, build, built_from)
        write_json(os.path.join(OUT, f"{name}.json"), doc)
        if name == "llama_tiny":
            torch.manual_seed(0)
            model = build()
            tensors = {n: p.detach().contiguous() for n, p in model.named_parameters()}
            save_file(tensors, os.path.join(OUT, "llama_tiny.safetensors"), metadata={"format": "pt"})
            sharded = os.path.join(OUT, "llama_tiny_sharded")
            shutil.rmtree(sharded, ignore_errors=True)
            model.save_pretrained(sharded, max_shard_size="20KB", safe_serialization=True)
            for extra in ("config.json", "generation_config.json"):
                if os.path.exists(os.path.join(sharded, extra)):
                    os.remove(os.path.join(sharded, extra))
        print(f"wrote {name}.json ({len(doc['tensors'])} tensors)")


if __name__ == "__main__":
    main()
