#!/usr/bin/env python
"""Training-step benchmark: stage 1 (with and without the encoder cache), stage 2, and HF's
EncoderDecoderModel of the same size, on the same batch, each in a fresh subprocess.

    python tools/maintainers/bench_train.py                       # MiniLM-L6 H384 + 6-layer decoder, 16K vocab
    python tools/maintainers/bench_train.py --batch 100 --src-len 40 --tgt-len 40 --steps 10 --device cuda
    python tools/maintainers/bench_train.py --interleaved --threads 1   # stage 2 vs HF only, alternating in one process

What it prints, per configuration: ms per update, target tokens/s, peak memory (CUDA: peak allocated;
CPU: peak RSS growth during training, from getrusage), and the speed-up over stage 2 against the
bound that FLOP counting allows. With E and D the forward FLOPs of the encoder and of the decoder
(+ output projection and loss) for the batch, and backward ~ 2x forward:

    stage 2 (finetune)       3E + 3D
    stage 1 (frozen encoder)  E + 3D      bound on the speed-up: (3E + 3D) / (E + 3D)
    stage 1, cached encoder        3D     bound: (3E + 3D) / 3D

Each row also gives the update's achieved GFLOP/s (those FLOPs over its time) and that as a share of
this machine's measured matrix-product peak for the --amp dtype (tools/maintainers/gemm_peak.py).

Stage 1 also saves the encoder's gradients and Adam state (12 bytes per encoder parameter: fp32
gradient + two fp32 moments) and the encoder activations kept for backward. The weights are random
(speed does not depend on their values); the model shapes are the real ones (MiniLM config).
transformers is a dev dependency, used here only.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nmt.cpu.gemm import use_onednn
from nmt.model.bert import BertConfig
from nmt.model.loss import label_smoothed_nll_loss
from nmt.model.seq2seq import ModelSpec, build_model
from nmt.text.vocab import Vocab
from nmt.train.encoder_cache import EncoderCache

if not __package__:          # run as a script, not imported: the repo root, for tools.maintainers
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.maintainers.gemm_peak import describe, measure_peaks  # noqa: E402

CONFIGS = ("stage2", "stage1", "stage1-cached", "hf")
MINILM = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
              intermediate_size=1536, max_position_embeddings=512)


def make_batch(args, seed=0):
    """Random source/target ids with real-looking length variation (80-100% of the max lengths)."""
    g = torch.Generator().manual_seed(seed)
    B, S, T = args.batch, args.src_len, args.tgt_len
    src_len = torch.randint(int(0.8 * S), S + 1, (B,), generator=g)
    tgt_len = torch.randint(int(0.8 * T), T + 1, (B,), generator=g)
    src_mask = torch.arange(S)[None] < src_len[:, None]                                  # [B, S]
    src = torch.randint(1000, MINILM["vocab_size"], (B, S), generator=g).masked_fill(~src_mask, 0)
    y_mask = torch.arange(T)[None] < tgt_len[:, None]
    y = torch.randint(4, args.tgt_vocab, (B, T), generator=g)
    target = y.masked_fill(~y_mask, Vocab.PAD)
    target[torch.arange(B), tgt_len - 1] = Vocab.EOS
    prev = torch.cat([torch.full((B, 1), Vocab.BOS), target[:, :-1]], 1).masked_fill(~y_mask, Vocab.PAD)
    return src, src_mask, prev, target


def our_model(args, onednn: bool = True):
    spec = ModelSpec.bert(BertConfig(**MINILM), tgt_vocab_size=args.tgt_vocab, src_pad_id=0,
                          num_layers=args.decoder_layers)
    model = build_model(spec)
    return use_onednn(model) if onednn and args.device == "cpu" else model      # as the trainer does


def hf_model(args):
    from transformers import BertConfig as HFConfig
    from transformers import BertLMHeadModel, BertModel, EncoderDecoderModel
    enc = BertModel(HFConfig(**MINILM), add_pooling_layer=False)
    dec_cfg = HFConfig(**{**MINILM, "vocab_size": args.tgt_vocab, "num_hidden_layers": args.decoder_layers},
                       is_decoder=True, add_cross_attention=True, tie_word_embeddings=False)
    return EncoderDecoderModel(encoder=enc, decoder=BertLMHeadModel(dec_cfg))


def flops(args) -> dict:
    """Forward FLOPs of the encoder (E) and of decoder + loss (D) for the batch."""
    from torch.utils.flop_counter import FlopCounterMode
    model = our_model(args, onednn=False).eval()         # FlopCounterMode counts aten ops only
    src, mask, prev, target = make_batch(args)
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            enc = model.encoder(src, mask)
        E = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            label_smoothed_nll_loss(model.decoder(prev, enc, mask), target)
        D = fc.get_total_flops()
    return {"E": E, "D": D, "encoder_params": sum(p.numel() for p in model.encoder.parameters()),
            "decoder_params": sum(p.numel() for p in model.decoder.parameters())}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_step(name: str, args):
    """(step, ntokens, model, trainable params) for one configuration; ``step()`` does one update."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    src, mask, prev, target = (t.to(device) for t in make_batch(args))
    ntokens = int(target.ne(Vocab.PAD).sum())
    model = (hf_model(args) if name == "hf" else our_model(args)).to(device)
    cache = None
    if name != "hf":
        model.set_stage("decoder" if name.startswith("stage1") else "finetune")
    if name == "stage1-cached":
        with torch.no_grad():
            model.eval()
            out = model.encoder(src, mask)[mask].float().cpu().numpy().astype(np.float16)   # [real tokens, H]
        lengths = mask.sum(1).cpu().numpy()
        cache = EncoderCache(out, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        indices, cpu_mask = np.arange(len(lengths)), mask.cpu()
    params = [p for p in model.parameters() if p.requires_grad]
    # fused Adam for both: what nmt's trainer uses, and HF Trainer's default (adamw_torch_fused) on torch >= 2.8
    opt = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.99), fused=device.type in ("cpu", "cuda") or None)
    amp = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(args.amp)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step():
        model.train()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            if name == "hf":
                logits = model(input_ids=src, attention_mask=mask.long(), decoder_input_ids=prev,
                               decoder_attention_mask=prev.ne(Vocab.PAD).long()).logits
                loss, _ = label_smoothed_nll_loss(logits, target)
            else:       # as nmt.train.trainer: the output projection fused into the loss
                enc = cache.gather(indices, cpu_mask).to(device, non_blocking=True) if cache is not None else None
                loss, _ = model(src, mask, prev, encoder_out=enc, target=target)
        opt.zero_grad(set_to_none=True)
        (loss / ntokens).backward()
        opt.step()
        loss.item()
        sync()
    return step, ntokens, model, params


