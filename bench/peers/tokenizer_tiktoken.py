#!/usr/bin/env python3
# Peer for bench_tokenizer: times tiktoken's gpt2 encode_ordinary (one thread) on a text file and prints
# {"mb_per_s": ..., "tokens": ..., "bytes": ...} as JSON. The Encoding is built offline from the GPT-2 files.
import argparse
import json
import os
import time

import tiktoken
import tiktoken.load
from tiktoken_ext import openai_public


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    shared = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(here))), "shared", "data")
    ap = argparse.ArgumentParser()
    ap.add_argument("--text", default=os.path.join(shared, "tinyshakespeare.txt"))
    ap.add_argument("--gpt2-dir", default=os.path.join(shared, "gpt2"))
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=os.path.join(args.gpt2_dir, "vocab.bpe"),
        encoder_json_file=os.path.join(args.gpt2_dir, "encoder.json"))
    enc = tiktoken.Encoding(name="gpt2_offline", pat_str=openai_public.r50k_pat_str, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": 50256})
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    nbytes = len(text.encode("utf-8"))
    enc.encode_ordinary(text)  # warm-up
    best = float("inf")
    for _ in range(max(1, args.reps)):
        t0 = time.perf_counter()
        ids = enc.encode_ordinary(text)
        best = min(best, time.perf_counter() - t0)
    print(json.dumps({"peer": "tiktoken", "version": tiktoken.__version__, "mb_per_s": nbytes / 1e6 / best,
                      "tokens": len(ids), "bytes": nbytes}))


if __name__ == "__main__":
    main()
