#!/usr/bin/env python3
"""The short table of scripts/gpu_check.sh's GPU peer comparison: GPT-2 training steps in bf16 by batch size and
optimizer, tally (bench_gpu_train --dtype bf16) beside torch.compile (torch_compile_gpt2.py), PyTorch eager
(torch_gpt2_step.py --dtype bf16) and llm.c (llmc_gpu.py), from the JSON lines of any number of log files; tally
runs with cuDNN's fused attention (TALLY_CUDNN_ATTENTION=1), with cuBLASLt's Linear epilogues
(TALLY_CUBLASLT_EPILOGUES=1) and with the head and loss unchunked (--loss-chunk-rows 0) are listed after the table,
beside tally's defaults.
Then the targets: tally >= llm.c at every batch size, tally >= 1.3x torch.compile, CAME's step rate within 5% of
AdamW's. Rows that are missing, skipped or failed show as n/a, skip, oom or err; a target without data reads n/a.
  peer_table.py LOG [LOG...]
"""
import json
import sys


def load(paths):
    rows = []
    for path in paths:
        try:
            lines = open(path, errors="replace").read().splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass
    return rows


def key(r):
    return r.get("batch"), r.get("optimizer")


def main(paths):
    rows = load(paths)
    tally, fused, lt, whole, compiled, eager, llmc = {}, {}, {}, {}, {}, {}, {}
    notes = []
    for r in rows:
        if r.get("bench") == "tally_train_step" and r.get("precision") == "bf16":
            # tally's defaults; cuDNN's fused attention (TALLY_CUDNN_ATTENTION=1); the head and loss unchunked
            if r.get("loss_chunk_rows") == 0:
                whole[key(r)] = r
            elif r.get("epilogues") == "cublaslt":
                lt[key(r)] = r
            else:
                (fused if r.get("attention") == "cudnn" else tally)[key(r)] = r
        elif r.get("peer") == "pytorch-compile" and r.get("dtype", "bf16") == "bf16":
            compiled[key(r)] = r
        elif r.get("peer") == "pytorch-eager" and r.get("dtype") == "bf16":
            eager[key(r)] = r
        elif r.get("peer") == "llm.c":
            if "batch" in r:
                llmc[key(r)] = r
            elif "skipped" in r:
                notes.append("llm.c: " + r["skipped"])
        if r.get("peer") == "pytorch-compile" and "skipped" in r and "batch" not in r:
            notes.append("torch.compile: " + r["skipped"])
        if r.get("peer") == "pytorch-compile" and "skipped" in r and r.get("optimizer") == "came":
            notes.append("torch.compile CAME: " + r["skipped"])
    keys = sorted({k for d in (tally, compiled, eager, llmc) for k in d if k[0] is not None},
                  key=lambda k: (k[0], k[1] != "adamw", k[1] or ""))

    def status(r):
        if r is None:
            return "n/a"
        if "skipped" in r:
            return "skip"
        if "error" in r:
            return "oom" if "memory" in str(r["error"]).lower() else "err"
        return None

    def tok(r):
        return status(r) or "%.0f" % r["tokens_per_s"]

    def mfu(r):
        return "" if status(r) or r.get("mfu") is None else "%.1f" % (100 * r["mfu"])

    def mem(r, field):
        return "" if status(r) or r.get(field) is None else "%.0f" % r[field]

    def ratio(a, b):
        if status(a) or status(b):
            return "n/a"
        return "%.2f" % (a["tokens_per_s"] / b["tokens_per_s"])

    head = ("%3s %-5s | %9s %5s %6s | %9s %5s %6s | %9s %6s | %9s %5s %6s | %6s %6s %6s" %
            ("B", "optim", "tally", "MFU%", "MiB", "compile", "MFU%", "MiB", "eager", "MiB", "llm.c", "MFU%", "MiB",
             "x comp", "x eagr", "x llmc"))
    print("gpt2 124M, T=1024, bf16: tokens/s; MFU against the peak in the rows (989 TFLOP/s unless set); "
          "x = tally / peer")
    print(head)
    print("-" * len(head))
    for k in keys:
        t, c, e, l = tally.get(k), compiled.get(k), eager.get(k), llmc.get(k)
        print("%3s %-5s | %9s %5s %6s | %9s %5s %6s | %9s %6s | %9s %5s %6s | %6s %6s %6s" % (
            k[0], k[1], tok(t), mfu(t), mem(t, "peak_ledger_mb"), tok(c), mfu(c), mem(c, "peak_cuda_mb"),
            tok(e), mem(e, "peak_cuda_mb"), tok(l) if k[1] == "adamw" else "-", mfu(l), mem(l, "device_mb"),
            ratio(t, c), ratio(t, e), ratio(t, l) if k[1] == "adamw" else "-"))
    print("MiB: tally the ledger's peak of requested bytes; PyTorch torch.cuda.max_memory_allocated(); llm.c the "
          "device memory in use after its allocations (CUDA context included)")
    for k in sorted(fused, key=lambda k: (k[0], k[1] != "adamw", k[1] or "")):
        f = fused[k]
        print("tally with cuDNN attention B=%s %-5s: %s tok/s, MFU %s%%, %s MiB; x tally's kernels %s, x compile %s, "
              "x llm.c %s" % (k[0], k[1], tok(f), mfu(f), mem(f, "peak_ledger_mb"), ratio(f, tally.get(k)),
                              ratio(f, compiled.get(k)), ratio(f, llmc.get(k)) if k[1] == "adamw" else "-"))

    for k in sorted(lt, key=lambda k: (k[0], k[1] != "adamw", k[1] or "")):
        f = lt[k]
        print("tally with cuBLASLt epilogues B=%s %-5s: %s tok/s, MFU %s%%, %s MiB; x separate kernels %s, x compile %s, "
              "x llm.c %s" % (k[0], k[1], tok(f), mfu(f), mem(f, "peak_ledger_mb"), ratio(f, tally.get(k)),
                              ratio(f, compiled.get(k)), ratio(f, llmc.get(k)) if k[1] == "adamw" else "-"))

    for k in sorted(whole, key=lambda k: (k[0], k[1] != "adamw", k[1] or "")):
        w = whole[k]
        print("tally with the head and loss unchunked B=%s %-5s: %s tok/s, %s MiB; the default chunks: x%s tokens/s, "
              "%s MiB less" % (k[0], k[1], tok(w), mem(w, "peak_ledger_mb"), ratio(tally.get(k), w),
                                         "n/a" if status(w) or status(tally.get(k)) else
                                         "%.0f" % (w["peak_ledger_mb"] - tally[k]["peak_ledger_mb"])))

    # Targets.
    def verdict(pairs, test):
        checked = [(b, test(x, y)) for b, x, y in pairs if not status(x) and not status(y)]
        if not checked:
            return "n/a (no data)"
        failed = [str(b) for b, ok in checked if not ok]
        done = ",".join(str(b) for b, _ in checked)
        return ("met" if not failed else "NOT met at B=" + ",".join(failed)) + " (of B=%s)" % done

    batches = sorted({k[0] for k in keys})
    for opt in ("adamw", "came"):
        pairs = [(b, tally.get((b, opt)), llmc.get((b, opt))) for b in batches]
        if opt == "adamw":
            print("target: tally >= llm.c, AdamW:              " +
                  verdict(pairs, lambda x, y: x["tokens_per_s"] >= y["tokens_per_s"]))
        pairs = [(b, tally.get((b, opt)), compiled.get((b, opt))) for b in batches]
        print("target: tally >= 1.3x torch.compile, %s %s" % (
            (opt + ":").ljust(6), verdict(pairs, lambda x, y: x["tokens_per_s"] >= 1.3 * y["tokens_per_s"])))
    pairs = [(b, tally.get((b, "came")), tally.get((b, "adamw"))) for b in batches]
    rates = ["B=%s %.3f" % (b, x["tokens_per_s"] / y["tokens_per_s"]) for b, x, y in pairs
             if not status(x) and not status(y)]
    print("target: tally CAME >= 0.95x tally AdamW:    " +
          verdict(pairs, lambda x, y: x["tokens_per_s"] >= 0.95 * y["tokens_per_s"]) +
          ("; CAME/AdamW " + ", ".join(rates) if rates else ""))
    firsts = ["B=%s %s %.0f s" % (k[0], k[1], r["compile_s"]) for k, r in sorted(compiled.items(), key=lambda kv: kv[0])
              if r.get("compile_s") is not None]
    if firsts:
        print("torch.compile first step (compiling included): " + ", ".join(firsts))
    for n in dict.fromkeys(notes):
        print(n)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
