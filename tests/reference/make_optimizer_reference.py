#!/usr/bin/env python3
"""Writes tests/reference/optimizer_reference.safetensors: golden steps of the reference optimizers.

Runs the real implementations (came-pytorch 0.1.3, torch.optim.AdamW, transformers' Adafactor with
scale_parameter=False, relative_step=False, warmup_init=False, torch.optim.SGD, pytorch_optimizer 4.1.0's SM3 and
Lamb) for STEPS steps on fixed small
tensors (a vector, square, wide and tall matrices, a 3-D tensor) with deterministic gradients (numpy seed),
and stores every parameter and every state tensor after every step. tests/optim/golden.cpp replays the same
gradients through tally's optimizers and compares everything.

Names: init/<shape>                    the starting parameter (f32)
       grad/<shape>/step<k>           the gradient fed at step k (k = 1..STEPS)
       <case>/<shape>/step<k>/param   the parameter after step k
       <case>/<shape>/step<k>/<state> each state tensor after step k (came-pytorch / transformers / torch names)
       <case>/<shape>/step<k>/update_rms   (CAME, Adafactor) the RMS of the update before clipping, as the
                                           package computed it (recorded through its own _rms), f64;
                                           (LAMB) the RMS of the update before the trust ratio, from the
                                           package's own state['adam_norm'] / sqrt(numel), f64
SM3 keeps a zero momentum_buffer even without momentum, which is not recorded then (tally allocates none); Lamb's
scalar state (weight_norm, adam_norm, trust_ratio) is not recorded as state.
Metadata "cases" lists each case with its hyperparameters as JSON, and the tally settings of the same step
(tests/reference/tally_settings.py).
Regenerate: python3 tests/reference/make_optimizer_reference.py   (needs torch, came-pytorch==0.1.3,
pytorch_optimizer==4.1.0, transformers, safetensors, numpy)
"""
import json
import os

from importlib.metadata import version

import numpy as np
import torch
from came_pytorch import CAME
from pytorch_optimizer import SM3, Lamb
from safetensors.torch import save_file
from transformers.optimization import Adafactor
import came_pytorch

from tally_settings import tally_settings

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "optimizer_reference.safetensors")
STEPS = 10
SHAPES = {"vector": (9,), "square": (6, 6), "wide": (5, 7), "tall": (7, 5), "cube": (3, 4, 5)}
# Gradient scale per step: a jump at step 6 makes the RMS clip fire in Adafactor (whose first steps are
# normalised to RMS about 1) and again in CAME; steps 9-10 shrink to show the moments decaying.
GRAD_SCALE = [1.0, 1.0, 0.5, 2.0, 1.0, 30.0, 1.0, 1.0, 0.05, 0.05]

CASES = {
    # name: (kind, hyperparameters, extra)
    "came": ("came", dict(lr=1e-2), {}),
    "came_wd": ("came", dict(lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95, 0.995)), {}),
    "came_clip2": ("came", dict(lr=1e-2, clip_threshold=2.0, eps=(1e-30, 1e-16)), {}),
    # R and C start at one instead of zero (tally's CameConfig::confidence_init = ones): the package's own step,
    # with its state pre-initialised before step 1.
    "came_conf_ones": ("came", dict(lr=1e-2), {"confidence_init": "ones"}),
    "adamw": ("adamw", dict(lr=1e-2, weight_decay=0.0), {}),
    "adamw_wd": ("adamw", dict(lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1), {}),
    "adafactor": ("adafactor", dict(lr=1e-2), {}),
    "adafactor_wd": ("adafactor", dict(lr=1e-2, weight_decay=0.1, clip_threshold=1.5), {}),
    "adafactor_beta1": ("adafactor", dict(lr=1e-2, beta1=0.9), {}),
    "adafactor_beta1_wd": ("adafactor", dict(lr=1e-2, beta1=0.9, weight_decay=0.1, decay_rate=-0.6), {}),
    "sgd_momentum": ("sgd", dict(lr=0.1, momentum=0.9), {}),
    "sgd_nesterov_wd": ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), {}),
    "sgd_dampening_wd": ("sgd", dict(lr=0.1, momentum=0.8, dampening=0.3, weight_decay=0.05), {}),
    "sgd_plain": ("sgd", dict(lr=0.1), {}),
    # pytorch_optimizer 4.1.0, CPU. SM3: 1-D (full accumulator), 2-D and 3-D (one accumulator per dim).
    "sm3": ("sm3", dict(lr=0.1), {}),
    "sm3_momentum_beta": ("sm3", dict(lr=0.1, momentum=0.9, beta=0.95), {}),
    "sm3_momentum_low_eps": ("sm3", dict(lr=0.05, momentum=0.3, eps=1e-8), {}),
    # Lamb on its default foreach path. "clamp" is the class attribute Lamb.clamp (the largest weight norm of the
    # trust ratio), set on the instance: at 2.0 it clamps every tensor here (their norms are 3 to 8).
    "lamb": ("lamb", dict(lr=1e-2), {}),
    "lamb_wd_clamp": ("lamb", dict(lr=1e-2, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.1), {"clamp": 2.0}),
    "lamb_l2_no_debias": ("lamb", dict(lr=1e-2, weight_decay=0.05, weight_decouple=False, adam_debias=True), {}),
}


