#!/usr/bin/env python3
"""Writes the small seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/) for the binary and text
formats that do not need a tally run: .npy, safetensors, llm.c token shards and model files, safetensors GPT-2,
loader positions, tokenizer files and texts, JSON configs and flag lists. The checkpoint manifest.json and
state.json seeds come from a real `tally train` run (see corpus/README.md). Deterministic: rerunning rewrites the
same bytes. Uses numpy and safetensors (reference tooling only; nothing here is part of the build)."""
import io
import json
import os
import struct

import numpy as np
from safetensors.numpy import save as st_save

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
GPT2_DIR = os.path.join(HERE, "..", "..", "..", "shared", "data", "gpt2")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def npy(a):
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


rng = np.random.default_rng(0)

# .npy
put("fuzz_npy", "f32_2x3.npy", npy(np.arange(6, dtype="<f4").reshape(2, 3)))
put("fuzz_npy", "i64_scalar.npy", npy(np.array(7, dtype="<i8")))
put("fuzz_npy", "f64_fortran.npy", npy(np.asfortranarray(np.arange(6, dtype="<f8").reshape(3, 2))))
put("fuzz_npy", "u16_empty.npy", npy(np.zeros((0, 4), dtype="<u2")))

# safetensors
put("fuzz_safetensors", "mixed.safetensors", st_save({
    "a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], dtype=np.int64),
    "c": np.zeros((0,), dtype=np.float16), "d": np.array(3.5, dtype=np.float64)}, metadata={"format": "pt"}))
with open(os.path.join(HERE, "..", "reference", "safetensors_sample.safetensors"), "rb") as f:
    put("fuzz_safetensors", "python_sample.safetensors", f.read())

# llm.c token shards, behind the target's 6 configuration bytes (mode, B, T, seed, rank/world, vocab/300)
def shard(tokens):
    header = np.zeros(256, dtype="<i4")
    header[:3] = [20240520, 1, len(tokens)]
    return header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes()

toks = rng.integers(0, 50257, 120)
put("fuzz_shards", "llmc_seq", bytes([0, 1, 7, 0, 0, 200]) + shard(toks))
put("fuzz_shards", "llmc_shuffled_vocab", bytes([6, 2, 5, 9, 0, 200]) + shard(toks))
put("fuzz_shards", "llmc_world2", bytes([2, 0, 3, 1, 0b0101, 200]) + shard(toks))
put("fuzz_shards", "raw_uint16", bytes([1, 1, 3, 0, 0, 0]) + np.asarray(toks[:40], dtype="<u2").tobytes())

# loader positions: order byte, then the encoding (magic "TLDP", version, epoch, shard, window, seed, order, B, T,
# world, number of shards; from version 4 the shards' tokens and the FNV-1a hash of their counts: 96 bytes, 80
# before; from version 5 the FNV-1a hash of each shard's tokens at 64 evenly spaced windows of 32: 104 bytes), for
# the target's 2-shard loader (97 and 61 tokens, each 0, 1, 2, ...) with B=2, T=4, seed 7
def fnv(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h or 1

def sampled(counts):
    out = b""
    for n in counts:
        w = min(32, n)
        for j in range(64):
            start = (n - w) * j // 63
            out += struct.pack("<%dH" % w, *range(start, start + w))
    return out

def position(order, epoch, shard_, window, version=2, world=1):
    out = bytes([order]) + struct.pack("<IIQQQQQqqqQ", 0x50444C54, version, epoch, shard_, window, 7, order, 2, 4,
                                       world, 2)
    if version >= 4:
        out += struct.pack("<QQ", 97 + 61, fnv(struct.pack("<QQ", 97, 61)))
    if version >= 5:
        out += struct.pack("<Q", fnv(sampled([97, 61])))
    return out

put("fuzz_loader_position", "sequential", position(0, 0, 1, 3))
put("fuzz_loader_position", "shuffled", position(1, 2, 0, 5))
put("fuzz_loader_position", "end_of_shard", position(0, 1, 1, 7))
put("fuzz_loader_position", "shuffled_v1_world2", position(1, 1, 1, 3, version=1, world=2))  # windows of 2 slices
put("fuzz_loader_position", "shuffled_v4", position(1, 2, 0, 5, version=4))
put("fuzz_loader_position", "shuffled_v5", position(1, 2, 0, 5, version=5))

# llm.c model files: L1 NH1 C4 T4 V8 Vp8 (300 parameters), fp32 (version 3) and bf16 (version 5)
def llmc(version, n_params=300, cfg=(4, 8, 1, 1, 4, 8)):
    header = np.zeros(256, dtype="<i4")
    header[:8] = [20240326, version, *cfg]
    w = rng.standard_normal(n_params).astype("<f4")
    body = w.tobytes() if version == 3 else (w.view("<u4") >> 16).astype("<u2").tobytes()
    return header.tobytes() + body

put("fuzz_llmc", "tiny_f32.bin", llmc(3))
put("fuzz_llmc", "tiny_bf16.bin", llmc(5))

# safetensors GPT-2 in Hugging Face naming: L1 C4 V8 T4, heads in the metadata
C, V, T = 4, 8, 4
def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)
hf = {"transformer.wte.weight": f32(V, C), "transformer.wpe.weight": f32(T, C),
      "transformer.ln_f.weight": f32(C), "transformer.ln_f.bias": f32(C)}