def run_one(name: str, args) -> dict:
    """One configuration, in this (fresh) process."""
    if args.threads:
        torch.set_num_threads(args.threads)
    step, ntokens, model, params = make_step(name, args)
    for _ in range(args.warmup):
        step()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss_before = rss_bytes()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    ms = 1000 * float(np.median(times))
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # peak RSS of the process
    return {"name": name, "ms": ms, "tokens_per_s": ntokens / (ms / 1000), "peak_bytes": peak,
            "rss_before_bytes": rss_before, "params": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in params), "tokens": ntokens}


def interleaved(args) -> int:
    """Our stage 2 and HF in ONE process, updates alternating, the fastest of ``--steps`` each: on a
    shared machine, whose speed drifts between subprocesses, this is the fairer ratio."""
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = {name: make_step(name, args)[0] for name in ("stage2", "hf")}
    best = {name: float("inf") for name in steps}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    for _ in range(args.steps):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - t0)
    print(f"interleaved, fastest of {args.steps} updates each: our stage 2 {1000 * best['stage2']:.0f} ms, "
          f"HF {1000 * best['hf']:.0f} ms: ours {best['hf'] / best['stage2']:.2f}x faster")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64, help="sentences per batch")
    p.add_argument("--src-len", type=int, default=30, help="longest source (WordPiece ids with [CLS]/[SEP])")
    p.add_argument("--tgt-len", type=int, default=30, help="longest target (BPE ids + EOS)")
    p.add_argument("--tgt-vocab", type=int, default=16000, help="target vocabulary")
    p.add_argument("--decoder-layers", type=int, default=6)
    p.add_argument("--steps", type=int, default=8, help="timed updates (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed updates first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", default="off", choices=("off", "bfloat16", "float16"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--only", choices=CONFIGS, help=argparse.SUPPRESS)        # child-process mode
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--interleaved", action="store_true",
                   help="only our stage 2 vs HF, in one process with alternating updates (fastest of --steps)")
    args = p.parse_args(argv)
    if args.only:
        print(json.dumps(run_one(args.only, args)))
        return 0
    if args.interleaved:
        return interleaved(args)

    f = flops(args)
    E, D = f["E"], f["D"]
    bounds = {"stage2": 1.0, "stage1": (3 * E + 3 * D) / (E + 3 * D), "stage1-cached": (3 * E + 3 * D) / (3 * D)}
    print(f"batch {args.batch} x src {args.src_len} x tgt {args.tgt_len}, target vocab {args.tgt_vocab}, "
          f"device {args.device}, amp {args.amp}, threads {args.threads or torch.get_num_threads()}")
    print(f"encoder {f['encoder_params']:,} params, decoder {f['decoder_params']:,} params; forward FLOPs "
          f"E = {E / 1e9:.2f} G, D = {D / 1e9:.2f} G")
    print(f"bounds on the speed-up over stage 2: stage 1 (3E+3D)/(E+3D) = {bounds['stage1']:.2f}x, "
          f"cached (3E+3D)/3D = {bounds['stage1-cached']:.2f}x")
    print(f"stage 1 saves the encoder's gradients + Adam state: 12 bytes x {f['encoder_params']:,} = "
          f"{12 * f['encoder_params'] / 2**20:.0f} MiB")
    update_flops = {"stage2": 3 * E + 3 * D, "stage1": E + 3 * D, "stage1-cached": 3 * D, "hf": 3 * E + 3 * D}
    peaks = measure_peaks(device=args.device.split(":")[0])
    peak = peaks.get("bfloat16" if args.amp == "bfloat16" else "float16" if args.amp == "float16" else "float32")
    print(describe(peaks))
    results = {}
    # a child gets the same flags plus --only NAME (it returns before reading --configs or --json)
    base_cmd = [sys.executable, str(Path(__file__).resolve())] + list(argv or sys.argv[1:])
    for name in args.configs.split(","):
        out = subprocess.run(base_cmd + ["--only", name], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{name}: failed\n{out.stderr[-2000:]}")
            continue
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    mem_label = "peak alloc" if args.device.startswith("cuda") else "peak RSS"
    print(f"\n{'config':15s} {'params':>11s} {'trainable':>11s} {'ms/update':>10s} {'tok/s':>9s} "
          f"{'speed-up':>9s} {'bound':>6s} {'of bound':>9s} {mem_label:>11s} {'GFLOP/s':>8s} {'of peak':>8s}")
    ref = results.get("stage2")
    for name, r in results.items():
        speedup = ref["ms"] / r["ms"] if ref else float("nan")
        bound = bounds.get(name)
        of_bound = f"{100 * speedup / bound:.0f}%" if bound and name != "stage2" else ""
        r["gflops"] = round(update_flops[name] / r["ms"] / 1e6, 2)       # FLOPs per update / time (not in HF's)
        share = f"{100 * r['gflops'] / peak['gflops']:.0f}%" if peak else ""
        print(f"{name:15s} {r['params']:>11,} {r['trainable']:>11,} {r['ms']:>10.1f} {r['tokens_per_s']:>9.0f} "
              f"{speedup:>8.2f}x {bound or float('nan'):>6.2f} {of_bound:>9s} {r['peak_bytes'] / 2**20:>8.0f} MiB "
              f"{r['gflops']:>8.1f} {share:>8s}")
    if ref and "hf" in results:
        print(f"\nour stage 2 vs HF EncoderDecoderModel (same shapes, same batch, end to end): "
              f"{results['hf']['ms'] / ref['ms']:.2f}x faster")
    if ref and "stage1" in results:
        saved = (ref["peak_bytes"] - results["stage1"]["peak_bytes"]) / 2**20
        print(f"stage 1 peak memory is {saved:.0f} MiB below stage 2's (encoder grads + Adam alone: "
              f"{12 * f['encoder_params'] / 2**20:.0f} MiB)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "flops": f, "bounds": bounds, "peaks": peaks,
                                               "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
