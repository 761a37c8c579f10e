#!/usr/bin/env python3
"""Writes tests/reference/safetensors_sample.safetensors with Python's safetensors (torch backend).

tests/core/io_safetensors.cpp reads it and checks every value and bit exactly, so any change here must be
mirrored there. Covers F32, F64, BF16, F16 (normal and subnormal), I64 (full range), U8, a 0-d tensor,
an empty (0, 3) tensor, and non-ASCII metadata. Regenerate: python3 tests/reference/make_safetensors_sample.py
"""
import os

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    tensors = {
        # F32 (2, 3): 0.5 * i - 1
        "weight": (torch.arange(6, dtype=torch.float32) * 0.5 - 1.0).reshape(2, 3),
        # F64: values that need double precision
        "f64": torch.tensor([1.0 / 3.0, -1e300], dtype=torch.float64),
        # BF16: exactly representable values, then 0.1 (rounds to bits 0x3DCD) and -inf
        "bf16_vals": torch.tensor([1.0, -2.5, 0.15625, 3.140625, -65536.0, 0.1, float("-inf")], dtype=torch.bfloat16),
        # F16: 1, largest finite, smallest normal 2^-14, smallest subnormal 2^-24, -0
        "half": torch.tensor([1.0, 65504.0, 2.0**-14, 2.0**-24, -0.0], dtype=torch.float16),
        # I64 across the range
        "ids": torch.tensor([0, -1, 2**40 + 3, 2**63 - 1, -(2**63)], dtype=torch.int64),
        # U8 (2, 2, 1)
        "bytes": torch.tensor([0, 1, 254, 255], dtype=torch.uint8).reshape(2, 2, 1),
        # 0-d F32
        "scalar": torch.tensor(3.5, dtype=torch.float32),
        # empty F32 (0, 3)
        "empty": torch.zeros((0, 3), dtype=torch.float32),
    }
    metadata = {"format": "pt", "source": "tally io test sample", "unicode": "h\u00e9llo \u2713"}
    out = os.path.join(HERE, "safetensors_sample.safetensors")
    save_file(tensors, out, metadata=metadata)
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")


if __name__ == "__main__":
    main()