for name, shape in [("ln_1.weight", (C,)), ("ln_1.bias", (C,)), ("attn.c_attn.weight", (C, 3 * C)),
                    ("attn.c_attn.bias", (3 * C,)), ("attn.c_proj.weight", (C, C)), ("attn.c_proj.bias", (C,)),
                    ("ln_2.weight", (C,)), ("ln_2.bias", (C,)), ("mlp.c_fc.weight", (C, 4 * C)),
                    ("mlp.c_fc.bias", (4 * C,)), ("mlp.c_proj.weight", (4 * C, C)), ("mlp.c_proj.bias", (C,))]:
    hf["transformer.h.0." + name] = f32(*shape)
put("fuzz_safetensors_gpt2", "tiny_f32.safetensors", st_save(hf, metadata={"n_head": "2", "format": "pt"}))
put("fuzz_safetensors_gpt2", "tiny_f16_no_prefix.safetensors",
    st_save({k.removeprefix("transformer."): v.astype(np.float16) for k, v in hf.items()}, metadata={"n_head": "1"}))

# tokenizer files: encoder.json NUL vocab.bpe. A consistent prefix of GPT-2's (256 bytes + the first 40 merges +
# <|endoftext|>): it passes every check but the vocabulary size, which is GPT-2's alone.
with open(os.path.join(GPT2_DIR, "vocab.bpe"), encoding="utf-8") as f:
    bpe_lines = f.read().split("\n")
with open(os.path.join(GPT2_DIR, "encoder.json"), encoding="utf-8") as f:
    enc = json.load(f)
merges = bpe_lines[1:41]
by_id = {v: k for k, v in enc.items()}
small_enc = {by_id[i]: i for i in range(256 + len(merges))}
small_enc["<|endoftext|>"] = 256 + len(merges)
put("fuzz_tokenizer_files", "gpt2_prefix",
    json.dumps(small_enc, ensure_ascii=False) + "\0" + "\n".join([bpe_lines[0]] + merges) + "\n")
put("fuzz_tokenizer_files", "bad_merge", '{"a": 0}\0#version: 0.2\nĠ t\nonlyone\n')

# tokenizer encode: valid and invalid UTF-8
for i, text in enumerate([b"Hello, world! <|endoftext|> ROMEO: 123 'll   \n\n",
                          "na\u00efve caf\u00e9 \u65e5\u672c\u8a9e \U0001F600 \u1c89".encode(),
                          b"\xc3\x28 invalid", b"\xed\xa0\x80 surrogate", b"\xf4\x90\x80\x80 too large",
                          b"   \t\t  trailing spaces   ", b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]):
    put("fuzz_tokenizer_encode", f"text{i}", text)

# JSON configs for `tally train --config`
for i, cfg in enumerate([{"batch": 2, "seq": 32, "optimizer": "came", "no-shuffle": True},
                         {"model": "tiny", "total-batch": 128, "batch": 2, "seq": 16, "lr": 3e-3, "warmup": 2},
                         {"optimizer": "adafactor", "no-adafactor-beta1": True, "decay": "all", "beta1": 0.5}]):
    put("fuzz_config_json", f"config{i}.json", json.dumps(cfg))

# flag lists, NUL-separated
for i, args in enumerate([["--model", "tiny", "--batch", "2", "--seq", "32", "--steps", "3"],
                          ["--optimizer=adamw", "--lr", "1e-3", "--total-batch", "256", "--batch=4", "--seq=32"],
                          ["--layers", "3", "--heads", "2", "--width", "64", "--block", "64", "--no-vocab-pad",
                           "--came-bf16-m", "--schedule", "constant"]]):
    put("fuzz_flags", f"args{i}", "\0".join(args))
