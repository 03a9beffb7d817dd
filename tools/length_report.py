#!/usr/bin/env python
"""Where do the words go? Output length against reference length, by source length, and the
model's end-of-sentence probabilities -- the evidence for (or against) "the outputs are too short".

    python tools/length_report.py --src data/demo/en-vi/dev.en.gz --ref data/demo/en-vi/dev.vi.gz \\
        --hyp checkpoints/experiments/demo-en-vi/decoder/valid.hyp \\
        --checkpoint checkpoints/experiments/demo-en-vi/decoder/decoder/checkpoint_best.pt

Prints, for buckets of source length (in the checkpoint's source tokens, [CLS]/[SEP] included; in
whitespace words without --checkpoint): the number of sentences and the hypothesis/reference
length ratio in sacrebleu 13a tokens (what BLEU's brevity penalty sees). With ``--checkpoint`` it
also scores the REFERENCES with teacher forcing and prints the mean probability of EOS at the
reference's true end and at every earlier position: a model that ends sentences early puts
visible mass on EOS before the end; one that is merely unsure does not.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import numpy as np

from nmt.errors import NmtError, error_line

BUCKETS = (0, 5, 10, 20, 40, 80)               # lower edges of the source-length buckets


def token_lengths(lines: Sequence[str]) -> np.ndarray:
    """Lengths in sacrebleu's 13a tokens (the tokenization BLEU and its brevity penalty use)."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
    tokenize = Tokenizer13a()
    return np.array([len(tokenize(line.rstrip()).split()) for line in lines], dtype=np.int64)


def ratio_by_bucket(source_lengths: np.ndarray, hyp_lengths: np.ndarray, ref_lengths: np.ndarray,
                    edges: Sequence[int] = BUCKETS) -> list[tuple[str, int, float]]:
    """(bucket label, sentences, sum(hyp) / sum(ref)) per source-length bucket, then "all".

    >>> ratio_by_bucket(np.array([3, 12, 15]), np.array([4, 5, 9]), np.array([4, 10, 10]), edges=(0, 10))
    [('0-9', 1, 1.0), ('10+', 2, 0.7), ('all', 3, 0.75)]
    """
    rows = []
    bounds = list(edges) + [None]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        mask = (source_lengths >= lo) & (source_lengths < hi if hi is not None else True)
        if mask.any():
            label = f"{lo}-{hi - 1}" if hi is not None else f"{lo}+"
            rows.append((label, int(mask.sum()), float(hyp_lengths[mask].sum() / max(ref_lengths[mask].sum(), 1))))
    rows.append(("all", len(source_lengths), float(hyp_lengths.sum() / max(ref_lengths.sum(), 1))))
    return rows


def eos_probabilities(translator, sources: Sequence[str], references: Sequence[str],
                      batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-forced p(EOS) of the references: (at the true end [N], at every earlier position [M])."""
    import torch

    from nmt.text.vocab import Vocab
    model, source, target = translator.model, translator.source, translator.target
    at_end, before = [], []
    with torch.no_grad():
        for i in range(0, len(sources), batch_size):
            src_ids = [source.encode(s, max_length=translator.max_source_len) for s in sources[i:i + batch_size]]
            tgt_ids = [target.encode(r) for r in references[i:i + batch_size]]
            S, T = max(map(len, src_ids)), max(map(len, tgt_ids)) + 1
            src = torch.full((len(src_ids), S), source.pad_id)
            mask = torch.zeros(len(src_ids), S, dtype=torch.bool)
            prev = torch.full((len(src_ids), T), Vocab.PAD)
            for row, (s, t) in enumerate(zip(src_ids, tgt_ids)):
                src[row, :len(s)], mask[row, :len(s)] = torch.tensor(s), True
                prev[row, 0] = Vocab.BOS
                prev[row, 1:len(t) + 1] = torch.tensor(t, dtype=torch.long)
            p_eos = model(src.to(translator.device), mask.to(translator.device),
                          prev.to(translator.device)).float().log_softmax(-1)[..., Vocab.EOS].exp().cpu()
            for row, t in enumerate(tgt_ids):
                at_end.append(float(p_eos[row, len(t)]))
                before.extend(p_eos[row, :len(t)].tolist())
    return np.array(at_end), np.array(before)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", required=True, help="source text (plain or .gz), one sentence per line")
    p.add_argument("--ref", required=True, help="reference translations, line-aligned with --src")
    p.add_argument("--hyp", help="system output, line-aligned with --src (e.g. run_experiments' valid.hyp)")
    p.add_argument("--checkpoint", help="model: source lengths in its tokens, and teacher-forced EOS probabilities")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from nmt.metrics import check_parallel
    from nmt.text.lines import read_lines
    try:
        sources = read_lines(args.src)
        references = read_lines(args.ref)
        named = [(args.src, sources), (args.ref, references)]
        hyps = None
        if args.hyp:
            hyps = read_lines(args.hyp)
            named.append((args.hyp, hyps))
        check_parallel(named)
        translator = None
        if args.checkpoint:
            import torch

            from nmt.decode.translator import Translator
            if args.threads:
                torch.set_num_threads(args.threads)
            translator = Translator.from_checkpoint(args.checkpoint)
            src_lengths = np.array([len(translator.source.encode(s)) for s in sources])
            unit = "source tokens of the checkpoint, specials included"
        else:
            src_lengths = np.array([len(s.split()) for s in sources])
            unit = "source words"
    except (NmtError, OSError) as e:
        print(error_line(e), file=sys.stderr)
        return 2
    ref_lengths = token_lengths(references)
    if hyps is not None:
        print(f"hypothesis / reference length (13a tokens) by source length ({unit}):")
        print(f"{'bucket':>8} {'sentences':>9} {'ratio':>6}")
        for label, n, ratio in ratio_by_bucket(src_lengths, token_lengths(hyps), ref_lengths):
            print(f"{label:>8} {n:>9} {ratio:>6.3f}")
    if translator is not None:
        at_end, before = eos_probabilities(translator, sources, references)
        print(f"teacher-forced p(EOS) on the references: at the true end {at_end.mean():.3f} (median "
              f"{np.median(at_end):.3f}); at earlier positions {before.mean():.4f} (> 0.1 at {100 * (before > 0.1).mean():.1f}%"
              f" of them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
