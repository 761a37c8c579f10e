#!/usr/bin/env python3
# Writes tests/reference/tokenizer_reference.json: tiktoken's `gpt2` token ids for a committed list of tricky
# strings, plus the token count of the whole Tiny Shakespeare text. tally's tokenizer must reproduce them exactly.
# The Encoding is built offline from ../shared/data/gpt2 (byte-identical to the files tiktoken downloads).
# Usage: python3 tests/reference/make_tokenizer_reference.py [--shared-data DIR]
import argparse
import hashlib
import json
import os
import random
import sys

import tiktoken
import tiktoken.load
from tiktoken_ext import openai_public

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EOT = "<|endoftext|>"

# GPT-2's published pre-tokenizer pattern. tiktoken's gpt2 (r50k_pat_str) is a rewrite of it with possessive
# quantifiers; we encode every string with both and assert they agree, so the reference holds for either.
GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

SHAKESPEARE = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?

All:
Resolved. resolved.

First Citizen:
First, you know Caius Marcius is chief enemy to the people.

All:
We know't, we know't.

First Citizen:
Let us kill him, and we'll have corn at our own price.
Is't a verdict?

All:
No more talking on't; let it be done: away, away!

Second Citizen:
One word, good citizens.

First Citizen:
We are accounted poor citizens, the patricians good.
What authority surfeits on would relieve us: if they
would yield us but the superfluity, while it were
wholesome, we might guess they relieved us humanely;
but they think we are too dear: the leanness that
afflicts us, the object of our misery, is as an
inventory to particularise their abundance; our
sufferance is a gain to them Let us revenge this with
our pikes, ere we become rakes: for the gods know I
speak this in hunger for bread, not in thirst for revenge.
"""


def pseudo_random_word(n: int, alphabet: str, seed: int) -> str:
    """A deterministic long 'word' (no spaces) that exercises many different merges."""
    out, x = [], seed
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) % 2**64
        out.append(alphabet[(x >> 33) % len(alphabet)])
    return "".join(out)


# (name, text, special allowed?)
CASES = [
    ("empty", "", False),
    ("hello", "Hello, world!", False),
    ("contractions", "I'm sure you're right, they've said it's what we'd do and we'll see; don't", False),
    ("contractions_upper", "I'M SURE YOU'RE RIGHT, THEY'VE SAID IT'S WHAT WE'D DO AND WE'LL SEE; DON'T 'S 'LL 'Ve", False),
    ("apostrophe_runs", "'''s ''t 'x' rock'n'roll ' s", False),
    ("unicode_letters", "Ünïcödé naïve café Straße ÆØÅ Ελληνικά Русский текст עברית العربية हिन्दी 日本語のテキスト 한국어 ไทย", False),
    ("unicode_digits", "٠١٢٣٤٥ ०१२३ ௧௨௩ ①②③ Ⅻ ½¾ ²³ 𝟘𝟙𝟚 ๑๒๓ 12٣4", False),
    ("emoji", "I ❤️ tokens 😀😃😄 👍🏽 🇺🇳🇫🇷", False),
    ("emoji_zwj", "family 👨‍👩‍👧‍👦 and 🏳️‍🌈 and 🧑🏿‍💻!", False),
    ("combining", "e\u0301 a\u0308\u0304 Z\u0335\u0321\u0322a\u0336l\u0338g\u0337o\u0334 \u0301leading", False),
    ("whitespace_runs", "a  b   c    d     e\t\tf \t g  \n  h", False),
    ("tabs", "\tindented\n\t\tdouble\n \t mixed\t", False),
    ("crlf", "line one\r\nline two\r\n\r\nline four\r\n", False),
    ("trailing_spaces", "trailing spaces   ", False),
    ("leading_spaces", "   leading spaces", False),
    ("only_spaces", "     ", False),
    ("only_newlines", "\n\n\n\n", False),
    ("multiple_newlines", "para one.\n\n\npara two.\n\n\n\n  para three\n", False),
    ("space_newline_word", "a \nb  \n\nc \n d", False),
    ("long_number", "31415926535897932384626433832795028841971693993751 and 1,000,000.00 and 2024-05-20", False),
    ("punctuation", "!!!??? ... --- *** ((())) [[]] {{}} <<>> @#$%^&*_+=~` |\\/ ;;;:::\"\"\"", False),
    ("code", "def f(x):\n    return x**2 + 1  # comment\n\nif __name__ == '__main__':\n\tprint(f(3))\n", False),
    ("unicode_spaces", "a\u00a0b\u2003c\u3000d\u2028e\u2029f\u0085g\u180eh\u200bi\u202fj\u205fk\u1680l", False),
    ("control_chars", "bell\x07 null\x00 esc\x1b[0m del\x7f unit\x1f sep\x1c", False),
    ("special_allowed", "Hello" + EOT + "world " + EOT + EOT + " next\n" + EOT, True),
    ("special_disallowed", "Hello" + EOT + "world " + EOT + EOT + " next\n" + EOT, False),
    ("special_alone_allowed", EOT, True),
    ("special_alone_disallowed", EOT, False),
    ("special_partial", "<|endoftext| <|endoftext|><|endof", True),
    ("special_whitespace_boundary", "end  \n" + EOT + "  start", True),
    ("long_word", "a" * 300 + " " + "ab" * 200 + " " + "Supercalifragilisticexpialidocious" * 5, False),
    ("long_whitespace", " " * 200 + "x" + "\n" * 100 + "y", False),
    ("mixed_scripts_no_spaces", "abcαβγабв123٤٥٦xyz", False),
    ("byte_fallback", "\U0001F600\U0002A6A5\U0010FFFD\uFFFD\uE000", False),
    ("long_random_letters", pseudo_random_word(3000, "etaoinshrdlucmfwypvbgkqjxz", 1), False),
    ("long_random_mixed", pseudo_random_word(1500, "eta oinsETAéü中0123456789.,'\n\t", 7), False),
    ("long_digits", pseudo_random_word(1000, "0123456789", 3), False),
    ("shakespeare", SHAKESPEARE, False),
]


# Building blocks of the random cases: every class the pre-tokenizer distinguishes, and the characters where
# regex engines disagree (U+180E, U+0085, NBSP, other Unicode spaces), in short runs.
RANDOM_ATOMS = ["'", "'s", "'S", "'ll", "'LL", "'re", "'ve", "'m", "'d", "'t", " ", "  ", "\t", "\n", "\r\n", "\n\n",
                "\u00a0", "\u180e", "\u0085", "\u2003", "\u3000", "\u200b", "\u2028", "\x0b", "\x0c", "\x1c",
                "a", "e", "the", "The", "ing", "tion", "Hello", "x", "Q", "\u00e9", "\u00df", "\u03bb", "\u0436",
                "\u05d0", "\u0628", "\u0915", "\u093f", "\u4e2d", "\u6587", "\u3042", "\uac00", "\u0e01",
                "0", "7", "42", "1999", "\u0663", "\u0967", "\u00bd", "\u2167", "\u00b2",
                ".", ",", "!", "?", "...", "-", "--", "(", ")", "\"", "#", "$", "%", "&", "*", "_", "/", "\\", "@",
                "\u2014", "\u201c", "\u00bf", "\U0001F600", "\U0001F468\u200d\U0001F469", "\u2764\ufe0f",
                "\U0001F44D\U0001F3FD", "e\u0301", "\u0301", "\ufffd", "\U00010348", "<|endoftext|>", "<|", "|>",
                # assigned after Unicode 14: Kawi letter and digit, CJK Ext. H, Nag Mundari digit, Todhri letter
                "\U00011F04", "\U00011F52", "\U00031350", "\U0001E4F3", "\U000105C0"]


def random_cases(count: int, seed: int) -> list[tuple[str, str, bool]]:
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        text = "".join(rng.choice(RANDOM_ATOMS) for _ in range(rng.randint(0, 40)))
        cases.append((f"random_{i:03d}", text, rng.random() < 0.5))
    return cases


# Every code point c (surrogates excluded) in the template below, one string per code point. "x{c}'s", "1{c}'s",
# "!{c}'s" and "\t{c}'s" split into different tokens unless tiktoken and tally put c in the same class (letter,
# number, other, white space). The ids are folded into FNV-1a 64 (each id as 4 little-endian bytes, then FF FF FF FF
# after each string): this pins the pre-tokenizer's classes for all of Unicode without storing 1.1M id lists.
SWEEP_TEMPLATE = "x{c}'s 1{c}'s !{c}'s \t{c}'s a{c}b {c}{c} {c}\n{c} x"


def codepoint_sweep(enc: tiktoken.Encoding) -> dict:
    h = 0xCBF29CE484222325
    count = 0
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        c = chr(cp)
        ids = enc.encode_ordinary(SWEEP_TEMPLATE.replace("{c}", c))
        for b in b"".join(i.to_bytes(4, "little") for i in ids) + b"\xff\xff\xff\xff":
            h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        count += 1
    return {"template": SWEEP_TEMPLATE, "code_points": count, "fnv1a64": f"{h:016x}"}


def build_encoding(gpt2_dir: str, pat: str, name: str) -> tiktoken.Encoding:
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=os.path.join(gpt2_dir, "vocab.bpe"),
        encoder_json_file=os.path.join(gpt2_dir, "encoder.json"))
    return tiktoken.Encoding(name=name, pat_str=pat, mergeable_ranks=ranks, special_tokens={EOT: 50256})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared-data", default=os.path.join(os.path.dirname(ROOT), "shared", "data"))
    args = ap.parse_args()
    gpt2_dir = os.path.join(args.shared_data, "gpt2")
    enc = build_encoding(gpt2_dir, openai_public.r50k_pat_str, "gpt2_offline")
    enc_orig = build_encoding(gpt2_dir, GPT2_PAT, "gpt2_original_pattern")

    def encode(text: str, allowed: bool) -> list[int]:
        if allowed:
            ids = enc.encode(text, allowed_special={EOT})
            assert ids == enc_orig.encode(text, allowed_special={EOT})
        else:
            ids = enc.encode_ordinary(text)
            assert ids == enc_orig.encode_ordinary(text)
        assert enc.decode_bytes(ids) == text.encode("utf-8")
        return ids

    cases = [{"name": n, "text": t, "special": "allowed" if a else "disallowed", "ids": encode(t, a)}
             for n, t, a in CASES + random_cases(300, 20240520)]

    with open(os.path.join(args.shared_data, "tinyshakespeare.txt"), "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8")
    plain = encode(text, False)
    with_eot = encode(EOT + text, True)
    # llm.c's dev/data/tinyshakespeare.py: every blank-line-separated statement is a document with EOT before it.
    llmc_docs = encode(EOT + text.replace("\n\n", "\n\n" + EOT), True)
    out = {
        "generator": "tests/reference/make_tokenizer_reference.py",
        "tiktoken_version": tiktoken.__version__,
        "pattern": openai_public.r50k_pat_str,
        "codepoint_sweep": codepoint_sweep(enc),
        "cases": cases,
        "tinyshakespeare": {
            "sha256": hashlib.sha256(raw).hexdigest(),
            "bytes": len(raw),
            "tokens_plain": len(plain),
            "tokens_with_leading_eot": len(with_eot),
            "tokens_llmc_split_docs": len(llmc_docs),
            "first_tokens_plain": plain[:16],
            "last_tokens_plain": plain[-16:],
            "note": ("tokens_plain = encode_ordinary(whole file); tokens_with_leading_eot = encode(EOT + file) "
                     "(what `tally prepare --text` writes); tokens_llmc_split_docs = llm.c's tinyshakespeare.py "
                     "(EOT first and after every blank line; `tally prepare --split-docs '\\n\\n'`)."),
        },
    }
    path = os.path.join(HERE, "tokenizer_reference.json")
    # One case per line: small, and a regenerated file diffs case by case.
    body = json.dumps({k: v for k, v in out.items() if k != "cases"}, ensure_ascii=True, indent=1)
    lines = ",\n".join("  " + json.dumps(c, ensure_ascii=True) for c in cases)
    with open(path, "w", encoding="utf-8") as f:
        f.write(body[:-2] + ',\n "cases": [\n' + lines + "\n ]\n}\n")
    print(f"wrote {path}: {len(cases)} cases; Tiny Shakespeare {len(plain)} tokens plain, "
          f"{len(with_eot)} with a leading EOT, {len(llmc_docs)} split as llm.c")


if __name__ == "__main__":
    sys.exit(main())