class RecordingCAME(CAME):
    """came_pytorch.CAME with its _rms calls recorded (the second call per parameter is the update's RMS)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.rms_calls = []

    def _rms(self, tensor):
        v = super()._rms(tensor)
        self.rms_calls.append(float(v))
        return v


class RecordingAdafactor(Adafactor):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.rms_calls = []

    def _rms(self, tensor):  # a staticmethod in transformers; called through self
        v = Adafactor._rms(tensor)
        self.rms_calls.append(float(v))
        return v


def make_optimizer(kind, p, hyper, extra):
    if kind == "came":
        opt = RecordingCAME([p], **hyper)
        if extra.get("confidence_init") == "ones":
            st = opt.state[p]
            st["step"] = 0
            st["exp_avg"] = torch.zeros_like(p)
            if p.dim() >= 2:
                st["exp_avg_sq_row"] = torch.zeros(p.shape[:-1])
                st["exp_avg_sq_col"] = torch.zeros(p.shape[:-2] + p.shape[-1:])
                st["exp_avg_res_row"] = torch.ones(p.shape[:-1])
                st["exp_avg_res_col"] = torch.ones(p.shape[:-2] + p.shape[-1:])
            else:
                st["exp_avg_sq"] = torch.zeros_like(p)
            st["RMS"] = 0
        return opt
    if kind == "adamw":
        return torch.optim.AdamW([p], **hyper)
    if kind == "adafactor":
        return RecordingAdafactor([p], scale_parameter=False, relative_step=False, warmup_init=False, **hyper)
    if kind == "sgd":
        return torch.optim.SGD([p], **hyper)
    if kind == "sm3":
        return SM3([p], **hyper)
    if kind == "lamb":
        opt = Lamb([p], **hyper)
        if "clamp" in extra:
            opt.clamp = extra["clamp"]
        return opt
    raise ValueError(kind)


def main():
    assert came_pytorch.__version__ if hasattr(came_pytorch, "__version__") else True
    torch.set_num_threads(1)
    rng = np.random.default_rng(20230707)
    out = {}
    inits, grads = {}, {}
    for sname, shape in SHAPES.items():
        inits[sname] = rng.standard_normal(shape).astype(np.float32)
        out[f"init/{sname}"] = torch.from_numpy(inits[sname].copy())
        for k in range(1, STEPS + 1):
            g = (rng.standard_normal(shape) * GRAD_SCALE[k - 1]).astype(np.float32)
            grads[(sname, k)] = g
            out[f"grad/{sname}/step{k}"] = torch.from_numpy(g.copy())

    for cname, (kind, hyper, extra) in CASES.items():
        for sname in SHAPES:
            p = torch.nn.Parameter(torch.from_numpy(inits[sname].copy()))
            opt = make_optimizer(kind, p, hyper, extra)
            for k in range(1, STEPS + 1):
                p.grad = torch.from_numpy(grads[(sname, k)].copy())
                if kind in ("came", "adafactor"):
                    opt.rms_calls.clear()
                opt.step()
                prefix = f"{cname}/{sname}/step{k}"
                out[f"{prefix}/param"] = p.detach().clone()
                for key, val in opt.state[p].items():
                    if key in ("step", "RMS", "weight_norm", "adam_norm", "trust_ratio"):
                        continue
                    if val is None:  # SGD without momentum keeps a None buffer
                        continue
                    if kind == "sm3" and key == "momentum_buffer" and hyper.get("momentum", 0.0) == 0.0:
                        continue  # allocated but never read without momentum
                    out[f"{prefix}/{key}"] = val.detach().clone().contiguous()
                if kind in ("came", "adafactor"):
                    # _rms(p) then _rms(update) per step
                    assert len(opt.rms_calls) == 2, opt.rms_calls
                    out[f"{prefix}/update_rms"] = torch.tensor([opt.rms_calls[1]], dtype=torch.float64)
                if kind == "lamb":
                    adam_norm = float(opt.state[p]["adam_norm"])
                    out[f"{prefix}/update_rms"] = torch.tensor([adam_norm / p.numel() ** 0.5], dtype=torch.float64)

    meta = {
        "generator": "tests/reference/make_optimizer_reference.py",
        "torch": torch.__version__,
        "came_pytorch": "0.1.3",
        "pytorch_optimizer": version("pytorch_optimizer"),
        "steps": str(STEPS),
        "cases": json.dumps({c: {"kind": k, "hyper": h, "extra": e, "tally": tally_settings(k, h, e)}
                             for c, (k, h, e) in CASES.items()}),
    }
    try:
        import transformers

        meta["transformers"] = transformers.__version__
        meta["came_pytorch"] = version("came-pytorch")
    except Exception:  # noqa: BLE001 - metadata is informative only
        pass
    assert meta["came_pytorch"] == "0.1.3", meta["came_pytorch"]
    assert meta["pytorch_optimizer"] == "4.1.0", meta["pytorch_optimizer"]
    save_file(out, OUT, metadata=meta)
    print(f"wrote {OUT}: {len(out)} tensors, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
