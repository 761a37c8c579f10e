#!/usr/bin/env python3
"""Checks the DOM of a `tally report` page, as headless Chromium left it after the page's script ran, against the
runs' log.jsonl files and `tally memory --json`: every panel is there, and the numbers the page shows (tables:
data-key/data-value; curves: data-points; heatmaps: data-rows/data-cols) are the logged ones, exactly.

usage: report_check.py DOM_HTML MEMORY_JSON OPTIMIZERS NAME=RUN_DIR [NAME=RUN_DIR ...]
  MEMORY_JSON  `tally memory --json` for the runs' model and step, with every optimizer in OPTIMIZERS
  OPTIMIZERS   the registered optimizers, comma-separated, in the registry's order
Standard library only. Prints what differs and exits 1; prints "report page: ok" otherwise."""
import json
import sys
from html.parser import HTMLParser

PANELS = ["runs", "training", "internals", "internals-update", "internals-moment", "internals-confidence",
          "internals-factored-error", "memory", "memory-ledger", "memory-owners", "memory-optimizers"]
CATEGORIES = ["parameters", "gradients", "optimizer_state", "activations", "workspace", "other", "total", "total_held"]
OWNER_CATEGORIES = {"parameter", "gradient", "optimizer_state", "activation", "workspace", "other"}
INTERNALS = ["update_rms", "clipped_update_rms", "exp_avg_rms", "applied_rms"]


class Dom(HTMLParser):
    def __init__(self):
        super().__init__()
        self.values, self.series, self.heatmaps, self.panels, self.rendered = {}, {}, {}, set(), False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body" and a.get("data-rendered") == "true":
            self.rendered = True
        if "data-key" in a and "data-value" in a:
            if a["data-key"] in self.values:
                problems.append(f"two elements have data-key {a['data-key']}")
            self.values[a["data-key"]] = a["data-value"]
        if "data-series" in a:
            pts = [p.split(":") for p in a.get("data-points", "").split()]
            self.series[a["data-series"]] = [(int(s), float(v)) for s, v in pts]
        if "data-heatmap" in a:
            self.heatmaps[a["data-heatmap"]] = a
        if "data-panel" in a:
            self.panels.add(a["data-panel"])


problems = []


def check(cond, what):
    if not cond:
        problems.append(what)
    return cond


def value(dom, key):
    if key not in dom.values:
        problems.append(f"the page has no element data-key={key}")
        return None
    text = dom.values[key]
    return float(text) if text not in ("", "NaN") else None


def same(dom, key, expected):
    """The page shows `expected`; a value the log holds as null (not finite) shows as blank or NaN, and only then."""
    got = value(dom, key)
    if key not in dom.values:  # value() said so
        return
    if expected is None:
        check(got is None, f"{key}: the page shows {got}, expected blank (the log holds null)")
    else:
        check(got is not None and got == float(expected), f"{key}: the page shows {got}, expected {expected}")


def records(run_dir):
    out = []
    with open(f"{run_dir}/log.jsonl") as f:
        for line in f:
            out.append(json.loads(line))
    return out


