#!/usr/bin/env python
"""Decoding speed: nmt's beam search, the same network through CTranslate2, and Hugging Face ``generate``.

All models have random weights (speed does not depend on them) and the demo's shape: a 6-layer
H=384, 12-head, FFN 1536 encoder (MiniLM-L6) and a 6-layer decoder of the same width with a 16K
target vocabulary. Systems:

- ``nmt``: PyTorch, as translate.py decodes;
- ``nmt-ct2``: the same network written by ``nmt.decode.ctranslate2_export.export_ctranslate2``
  (float32 on disk) and decoded by ``ctranslate2.Translator`` at each compute type, converted at load
  as ``translate.py --engine ctranslate2 --compute-type`` does: one network, two engines;
- ``hf``: ``BartForConditionalGeneration`` of those dimensions (post-norm, learned positions -- same
  FLOPs up to the embeddings); ``ctranslate2``: that BART through CTranslate2's own converter.

``--checkpoint`` times a trained nmt checkpoint instead of the random model (``nmt`` and ``nmt-ct2``
only). Every system is forced to produce exactly ``--tgt-len`` tokens plus EOS for every hypothesis
(min length = max length), so all do the same number of decoder steps. Reports sentences/s and
generated tokens/s at beam 10 and beam 1, batch 1 and batch 64: the fastest of ``--repeats`` runs
per system, the systems taking turns. ``--compute-types`` names the precisions as CTranslate2 does;
each system runs those it has on the device and skips the others with a note (nmt: float32,
bfloat16 on GPUs and bf16 CPUs, int8 on CPUs; CTranslate2: what ``get_supported_compute_types``
lists; HF: float32); ``all`` asks for every one. Each row also gives the achieved GFLOP/s (the
search's matrix-product FLOPs, counted once on the fp32 model, over its time) and that as a share
of this machine's measured peak for the compute type (tools/maintainers/gemm_peak.py).

    python tools/maintainers/bench_translate.py --threads 1 --repeats 3 --json bench.jsonl   # the README's table
    python tools/maintainers/bench_translate.py --threads 1 --no-hf --no-ct2-bart --compute-types all
    python tools/maintainers/bench_translate.py --device cuda --sentences 256 --no-hf --compute-types all

transformers and ctranslate2 are benchmark-only dependencies (ctranslate2 is optional: skipped
with a note when it is not installed).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from nmt.cpu.allocator import keep_freed_memory
from nmt.cpu.inference_linear import COMPUTE_TYPES, check_compute_type, prepare_for_translation
from nmt.decode.beam_search import beam_search, greedy_search
from nmt.model.seq2seq import ModelSpec, build_model

if not __package__:          # run as a script, not imported: the repo root, for tools.maintainers
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.maintainers.gemm_peak import describe, measure_peaks  # noqa: E402

H, HEADS, FFN, LAYERS, SRC_VOCAB, TGT_VOCAB = 384, 12, 1536, 6, 30522, 16000
CT2_TYPES = ("float32", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "float16", "bfloat16")
ALL_TYPES = tuple(dict.fromkeys(COMPUTE_TYPES + CT2_TYPES))


def demo_spec() -> ModelSpec:
    from nmt.model.bert import BertConfig
    cfg = BertConfig(vocab_size=SRC_VOCAB, hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                     intermediate_size=FFN, max_position_embeddings=512)
    return ModelSpec.bert(cfg, tgt_vocab_size=TGT_VOCAB, src_pad_id=0)


def our_model(device, checkpoint=None):
    """The demo-shaped random model, or ``checkpoint``'s; float32, not yet prepared for decoding."""
    if checkpoint is not None:
        from nmt.decode.translator import model_from_checkpoint, resolve_checkpoint
        from nmt.weights.checkpoint import load_checkpoint
        path = resolve_checkpoint(checkpoint)
        return model_from_checkpoint(load_checkpoint(path), path)[0].to(device).eval()
    torch.manual_seed(0)
    return build_model(demo_spec()).to(device).eval()


def source_vocab_size(checkpoint=None) -> int:
    if checkpoint is None:
        return SRC_VOCAB
    from nmt.decode.translator import resolve_checkpoint
    from nmt.weights.checkpoint import load_checkpoint
    ckpt = load_checkpoint(resolve_checkpoint(checkpoint), required=("model_spec",), mmap=True)
    return int(ckpt["model_spec"]["src_vocab_size"])


