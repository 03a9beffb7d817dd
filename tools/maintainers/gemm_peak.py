#!/usr/bin/env python
"""This machine's measured matrix-product peak per dtype: the yardstick for the benchmarks' GFLOP/s.

A "peak" here is the fastest of a few runs of one large product (1024 x 1024 x 1024 by default, big
enough that memory and call overhead do not matter) through each library PyTorch offers for the
dtype, on the threads torch is set to use:

    float32   F.linear (MKL) and oneDNN's linear (nmt/cpu/gemm.py)
    bfloat16  F.linear in bf16 (oneDNN on CPUs with bf16 instructions; emulated, slow, elsewhere)
    int8      torch._int_mm (int8 x int8 -> int32) and fbgemm's dynamic linear (nmt/cpu/inference_linear.py)

tools/maintainers/bench_train.py and tools/maintainers/bench_translate.py divide the FLOPs they
count (torch's FlopCounterMode on the fp32 model) by their time and print the result next to this
peak, so docs/speed.md can say how far each path is from what the CPU can do.

    python tools/maintainers/gemm_peak.py --threads 1
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from nmt.cpu.gemm import onednn_available, onednn_linear
from nmt.cpu.inference_linear import cpu_has_bf16, int8_engine, int8_linear, int8_pack, int8_reduce_range


def _fastest(fn, repeats: int) -> float:
    fn()                                                                        # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_peaks(size: int = 1024, repeats: int = 3, device: str = "cpu") -> dict[str, dict]:
    """{dtype: {"gflops": fastest path's GFLOP/s (GOP/s for int8), "path": its name, "native": bool}}."""
    g = torch.Generator().manual_seed(0)
    a, w = torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)
    flop = 2 * size ** 3
    paths: dict[str, dict[str, object]] = {"float32": {"F.linear": lambda: F.linear(a, w)},
                                           "bfloat16": {"F.linear": lambda: F.linear(a16, w16)}}
    a16, w16 = a.bfloat16(), w.bfloat16()
    if device != "cpu":
        a, w, a16, w16 = (t.to(device) for t in (a, w, a16, w16))
        sync = torch.cuda.synchronize
        paths = {dtype: {name: (lambda fn=fn: (fn(), sync())) for name, fn in p.items()} for dtype, p in paths.items()}
    else:
        if onednn_available():
            paths["float32"]["oneDNN"] = lambda: onednn_linear(a, w, None)
        if int8_engine() is not None:
            qa, qw = torch.randint(-127, 128, (size, size), dtype=torch.int8, generator=g), \
                torch.randint(-127, 128, (size, size), dtype=torch.int8, generator=g)
            packed, reduce_range = int8_pack(w, None), int8_reduce_range()
            paths["int8"] = {"torch._int_mm": lambda: torch._int_mm(qa, qw.t()),
                             "fbgemm dynamic": lambda: int8_linear(a, packed, reduce_range)}
    peaks = {}
    for dtype, candidates in paths.items():
        best_name, best = None, 0.0
        for name, fn in candidates.items():
            try:
                rate = flop / _fastest(fn, repeats) / 1e9
            except RuntimeError:                      # a path this build or CPU does not have
                continue
            if rate > best:
                best_name, best = name, rate
        if best_name is not None:
            native = device != "cpu" or dtype != "bfloat16" or cpu_has_bf16()
            peaks[dtype] = {"gflops": round(best, 1), "path": best_name, "native": native}
    return peaks


def describe(peaks: dict[str, dict]) -> str:
    """One line: ``peak GFLOP/s (1024^3 product): float32 88.1 (oneDNN), ...``."""
    parts = [f"{dtype} {p['gflops']:.1f} ({p['path']}{'' if p['native'] else ', emulated'})"
             for dtype, p in peaks.items()]
    return "peak GFLOP/s of a 1024^3 product on this machine: " + ", ".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--size", type=int, default=1024, help="M = N = K of the product")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(describe(measure_peaks(args.size, args.repeats, args.device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
