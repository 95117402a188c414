"""Write a Stable-Diffusion-architecture pipeline with random weights: the scale fixture.

    python benchmarks/make_sd_like.py OUT [--kind sd15|sd2-v|sdxl] [--size tiny|full]
        [--dtype float32|float16|bfloat16] [--seed 0]

``full`` builds the real sizes (SD 1.5: 860M-parameter UNet, 512×512; SD 2.x: v-prediction,
768×768; SDXL: two text encoders, 1024×1024); ``tiny`` builds the same classes in seconds. The
tokenizer is trained locally on a few captions; nothing is downloaded. The folder loads with
``medfair audit OUT ...`` (and ``DiffusionPipeline.from_pretrained``) like any fine-tune.
"""

from __future__ import annotations

import argparse
import time

import torch

from medfair_audit.models.sd_like import KINDS, SIZES, save_sd_like


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--kind", choices=KINDS, default="sd15")
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    out = save_sd_like(
        args.out, args.kind, args.size, seed=args.seed, dtype=getattr(torch, args.dtype)
    )
    print(
        f"{args.kind} ({args.size}, {args.dtype}) -> {out} in {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