def demo_checkpoint(path: Path) -> Path:
    """The demo-shaped random model saved as an nmt checkpoint, so the export reads it as it reads a
    trained one (stand-in vocabularies: BERT's special ids, every other token a made-up word)."""
    from nmt.text.bpe import BPE
    from nmt.text.pipeline import SourcePipeline, TargetPipeline
    from nmt.text.vocab import Vocab
    from nmt.text.wordpiece import WordPieceTokenizer
    from nmt.weights.checkpoint import FORMAT, save_checkpoint
    model = our_model(torch.device("cpu"))
    words = [f"w{i}" for i in range(SRC_VOCAB)]
    words[0], words[100], words[101], words[102] = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
    source = SourcePipeline.wordpiece(WordPieceTokenizer(words), max_positions=512)
    target = TargetPipeline("tokenized", BPE([]), Vocab(list(Vocab.SPECIALS) + [f"t{i}" for i in range(4, TGT_VOCAB)]))
    save_checkpoint(path, {"format": FORMAT, "stage": "finetune", "model_spec": demo_spec().to_dict(),
                           "model": model.state_dict(), "source": source.to_dict(), "target": target.to_dict()})
    return path


def search(model, src, mask, beam, tgt_len):
    if beam == 1:
        return greedy_search(model, src, mask, max_len_a=0, max_len_b=tgt_len, min_len=tgt_len)
    return beam_search(model, src, mask, beam_size=beam, max_len_a=0, max_len_b=tgt_len, min_len=tgt_len)


def ours(device, compute_type: str = "float32", checkpoint=None):
    model = prepare_for_translation(our_model(device, checkpoint), compute_type)   # as translate.py does
    return lambda src, mask, beam, tgt_len: search(model, src, mask, beam, tgt_len)


def search_flops(device, sources, batch, beam, tgt_len, checkpoint=None) -> int:
    """Matrix-product FLOPs of decoding ``sources`` in batches of ``batch`` (FlopCounterMode counts
    aten ops, so on the unprepared fp32 model; every system does the same products)."""
    from torch.utils.flop_counter import FlopCounterMode
    model, (src_all, mask_all) = our_model(device, checkpoint), sources
    with FlopCounterMode(display=False) as counter:
        for i in range(0, src_all.size(0), batch):
            search(model, src_all[i:i + batch], mask_all[i:i + batch], beam, tgt_len)
    return counter.get_total_flops()


