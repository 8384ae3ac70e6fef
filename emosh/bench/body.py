"""``python -m emosh.bench body --json``: body-model forward time (target: forward_ms_b64 ≤ 50 on 2 CPU cores)."""
from __future__ import annotations

import argparse

import torch

from ..body import load_body_model
from .common import emit, median_ms


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m emosh.bench body")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--backend", default="anny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args(argv)
    model = load_body_model(args.backend, args.device)
    generator = torch.Generator().manual_seed(0)
    result = {"backend": args.backend, "device": args.device, "threads": torch.get_num_threads()}
    for batch in (1, 64):
        motion = model.zero_motion(batch)
        motion["pose"] = (0.3 * torch.randn(motion["pose"].shape, generator=generator)).to(model.device)
        motion["expression"] = torch.rand(motion["expression"].shape, generator=generator).to(model.device)
        shape = torch.rand(len(model.shape_labels), generator=generator).to(model.device)
        with torch.no_grad():
            result[f"forward_ms_b{batch}"] = round(median_ms(lambda: model(shape, **motion), runs=args.runs), 2)
    # The model keeps the rest mesh of the last shape (a track's frames share one); a new shape per call rebuilds it.
    shapes = iter(torch.rand(args.runs + 10, len(model.shape_labels), generator=generator).to(model.device))
    with torch.no_grad():
        result["forward_ms_b64_new_shape"] = round(median_ms(lambda: model(next(shapes), **motion), runs=args.runs), 2)
    result["target_forward_ms_b64"] = 50
    emit(result)
    return 0
