"""tally's optimizer settings (optim/registry.cpp's names) for a reference optimizer's keyword arguments.

The golden-data generators write these beside the keyword arguments they pass the reference (metadata "cases" of
optimizer_reference.safetensors, "tally_settings" of gpt2_training_golden.safetensors), and the C++ tests build
tally's optimizer from them alone: a new optimizer's mapping is written here, next to the code that runs its
reference. Where a keyword is absent the reference's default applies, which tally's need not share (torch's AdamW
decays by 1e-2, transformers' Adafactor has no first moment, torch's SGD no momentum), so those are written out.
The references decay every tensor they are given ("decay": "all"). `extra` holds what is not a keyword argument:
CAME's confidence_init ("ones": its state pre-initialised), Lamb's class attribute clamp.
"""


def tally_settings(kind, hyper, extra=None):
    extra = extra or {}
    s = {"lr": float(hyper["lr"]), "decay": "all"}

    def number(key, setting, default):
        s[setting] = float(hyper.get(key, default))

    if kind == "came":
        betas = hyper.get("betas", (0.9, 0.999, 0.9999))
        eps = hyper.get("eps", (1e-30, 1e-16))
        s.update({"beta1": betas[0], "beta2": betas[1], "beta3": betas[2], "eps1": eps[0], "eps2": eps[1]})
        number("clip_threshold", "clip-threshold", 1.0)
        number("weight_decay", "weight-decay", 0.0)
        s["came-confidence-ones"] = extra.get("confidence_init", "zeros") == "ones"
    elif kind == "adamw":
        betas = hyper.get("betas", (0.9, 0.999))
        s.update({"beta1": betas[0], "beta2": betas[1]})
        number("eps", "eps", 1e-8)
        number("weight_decay", "weight-decay", 1e-2)
    elif kind == "adafactor":
        eps = hyper.get("eps", (1e-30, 1e-3))
        s["eps1"] = eps[0]
        number("clip_threshold", "clip-threshold", 1.0)
        number("decay_rate", "decay-rate", -0.8)
        number("weight_decay", "weight-decay", 0.0)
        if hyper.get("beta1") is not None:
            s["beta1"] = float(hyper["beta1"])
        else:
            s["no-adafactor-beta1"] = True
    elif kind == "sgd":
        number("momentum", "momentum", 0.0)
        number("dampening", "dampening", 0.0)
        number("weight_decay", "weight-decay", 0.0)
        s["nesterov"] = bool(hyper.get("nesterov", False))
    elif kind == "sm3":
        number("momentum", "momentum", 0.0)
        number("beta", "beta", 0.0)
        number("eps", "eps", 1e-30)
    elif kind == "lamb":
        betas = hyper.get("betas", (0.9, 0.999))
        s.update({"beta1": betas[0], "beta2": betas[1]})
        number("eps", "eps", 1e-6)
        number("weight_decay", "weight-decay", 0.0)
        s["lamb-decay-in-update"] = not hyper.get("weight_decouple", True)
        s["lamb-no-bias-correction"] = bool(hyper.get("adam_debias", False))
        if "clamp" in extra:
            s["lamb-clamp"] = float(extra["clamp"])
    else:
        raise ValueError(f"no tally settings known for the reference optimizer '{kind}'")
    return s
