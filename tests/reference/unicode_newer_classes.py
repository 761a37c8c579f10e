#!/usr/bin/env python3
# Finds the code points tiktoken's regex engine (Rust regex, Unicode 16 in tiktoken 0.14) treats as \p{L} or \p{N}
# that are unassigned in this Python's Unicode database, and prints them as PCRE2 class ranges. tally's tokenizer
# adds these ranges to \p{L} / \p{N} because PCRE2 10.42 (Debian 12) knows only Unicode 14; run this again with the
# Python/PCRE2 pair of a new platform and compare with kNewerLetters / kNewerNumbers in data/tokenizer.cpp.
# Method: for each code point c, an Encoding whose vocabulary holds "x"+c, "1"+c, "!"+c, "\t"+c as whole tokens
# encodes that probe as one token exactly when the pre-tokenizer keeps it in one piece (c a letter, a number,
# other, or white space). Takes ~20 s.
import sys
import unicodedata

import tiktoken
from tiktoken_ext import openai_public

PROBES = (("L", "x"), ("N", "1"), ("O", "!"), ("S", "\t"))


def classify_block(start: int, end: int) -> dict[int, str]:
    cps = [cp for cp in range(start, end) if not 0xD800 <= cp < 0xE000]
    ranks = {bytes([b]): b for b in range(256)}
    for cp in cps:
        for _, pre in PROBES:
            ranks.setdefault((pre + chr(cp)).encode(), len(ranks))
    enc = tiktoken.Encoding(name=f"probe_{start:x}", pat_str=openai_public.r50k_pat_str, mergeable_ranks=ranks,
                            special_tokens={})
    out = {}
    for cp in cps:
        hits = [k for k, pre in PROBES if len(enc.encode_ordinary(pre + chr(cp))) == 1]
        out[cp] = hits[0] if len(hits) == 1 else "?"
    return out


def ranges(cps: list[int]) -> str:
    spans = []
    for cp in cps:
        if spans and spans[-1][1] == cp - 1:
            spans[-1][1] = cp
        else:
            spans.append([cp, cp])
    return "".join(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in spans)


def main() -> None:
    newer = {"L": [], "N": []}
    for start in range(0, 0x110000, 0x10000):
        for cp, cls in classify_block(start, start + 0x10000).items():
            if cls == "?":
                sys.exit(f"U+{cp:04X}: probes disagree")
            if cls in newer and unicodedata.category(chr(cp)) == "Cn":
                newer[cls].append(cp)
    print(f"// Python unicodedata {unicodedata.unidata_version}, tiktoken {tiktoken.__version__}")
    print(f'constexpr const char* kNewerLetters = R"({ranges(newer["L"])})";  // {len(newer["L"])} code points')
    print(f'constexpr const char* kNewerNumbers = R"({ranges(newer["N"])})";  // {len(newer["N"])} code points')


if __name__ == "__main__":
    main()
