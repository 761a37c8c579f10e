#!/usr/bin/env python3
"""Golden data for `tally export --format hf` (tests/models/hf_export.cpp), from Hugging Face transformers.

Writes, into hf_export/ next to this script:
  config.json, config.bf16.json   transformers' own config.json (GPT2LMHeadModel.save_pretrained) for the test
                                  configuration, with float32 and with bfloat16 weights
  generation_config.json          transformers' own generation_config.json for it
  tokenizer_config.json           transformers' own, GPT2Tokenizer built from ../shared/data/gpt2 and saved
  golden.safetensors              prompt_ids (T,) int32: AutoTokenizer's ids for PROMPT from the directory tally
                                  exported; columns (K,) int32: every 199th vocabulary column and the last;
                                  f32.logits / bf16.logits (T, K) and f32.logsumexp / bf16.logsumexp (T,) float64:
                                  AutoModelForCausalLM's logits for those ids from the directories tally exported
                                  (f32 and --dtype bf16), computed in float64 from the files' weights

How: the test model's weights follow a closed formula (weights() below; tests/models/hf_export.cpp computes the same
bits in C++), written as a Hugging Face-named model.safetensors with a config.json beside it (n_head 4, dropout 0.1).
`tally export --checkpoint that --format hf` (and `--dtype bf16`) writes two directories; this script loads each with
AutoTokenizer.from_pretrained and AutoModelForCausalLM.from_pretrained, so a missing or wrong file or field fails
here. It also checks on the spot that the exported weights are the input's (bfloat16: rounded to nearest even, as
torch rounds), that tally's JSON files equal transformers' own field by field (but for
transformers_version, which tally does not write), that
nothing was missing or unexpected when loading, that a bf16 export loads as bfloat16 by default, and that greedy
generation runs with the generation config. The configuration: n_layer 2, n_head 4, n_embd 32, n_positions 32,
GPT-2's vocabulary (50257), gelu_new, LayerNorm eps 1e-5, dropout 0.1 (embeddings and residual; attention 0).

Run (from the repository root, after building): HF_HUB_OFFLINE=1 python3 tests/reference/make_hf_export_reference.py
[path/to/tally]   (default build/tally; torch, transformers, safetensors, numpy; CPU only; deterministic)
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file as save_numpy
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(HERE, "hf_export")
GPT2_FILES = os.path.join(ROOT, "..", "shared", "data", "gpt2")
L, NH, C, T, V = 2, 4, 32, 32, 50257
DROPOUT = 0.1
PROMPT = "Hello, world! It's a caf\u00e9 at 10:30.<|endoftext|>\n\tThe  end \u2014 \u4f60\u597d"
COLUMN_STRIDE = 199
M64 = (1 << 64) - 1


def tensor_names():
    """The HF names in the order the formula numbers them (j = 0, 1, ...)."""
    layer = ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
             "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
             "mlp.c_proj.bias"]
    names = ["wte.weight", "wpe.weight"] + [f"h.{i}.{n}" for i in range(L) for n in layer] + ["ln_f.weight", "ln_f.bias"]
    return ["transformer." + n for n in names]


def hf_shape(name):
    shapes = {"wte.weight": (V, C), "wpe.weight": (T, C), "c_attn.weight": (C, 3 * C), "c_attn.bias": (3 * C,),
              "attn.c_proj.weight": (C, C), "mlp.c_fc.weight": (C, 4 * C), "mlp.c_fc.bias": (4 * C,),
              "mlp.c_proj.weight": (4 * C, C)}
    for suffix, shape in shapes.items():
        if name.endswith(suffix):
            return shape
    return (C,)


def weights():
    """Tensor j, element i (row-major, HF layout): base + scale * u with u = splitmix64(i, j)'s top 24 bits / 2^24 - 1/2,
    computed in float64 and rounded to float32. LayerNorm weights 1 + 0.5u, LayerNorm biases 0.2u, other biases 0.1u,
    embeddings and Linear weights 0.25u."""
    out = {}
    for j, name in enumerate(tensor_names()):
        shape = hf_shape(name)
        i = np.arange(int(np.prod(shape)), dtype=np.uint64)
        z = (i + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(((j + 1) * 0xD1B54A32D192ED03) & M64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        u = (z >> np.uint64(40)).astype(np.float64) / float(1 << 24) - 0.5
        layer_norm = ".ln_" in name
        if layer_norm and name.endswith(".weight"):
            base, scale = 1.0, 0.5
        elif layer_norm:
            base, scale = 0.0, 0.2
        elif name.endswith(".bias"):
            base, scale = 0.0, 0.1
        else:
            base, scale = 0.0, 0.25
        out[name] = (base + scale * u).astype(np.float32).reshape(shape)
    return out


def own_json(path):
    with open(path) as f:
        return json.load(f)


def same_fields(tally_file, own, ignore):
    """tally's JSON file against transformers' own dict, field by field."""
    ours = own_json(tally_file)
    a = {k: v for k, v in ours.items() if k not in ignore}
    b = {k: v for k, v in own.items() if k not in ignore}
    assert a == b, (tally_file, {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)})


def logits_of(directory, ids, columns):
    model, info = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float64, attn_implementation="eager",
                                                       output_loading_info=True)
    for kind, keys in info.items():
        assert not keys, (directory, kind, keys)  # nothing missing, unexpected or mismatched
    assert type(model).__name__ == "GPT2LMHeadModel", type(model)
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]  # (T, V) float64
    assert logits.shape == (len(ids), V), logits.shape
    return logits[:, columns].contiguous(), torch.logsumexp(logits, dim=-1).contiguous()


def main():
    tally = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "tally"))
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        os.makedirs(src)
        save_numpy(weights(), os.path.join(src, "model.safetensors"), metadata={"format": "pt", "n_head": str(NH)})
        with open(os.path.join(src, "config.json"), "w") as f:  # where tally's import takes the dropout from
            json.dump({"n_head": NH, "resid_pdrop": DROPOUT, "embd_pdrop": DROPOUT}, f)
        exported = {}
        for dtype in ("f32", "bf16"):
            exported[dtype] = os.path.join(tmp, "exported-" + dtype)
            subprocess.run([tally, "export", "--checkpoint", os.path.join(src, "model.safetensors"), "--format", "hf",
                            "--dtype", dtype, "--out", exported[dtype]], check=True)

        # The exported weights are the input's, in its names and layout: bit for bit, or rounded to bfloat16.
        for dtype, cast in (("f32", torch.float32), ("bf16", torch.bfloat16)):
            with safe_open(os.path.join(exported[dtype], "model.safetensors"), "pt") as f:
                assert f.metadata().get("format") == "pt", f.metadata()
                assert sorted(f.keys()) == sorted(tensor_names()), f.keys()
                for name, value in weights().items():
                    assert torch.equal(f.get_tensor(name), torch.from_numpy(value).to(cast)), (dtype, name)

        # transformers' own files for the same configuration.
        cfg = GPT2Config(vocab_size=V, n_positions=T, n_embd=C, n_layer=L, n_head=NH, activation_function="gelu_new",
                         resid_pdrop=DROPOUT, embd_pdrop=DROPOUT, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
                         bos_token_id=50256, eos_token_id=50256, tie_word_embeddings=True)
        recipe = json.dumps(cfg.to_diff_dict(), sort_keys=True)  # before save_pretrained records a dtype in cfg
        own = GPT2LMHeadModel(cfg)
        own.save_pretrained(os.path.join(tmp, "own"))
        own.to(torch.bfloat16).save_pretrained(os.path.join(tmp, "own-bf16"))
        tok = GPT2Tokenizer(vocab=os.path.join(GPT2_FILES, "encoder.json"), merges=os.path.join(GPT2_FILES, "vocab.bpe"),
                            model_max_length=T)
        assert len(tok) == V, len(tok)
        tok.save_pretrained(os.path.join(tmp, "own-tok"))
        golden_files = {
            "config.json": own_json(os.path.join(tmp, "own", "config.json")),
            "config.bf16.json": own_json(os.path.join(tmp, "own-bf16", "config.json")),
            "generation_config.json": own_json(os.path.join(tmp, "own", "generation_config.json")),
            "tokenizer_config.json": own_json(os.path.join(tmp, "own-tok", "tokenizer_config.json")),
        }
        for name, content in golden_files.items():
            with open(os.path.join(OUT, name), "w") as f:
                f.write(json.dumps(content, indent=2, sort_keys=True) + "\n")

        ignore = {"transformers_version"}
        same_fields(os.path.join(exported["f32"], "config.json"), golden_files["config.json"], ignore)
        same_fields(os.path.join(exported["bf16"], "config.json"), golden_files["config.bf16.json"], ignore)
        same_fields(os.path.join(exported["f32"], "generation_config.json"), golden_files["generation_config.json"],
                    ignore)
        same_fields(os.path.join(exported["f32"], "tokenizer_config.json"), golden_files["tokenizer_config.json"],
                    ignore)

        # The exported directories as a Hugging Face user loads them.
        auto_tok = AutoTokenizer.from_pretrained(exported["f32"])
        ids = auto_tok(PROMPT)["input_ids"]
        assert auto_tok.decode(ids) == PROMPT, auto_tok.decode(ids)
        assert ids == tok(PROMPT)["input_ids"], "AutoTokenizer differs from the tokenizer built from GPT-2's files"
        assert 50256 in ids and len(ids) <= T, ids
        default_bf16 = AutoModelForCausalLM.from_pretrained(exported["bf16"])
        assert default_bf16.dtype == torch.bfloat16, default_bf16.dtype
        model = AutoModelForCausalLM.from_pretrained(exported["f32"])
        assert model.dtype == torch.float32, model.dtype
        generated = model.generate(torch.tensor([ids[:4]]), max_new_tokens=3, do_sample=False)
        assert generated.shape == (1, 7), generated.shape

        columns = sorted(set(range(0, V, COLUMN_STRIDE)) | {V - 1})
        golden = {"prompt_ids": torch.tensor(ids, dtype=torch.int32),
                  "columns": torch.tensor(columns, dtype=torch.int32)}
        for dtype in ("f32", "bf16"):
            cols, lse = logits_of(exported[dtype], ids, columns)
            golden[dtype + ".logits"], golden[dtype + ".logsumexp"] = cols, lse
        meta = {"prompt": PROMPT, "torch": torch.__version__, "transformers": transformers.__version__,
                "config": recipe,
                "columns": f"every {COLUMN_STRIDE}th vocabulary column and the last"}
        save_file(golden, os.path.join(OUT, "golden.safetensors"), metadata=meta)
        print(f"{len(ids)} prompt tokens; logits (f32 export) at token 0: {golden['f32.logits'][0, :3].tolist()}; "
              f"logsumexp {golden['f32.logsumexp'].tolist()[:3]}")


if __name__ == "__main__":
    main()