def check_run(dom, name, run_dir, memory, optimizers):
    log = records(run_dir)
    steps = [r for r in log if "loss" in r and not r.get("skipped")]
    vals = [r for r in log if "val_loss" in r]
    optim = [r for r in log if "optim" in r]
    mem = next(r for r in log if "memory_predicted" in r)
    config = json.load(open(f"{run_dir}/config.json"))
    clip = float(config["flags"]["grad-clip"])

    # Training: every step's value on the curves, and the table.
    for field in ["loss", "lr", "grad_norm", "tokens_per_s"]:
        check(dom.series.get(f"{name}/{field}") == [(r["step"], r[field]) for r in steps],
              f"{name}: the {field} curve differs from log.jsonl")
    check(dom.series.get(f"{name}/val_loss") == [(r["step"], r["val_loss"]) for r in vals],
          f"{name}: the validation curve differs from log.jsonl")
    k = f"training/{name}"
    same(dom, f"{k}/steps", len(steps))
    same(dom, f"{k}/final_loss", steps[-1]["loss"])
    same(dom, f"{k}/min_loss", min(r["loss"] for r in steps))
    same(dom, f"{k}/final_lr", steps[-1]["lr"])
    same(dom, f"{k}/final_val_loss", vals[-1]["val_loss"])
    same(dom, f"{k}/final_val_step", vals[-1]["step"])
    same(dom, f"{k}/grad_clipped_steps", sum(1 for r in steps if clip / (r["grad_norm"] + 1e-6) < 1))
    same(dom, f"{k}/skipped", sum(1 for r in log if r.get("skipped")))

    # Internals: each tensor's last values and clip count, the first tensor's curves, the heatmaps' shape.
    last = {e["param"]: e for e in optim[-1]["optim"]}
    layers = set()
    for param, e in last.items():
        k = f"internals/{name}/{param}"
        same(dom, f"{k}/records", len(optim))
        same(dom, f"{k}/clipped", sum(1 for r in optim for x in r["optim"] if x["param"] == param and x["clipped"]))
        same(dom, f"{k}/last_step", optim[-1]["step"])
        for field in INTERNALS:
            same(dom, f"{k}/last/{field}", e[field])
        for summary in ["confidence_row", "confidence_col", "confidence_scale"]:
            if summary in e:
                same(dom, f"{k}/last/{summary}.mean", e[summary]["mean"])
        rest = param[len("transformer."):] if param.startswith("transformer.") else param
        layers.add(".".join(rest.split(".")[:2]) if rest.startswith("h.") else rest.split(".")[0])
    shown = [p for p in last if f"{name}/{p}/update_rms" in dom.series]
    if check(len(shown) == 1, f"{name}: curves of {len(shown)} tensors shown, expected the selected one"):
        p = shown[0]
        for field in INTERNALS:
            expected = [(r["step"], x[field]) for r in optim for x in r["optim"] if x["param"] == p]
            check(dom.series.get(f"{name}/{p}/{field}") == expected, f"{name}: the {field} curve of {p} differs")
    for field in ["update_rms", "clipped", "exp_avg_rms"]:
        hm = dom.heatmaps.get(f"{name}/{field}")
        if check(hm is not None, f"{name}: no {field} heatmap"):
            check(hm["data-cols"] == str(len(optim)), f"{name}: the {field} heatmap has {hm['data-cols']} columns")
            check(hm["data-rows"] == str(len(layers)), f"{name}: the {field} heatmap has {hm['data-rows']} rows, "
                                                       f"expected the {len(layers)} layers")
    confidence = any("confidence_scale" in e for e in last.values())
    check(confidence == (f"{name}/confidence_scale.mean" in dom.heatmaps),
          f"{name}: confidence heatmap {'missing' if confidence else 'drawn without confidence factors'}")

    # Memory: the ledger's figures by category and by owner, predicted and measured, as logged.
    for side in ["predicted", "measured"]:
        figures = mem["memory"][side]
        for cat in CATEGORIES:
            same(dom, f"memory/{name}/{cat}/{side}", figures[cat])
        for kind, b in figures["state_by_kind"].items():
            same(dom, f"memory/{name}/state/{kind}/{side}", b)
        check(set(figures["owners"]) <= OWNER_CATEGORIES, f"unknown owner categories {set(figures['owners'])}")
        for cat, owners in figures["owners"].items():
            for owner, b in owners.items():
                same(dom, f"memory/{name}/owner/{cat}/{owner}/{side}", b)
    same(dom, f"memory/{name}/total/predicted", mem["memory_predicted"])
    same(dom, f"memory/{name}/total/measured", mem["memory_measured"])
    # Data parallel: what a step hands to the collectives, bytes and calls, planned and counted (the first record).
    comm = next((r for r in log if "comm_bytes_predicted" in r), None)
    if comm is not None:
        for key, field in [("comm", "comm_bytes"), ("collectives", "collectives")]:
            for side in ["predicted", "measured"]:
                k = f"memory/{name}/{key}/{side}"
                if check(value(dom, k) is not None, f"{k}: not on the page"):
                    same(dom, k, comm[f"{field}_{side}"])

    # Every registered optimizer's state for this model: what `tally memory` predicts.
    listed = [key.split("/")[2] for key in dom.values
              if key.startswith(f"optimizers/{name}/") and key.endswith("/state_bytes")]
    check(listed == optimizers, f"{name}: the page compares {listed}, the registry has {optimizers}")
    for opt in optimizers:
        m = memory["optimizers"][opt]
        same(dom, f"optimizers/{name}/{opt}/state_bytes", m["state_bytes"])
        same(dom, f"optimizers/{name}/{opt}/total", m["total"])
        for kind, b in m["state_by_kind"].items():
            same(dom, f"optimizers/{name}/{opt}/kind/{kind}", b)
        per_tensor = {}
        for t in m["tensors"]:
            param = t["name"].rsplit(":", 1)[0]
            per_tensor[param] = per_tensor.get(param, 0) + t["bytes"]
        for param, b in per_tensor.items():
            same(dom, f"optimizers/{name}/{opt}/tensor/{param}", b)


def main():
    if len(sys.argv) < 5:
        print(__doc__)
        return 2
    dom = Dom()
    dom.feed(open(sys.argv[1], encoding="utf-8").read())
    memory = json.load(open(sys.argv[2]))
    optimizers = sys.argv[3].split(",")
    check(dom.rendered, "the page's script did not finish (no data-rendered on <body>)")
    for p in PANELS:
        check(p in dom.panels, f"panel {p} missing")
    runs = [a.split("=", 1) for a in sys.argv[4:]]
    for name, run_dir in runs:
        check_run(dom, name, run_dir, memory, optimizers)
    check(dom.series.keys() >= {f"{n}/loss" for n, _ in runs}, "a run's loss curve is missing")
    for p in problems[:40]:
        print("FAIL:", p)
    if problems:
        print(f"{len(problems)} problem(s)")
        return 1
    print(f"report page: ok ({len(runs)} run(s), {len(dom.values)} numbers, {len(dom.series)} curves, "
          f"{len(dom.heatmaps)} heatmaps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
