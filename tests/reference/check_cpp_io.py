#!/usr/bin/env python3
"""Checks that files written by tally's C++ io code load in Python (safetensors and numpy) with exact values.

Run by tests/core/io_python.cpp as `python3 tests/reference/check_cpp_io.py DIR` after it writes DIR/*.
The expected values here mirror that test; change both together. Exit 0: all good; 77: numpy or safetensors
is not installed (the C++ test then reports a skip); anything else: a mismatch, printed on stderr.
"""
import os
import struct
import sys

try:
    import numpy as np
    import safetensors
    from safetensors.numpy import load_file, save
except ImportError as e:  # pragma: no cover
    print(f"skip: {e}", file=sys.stderr)
    sys.exit(77)


def bf16_bits_to_f32(raw):
    return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x):  # round to nearest even, as tally::float_to_bf16
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def expected():
    w = (np.arange(6, dtype=np.float32) * 0.5 - 1.0).reshape(2, 3)
    return {
        "w": w,
        "d": np.array([1.0 / 3.0, -1e300], dtype=np.float64),
        "h": np.array([1.0, 2.0**-24, -np.inf], dtype=np.float16).reshape(3, 1),
        "i32": np.array([-7, 2147483647], dtype=np.int32),
        "i64": np.array([-(2**63), 42], dtype=np.int64).reshape(1, 2),
        "u16": np.array([0, 65535, 50256], dtype=np.uint16),
        "u8": np.array([9], dtype=np.uint8).reshape(1, 1, 1),
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }


BF16_SOURCE = np.array([1.0, -0.1, 3e38, 0.15625], dtype=np.float32)


def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def main():
    d = sys.argv[1]
    errors = []
    exp = expected()

    # 1. The full file (with BF16): parsed by the reference (Rust) deserializer, every tensor compared.
    path = os.path.join(d, "cpp.safetensors")
    raw = open(path, "rb").read()
    got = dict(safetensors.deserialize(raw))
    with safetensors.safe_open(path, framework="numpy") as f:
        if f.metadata() != {"format": "pt", "writer": "tally"}:
            errors.append(f"metadata {f.metadata()}")
    for name, arr in exp.items():
        t = got.get(name)
        if t is None:
            errors.append(f"{name}: missing")
            continue
        back = np.frombuffer(bytes(t["data"]), dtype=arr.dtype).reshape(t["shape"])
        if not same(back, arr):
            errors.append(f"{name}: got {t['dtype']} {t['shape']} {back!r}, expected {arr!r}")
    t = got["b"]
    if t["dtype"] != "BF16" or t["shape"] != [4]:
        errors.append(f"b: {t['dtype']} {t['shape']}")
    elif not np.array_equal(np.frombuffer(bytes(t["data"]), "<u2"), f32_to_bf16_bits(BF16_SOURCE)):
        errors.append(f"b: bits {np.frombuffer(bytes(t['data']), '<u2')}")

    # 2. Without BF16, via safetensors.numpy, and byte-identical to what Python writes for the same input.
    path = os.path.join(d, "cpp_numpy.safetensors")
    loaded = load_file(path)
    for name, arr in exp.items():
        if name not in loaded or not same(loaded[name], arr):
            errors.append(f"cpp_numpy {name}: {loaded.get(name)!r}")
    ours = open(path, "rb").read()
    theirs = save(exp, metadata={"writer": "tally"})
    if ours != theirs:
        n = struct.unpack("<Q", ours[:8])[0]
        m = struct.unpack("<Q", theirs[:8])[0]
        errors.append(f"cpp_numpy bytes differ from Python's:\n ours   {ours[8:8+n]!r}\n theirs {theirs[8:8+m]!r}")

    # 3. .npy files via numpy.load (bf16 arrives as float32).
    for name, arr in exp.items():
        if name == "h":
            continue  # tally's npy writer has no f16
        p = os.path.join(d, f"{name}.npy")
        back = np.load(p)
        if not same(back, arr):
            errors.append(f"{name}.npy: got {back.dtype} {back.shape} {back!r}")
    back = np.load(os.path.join(d, "b.npy"))
    if back.dtype != np.float32 or not np.array_equal(back, bf16_bits_to_f32(f32_to_bf16_bits(BF16_SOURCE).tobytes())):
        errors.append(f"b.npy: {back.dtype} {back!r}")

    # 4. Python-written .npy files for the C++ side to read back (checked there).
    np.save(os.path.join(d, "py_f32.npy"), exp["w"])
    np.save(os.path.join(d, "py_i64.npy"), exp["i64"])
    np.save(os.path.join(d, "py_scalar.npy"), exp["scalar"])
    np.save(os.path.join(d, "py_u8.npy"), exp["u8"])

    if errors:
        print("\n".join(errors), file=sys.stderr)
        sys.exit(1)
    print("python interop ok")


if __name__ == "__main__":
    main()