def hf_bart(device):
    from transformers import BartConfig, BartForConditionalGeneration
    cfg = BartConfig(vocab_size=TGT_VOCAB, d_model=H, encoder_layers=LAYERS, decoder_layers=LAYERS,
                     encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN,
                     decoder_ffn_dim=FFN, max_position_embeddings=512, pad_token_id=0, bos_token_id=1,
                     eos_token_id=2, decoder_start_token_id=1, forced_bos_token_id=None, forced_eos_token_id=None,
                     dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    model = BartForConditionalGeneration(cfg).to(device).eval()

    def run(src, mask, beam, tgt_len):
        with torch.no_grad():
            return model.generate(input_ids=src.clamp(max=TGT_VOCAB - 1), attention_mask=mask.long(),
                                  num_beams=beam, do_sample=False, min_new_tokens=tgt_len + 1,
                                  max_new_tokens=tgt_len + 1, length_penalty=1.0, early_stopping=False)
    return run, model


def ct2_supported(device, compute_types) -> tuple[list[str], str | None]:
    """The compute types of ``compute_types`` that CTranslate2 has on ``device`` (a note for each other
    one: CTranslate2 would silently compute in another type), or a note that it is not installed."""
    try:
        import ctranslate2
    except ImportError:
        return [], "ctranslate2 is not installed (pip install ctranslate2): skipped"
    try:
        supported = ctranslate2.get_supported_compute_types("cuda" if device.type == "cuda" else "cpu")
    except RuntimeError as e:            # e.g. a CPU-only build asked for CUDA
        return [], f"CTranslate2 cannot use {device.type} ({str(e)[:200]}): skipped"
    for compute_type in compute_types:
        if compute_type not in supported:
            print(f"note: CTranslate2 {ctranslate2.__version__} has no {compute_type} on {device.type} "
                  f"(it offers {', '.join(sorted(supported))}): skipped")
    return [ct for ct in compute_types if ct in supported], None


def ct2_runner(translator, token_names: list[str]):
    """A timed system over a ``ctranslate2.Translator``: source ids given as its tokens, the length forced."""
    def run(src, mask, beam, tgt_len):
        tokens = [[token_names[t] for t, m in zip(row, mrow) if m]
                  for row, mrow in zip(src.clamp(max=len(token_names) - 1).tolist(), mask.tolist())]
        return translator.translate_batch(tokens, beam_size=beam, max_batch_size=len(tokens),
                                          min_decoding_length=tgt_len + 1, max_decoding_length=tgt_len + 1,
                                          length_penalty=1.0, return_scores=False)
    return run


def nmt_ctranslate2(device, compute_types, checkpoint=None) -> dict:
    """nmt's model (the random one, or ``checkpoint``) exported to CTranslate2 (float32 on disk), one
    run per compute type CTranslate2 has on ``device`` (ct2_supported)."""
    from nmt.decode.ctranslate2_engine import CTranslate2Translator
    from nmt.decode.ctranslate2_export import export_ctranslate2
    workdir = Path(tempfile.mkdtemp())
    if checkpoint is None:
        checkpoint = demo_checkpoint(workdir / "demo.pt")
    export_ctranslate2(checkpoint, workdir / "nmt-ct2")
    runs = {}
    for compute_type in compute_types:
        engine = CTranslate2Translator.from_dir(workdir / "nmt-ct2", device=str(device), compute_type=compute_type,
                                                threads=torch.get_num_threads())
        runs[compute_type] = ct2_runner(engine.translator, engine.source_tokens)
    return runs


def ctranslate2_bart(hf_model, device, compute_types=("float32",)):
    """The HF BART converted by CTranslate2's converter, one run per compute type (those CTranslate2
    has on ``device``: ct2_supported): ({compute type: run}, None), or (None, why not)."""
    import ctranslate2
    from ctranslate2.converters import TransformersConverter
    out = Path(tempfile.mkdtemp()) / "ct2"
    src_dir = out.with_name("hf")
    hf_model.config.normalize_before = False      # older converters read this BART field; 5.x configs lack it
    hf_model.save_pretrained(src_dir)
    from tokenizers import (  # the converter needs a vocabulary: ids as words
        Tokenizer,
        models,
    )
    from transformers import PreTrainedTokenizerFast
    words = Tokenizer(models.WordLevel({str(i): i for i in range(TGT_VOCAB)}, unk_token="3"))
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="3", pad_token="0", bos_token="1",
                            eos_token="2").save_pretrained(src_dir)
    try:
        TransformersConverter(str(src_dir)).convert(str(out), force=True)
    except Exception as e:   # noqa: BLE001 -- converter support varies by version
        return None, f"ctranslate2 could not convert the BART model ({type(e).__name__}: {e}): skipped"
    runs = {}
    for compute_type in compute_types:
        translator = ctranslate2.Translator(str(out), device="cuda" if device.type == "cuda" else "cpu",
                                            compute_type=compute_type, inter_threads=1,
                                            intra_threads=torch.get_num_threads())
        runs[compute_type] = ct2_runner(translator, [str(i) for i in range(TGT_VOCAB)])
    return runs, None


