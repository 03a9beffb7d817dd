"""Benchmark: checkpoint conversion time, CRC32C speed, and encoder forward tokens/s vs HF.

    python tools/maintainers/bench_bert.py --threads 1 --repeats 5

Conversion: ``read_bert_dir`` + ``save_native`` on the TF dir (../shared, CRC32C verified) and on
the installed HF package dir. Forward: our ``BertEncoder`` and ``transformers.BertModel`` (default
attention implementation, sdpa) loaded from the same weights, eval + no_grad, same thread count,
batch 32 x 64 word pieces of real IWSLT English ("full": consecutive sentences joined and cut to 64, every position real;
"padded": one sentence per row, padded to 64), warm-up, then the median of the repeats; the two
models' runs alternate so that load from other processes affects both alike.
transformers is a dev dependency; this script is not imported by nmt/.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from nmt.files import REPO
from nmt.weights.pretrained import (
    build_encoder,
    installed_package_dir,
    read_bert_dir,
    save_native,
)
from nmt.weights.crc32c import crc32c

TF_DIR = REPO.parent / "shared" / "bert" / "minilm-l6-h384-uncased-tf"
IWSLT = REPO.parent / "shared" / "iwslt15-en-vi" / "tst2012.en"


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    return median_interleaved([fn], repeats, warmup)[0]


def median_interleaved(fns, repeats: int, warmup: int = 2) -> list[float]:
    """Median time of each function; runs alternate (A B A B ...) so machine load hits both alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(bucket) for bucket in times]


def batches(tokenizer, batch: int, length: int):
    lines = [line for line in IWSLT.read_text(encoding="utf-8").splitlines() if line.strip()]
    joined, current = [], ""
    for line in lines:  # consecutive sentences joined until each row fills all positions
        current = f"{current} {line}".strip()
        if len(tokenizer.encode(current)) >= length:
            joined.append(current)
            current = ""
        if len(joined) == batch:
            break
    full_ids, full_mask = tokenizer.batch_encode(joined, max_length=length)           # [B, 64]
    assert bool(full_mask.all()) and full_ids.shape == (batch, length)
    mixed = lines[:batch]
    ids, mask = tokenizer.batch_encode(mixed, max_length=length)
    pad = length - ids.shape[1]
    ids = torch.nn.functional.pad(ids, (0, pad), value=tokenizer.pad_id)             # [B, 64]
    mask = torch.nn.functional.pad(mask, (0, pad), value=False)
    return {"full": (full_ids, full_mask), "padded": (ids, mask)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_dir = installed_package_dir()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {args.repeats} (median)")

    # ---- conversion and checksums
    with tempfile.TemporaryDirectory() as tmp:
        for label, src in (("TF dir", TF_DIR), ("HF dir", hf_dir)):
            if not src.exists():
                print(f"convert {label}: skipped ({src} absent)")
                continue
            start = time.perf_counter()
            bert = read_bert_dir(src)
            save_native(bert, Path(tmp) / "out.pt")
            print(f"convert {label}: {time.perf_counter() - start:.2f} s")
        shard = TF_DIR / "bert_model.ckpt.data-00000-of-00001"
        if shard.exists():
            data = shard.read_bytes()
            seconds = median_seconds(lambda: crc32c(data), repeats=3, warmup=0)
            print(f"crc32c {len(data) / 1e6:.1f} MB shard: {seconds:.2f} s ({len(data) / 1e6 / seconds:.0f} MB/s)")

    # ---- forward throughput
    import transformers
    ours, tokenizer = build_encoder(read_bert_dir(hf_dir))
    hf = transformers.BertModel.from_pretrained(str(hf_dir)).eval()
    print(f"transformers {transformers.__version__}, HF attention: {hf.config._attn_implementation}")
    for name, (ids, mask) in batches(tokenizer, args.batch, args.length).items():
        tokens = ids.numel()
        with torch.no_grad():
            diff = (ours(ids, mask) - hf(input_ids=ids, attention_mask=mask.long()).last_hidden_state)[mask]
            t_ours, t_hf = median_interleaved(
                [lambda: ours(ids, mask), lambda: hf(input_ids=ids, attention_mask=mask.long())], args.repeats)
        print(f"forward {name:6s} {tuple(ids.shape)} real {int(mask.sum())}/{tokens}: "
              f"ours {tokens / t_ours:,.0f} tok/s ({t_ours * 1e3:.1f} ms), "
              f"HF {tokens / t_hf:,.0f} tok/s ({t_hf * 1e3:.1f} ms), "
              f"ratio {t_hf / t_ours:.2f}x, max |diff| {diff.abs().max().item():.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