def time_system(run, sources, batch, beam, tgt_len, device):
    src_all, mask_all = sources
    run(src_all[:batch], mask_all[:batch], beam, tgt_len)               # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, src_all.size(0), batch):
        run(src_all[i:i + batch], mask_all[i:i + batch], beam, tgt_len)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--checkpoint", help="time this nmt checkpoint (file or run directory) instead of the random "
                                        "demo-shaped model; nmt and nmt-ct2 only")
    p.add_argument("--sentences", type=int, default=64, help="sentences per batch-64 measurement")
    p.add_argument("--sentences-batch1", type=int, default=8, help="sentences per batch-1 measurement")
    p.add_argument("--src-len", type=int, default=20, help="source tokens per sentence")
    p.add_argument("--tgt-len", type=int, default=20, help="generated tokens per sentence (EOS not counted)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-ctranslate2", action="store_true", help="no CTranslate2 system (nmt-ct2 and ctranslate2)")
    p.add_argument("--no-nmt-ct2", action="store_true", help="skip nmt's model exported to CTranslate2")
    p.add_argument("--no-ct2-bart", action="store_true", help="skip the BART converted to CTranslate2")
    p.add_argument("--no-hf", action="store_true", help="skip Hugging Face generate (its model is still built "
                                                        "when CTranslate2's BART runs: CTranslate2 converts it)")
    p.add_argument("--compute-types", default="float32,int8",
                   help=f"comma-separated, of {', '.join(ALL_TYPES)}, or 'all' (translate.py --compute-type and "
                        "CTranslate2's compute_type); each system runs those it has on the device, the others "
                        "skipped with a note (nmt: int8 on CPUs, bfloat16 on GPUs and bf16 CPUs; HF: float32)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed runs per system and setting, round-robin over the systems; the fastest counts "
                        "(a shared machine only ever adds time)")
    p.add_argument("--settings", default="10x1,10x64,1x1,1x64", help="beam x batch pairs to time")
    p.add_argument("--json", help="also write the measurements here, one JSON object per line: system, "
                                  "compute_type, beam, batch, sent_per_s")
    args = p.parse_args(argv)
    keep_freed_memory()                           # as translate.py does
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    compute_types = (list(ALL_TYPES) if args.compute_types.strip() == "all"
                     else [c.strip() for c in args.compute_types.split(",") if c.strip()])
    if not compute_types or set(compute_types) - set(ALL_TYPES):
        p.error(f"--compute-types: 'all' or some of {', '.join(ALL_TYPES)}, got {args.compute_types!r}")
    nmt_types = []
    for ct in compute_types:
        if ct not in COMPUTE_TYPES:
            continue
        try:
            check_compute_type(ct, device)
            nmt_types.append(ct)
        except ValueError as e:
            print(f"note: nmt {ct} skipped: {e}")
    g = torch.Generator().manual_seed(0)
    n = max(args.sentences, args.sentences_batch1)
    src = torch.randint(5, source_vocab_size(args.checkpoint), (n, args.src_len), generator=g)
    src[:, 0], src[:, -1] = 101, 102
    mask = torch.ones_like(src, dtype=torch.bool)
    sources = (src.to(device), mask.to(device))

    systems = {("nmt", ct): ours(device, ct, args.checkpoint) for ct in nmt_types}   # (system, compute type)
    ct2_types, note = ct2_supported(device, compute_types) if not args.no_ctranslate2 else ([], None)
    if note:
        print(note)
    if ct2_types and not args.no_nmt_ct2:
        runs = nmt_ctranslate2(device, ct2_types, args.checkpoint)
        systems.update({("nmt-ct2", ct): run for ct, run in runs.items()})
    if args.checkpoint:
        print("note: --checkpoint: hf and ctranslate2 (BART) skipped, they are the demo-shaped model")
    else:
        use_bart = bool(ct2_types) and not args.no_ct2_bart
        hf_run, hf_model = hf_bart(device) if not args.no_hf or use_bart else (None, None)
        if not args.no_hf and "float32" in compute_types:
            systems["hf", "float32"] = hf_run
        if use_bart:
            ct2_runs, note = ctranslate2_bart(hf_model, device, ct2_types)
            if ct2_runs is None:
                print(note)
            else:
                systems.update({("ctranslate2", ct): run for ct, run in ct2_runs.items()})
    if not systems:
        p.error("no system can run any of these compute types on this device")
    peaks = measure_peaks(device=device.type)
    print(f"device {device}, threads {torch.get_num_threads()}, src {args.src_len} tokens, "
          f"output {args.tgt_len} tokens + EOS, " + (f"checkpoint {args.checkpoint}" if args.checkpoint else
                                                     f"H {H}, {LAYERS}+{LAYERS} layers, target vocab {TGT_VOCAB}"))
    print(describe(peaks))
    print(f"{'beam':>4} {'batch':>5} {'system':>12} {'compute':>13} {'sent/s':>9} {'tok/s':>9} {'nmt speed-up':>13} "
          f"{'GFLOP/s':>8} {'of peak':>8}")
    rows = []
    for setting in args.settings.split(","):
        beam, batch = (int(v) for v in setting.split("x"))
        count = args.sentences_batch1 if batch == 1 else args.sentences
        sub = (sources[0][:count], sources[1][:count])
        flop = search_flops(device, sub, batch, beam, args.tgt_len, args.checkpoint)
        times = {key: float("inf") for key in systems}
        for _ in range(args.repeats):
            for key, run in systems.items():
                times[key] = min(times[key], time_system(run, sub, batch, beam, args.tgt_len, device))
        for (name, ct), t in times.items():
            ours_t = times.get(("nmt", ct))
            ratio = "" if name == "nmt" or ours_t is None else f"{t / ours_t:.2f}x"
            peak = peaks.get("int8" if ct.startswith("int8") else ct, {}).get("gflops")   # int8_*: int8 products
            share = f"{100 * flop / t / 1e9 / peak:.0f}%" if peak else ""
            print(f"{beam:>4} {batch:>5} {name:>12} {ct:>13} {count / t:>9.2f} {count * args.tgt_len / t:>9.1f} "
                  f"{ratio:>13} {flop / t / 1e9:>8.1f} {share:>8}", flush=True)
            rows.append({"system": name, "compute_type": ct, "beam": beam, "batch": batch,
                         "sent_per_s": round(count / t, 3), "gflops": round(flop / t / 1e9, 2),
                         "peak_gflops": peak})
    if args.json:
        Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        print(f"wrote {len(rows)} rows to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
