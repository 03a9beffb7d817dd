"""Score a translation: sacrebleu BLEU (with signature), optional chrF, and, given a baseline's
output, the significance of the difference (the paper's (+)/(−) marks).

    python tools/evaluate.py --hyp out.vi --ref tst2013.vi
    python tools/evaluate.py --hyp out.vi --ref tst2013.vi --baseline baseline.vi --chrf
    python tools/evaluate.py --hyp out.vi --ref tst2013.vi --baseline baseline.vi --significance bootstrap
    python tools/evaluate.py --hyp out.tok.vi --ref tst2013.vi --tokenized   # paper-era tokenized BLEU
    python tools/evaluate.py --checkpoint RUN/finetune/checkpoint_best.pt --data DATA_DIR   # dev PPL

Default BLEU is detokenized, sacrebleu's 13a tokenizer. ``--tokenized`` scores already tokenized
text as it is (``tokenize="none"``, like multi-bleu.perl): the number the paper's era reported on
the Stanford pre-tokenized IWSLT references. ``--significance`` picks the test: ``ar``
(approximate randomization, 10,000 trials: the test of MultEval, which the paper's marks come from,
so the default), ``bootstrap`` (sacrebleu's paired bootstrap) or ``bootstrap-one-sided`` (Koehn's);
the report line names the test, and ``nmt/metrics.py`` defines each p-value.
With ``--checkpoint`` and ``--data`` it prints the checkpoint's loss and perplexity on a prepared
split instead (``--split``, default ``valid``: the dev set), computed as the trainer's dev evaluation
(``--dropout-on`` and ``--max-batches N``: the same with dropout on, on the first N batches, to see
whether a model depends on dropout's noise; docs/results-demo-en-de.md has a case).
Files are UTF-8, one segment per line; a leading BOM is dropped. Bad input: ``error: ...`` on
stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nmt.errors import EvaluationError, NmtError, error_line
from nmt.metrics import (
    SIGNIFICANCE_TESTS,
    SignificanceTest,
    check_parallel,
    corpus_bleu,
    corpus_chrf,
    paired_significance,
)
from nmt.text.lines import read_lines


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hyp", type=Path, help="system output, one line per segment")
    parser.add_argument("--ref", type=Path, help="reference translations")
    parser.add_argument("--baseline", type=Path,
                        help="baseline system output: adds a paired significance test against it")
    parser.add_argument("--tokenized", action="store_true",
                        help="inputs are tokenized; score them as they are (sacrebleu tokenize='none')")
    parser.add_argument("--chrf", action="store_true", help="also print chrF")
    parser.add_argument("--significance", choices=SIGNIFICANCE_TESTS, default="ar",
                        help="the test against --baseline: ar, approximate randomization (the paper's, "
                             "MultEval's; the default); bootstrap, sacrebleu's two-sided paired bootstrap; "
                             "bootstrap-one-sided, Koehn's one-sided paired bootstrap")
    parser.add_argument("--samples", "--bootstrap-samples", dest="samples", type=int,
                        help="AR trials or bootstrap resamples (default: 10,000 for ar, 1,000 for the "
                             "bootstraps, as sacrebleu and MultEval)")
    parser.add_argument("--seed", type=int, default=12345,
                        help="seed of the test's RNG (default: 12345, as sacrebleu)")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="significance level (default: 0.05)")
    parser.add_argument("--checkpoint", type=Path,
                        help="instead of scoring text: the perplexity of this checkpoint on --data")
    parser.add_argument("--data", type=Path, help="with --checkpoint: a prepared data directory")
    parser.add_argument("--split", default="valid", help="with --checkpoint: the split (default: valid, the dev set)")
    parser.add_argument("--device", default="cpu", help="with --checkpoint: cpu, cuda, ... (default: cpu)")
    parser.add_argument("--max-batches", type=int, metavar="N",
                        help="with --checkpoint: score only the split's first N batches (e.g. of --split train)")
    parser.add_argument("--bert", type=Path,
                        help="with --checkpoint: the BERT of a stage-1 checkpoint (which holds a reference to it, "
                             "not its weights) when it is not where the checkpoint says")
    parser.add_argument("--dropout-on", action="store_true",
                        help="with --checkpoint: score with dropout on, as in training (a diagnostic: a model "
                             "far better with dropout than without has learned to depend on its noise)")
    return parser.parse_args(argv)


def read_segments(path: Path) -> list[str]:
    """One segment per line (nmt.text.lines.read_lines), with this tool's wording for a missing file."""
    if not path.is_file():
        raise EvaluationError(f"{path}: no such file")
    return read_lines(path)


def run_perplexity(args: argparse.Namespace, print_fn=print) -> None:
    from nmt.train.evaluation import checkpoint_perplexity
    if args.data is None:
        raise EvaluationError("--checkpoint needs --data: the prepared data directory to evaluate on")
    if args.max_batches is not None and args.max_batches < 1:
        raise EvaluationError(f"--max-batches must be at least 1, got {args.max_batches}")
    result = checkpoint_perplexity(args.checkpoint, args.data, args.split, device=args.device,
                                   max_batches=args.max_batches, dropout=args.dropout_on, bert=args.bert)
    print_fn(f"{args.split}{' (dropout on)' if args.dropout_on else ''}: loss {result['loss']:.4f} "
             f"nll {result['nll']:.4f} ppl {result['ppl']:.2f} ({result['sentences']:,} sentences, "
             f"{result['tokens']:,} target tokens; {args.checkpoint})")


def run(args: argparse.Namespace, print_fn=print) -> None:
    if args.checkpoint is not None:
        return run_perplexity(args, print_fn)
    if args.hyp is None or args.ref is None:
        raise EvaluationError("need --hyp and --ref (or --checkpoint and --data for the dev perplexity)")
    if args.samples is not None and args.samples < 1:
        raise EvaluationError(f"--samples must be at least 1, got {args.samples}")
    if not 0 < args.alpha < 1:
        raise EvaluationError(f"--alpha must be between 0 and 1, got {args.alpha}")
    if args.seed < 0:
        raise EvaluationError(f"--seed must be at least 0, got {args.seed}")
    test = SignificanceTest.named(args.significance, args.samples, args.seed, args.alpha)
    tokenize = "none" if args.tokenized else "13a"
    hyps, refs = read_segments(args.hyp), read_segments(args.ref)
    files = [(args.hyp, hyps), (args.ref, refs)]
    baseline = None
    if args.baseline is not None:
        baseline = read_segments(args.baseline)
        files.append((args.baseline, baseline))
    check_parallel(files)

    bleu, signature = corpus_bleu(hyps, refs, tokenize)
    print_fn(f"{bleu}")
    print_fn(f"  signature: {signature}")
    if args.chrf:
        chrf, chrf_signature = corpus_chrf(hyps, refs)
        print_fn(f"{chrf}")
        print_fn(f"  signature: {chrf_signature}")
    if baseline is not None:
        baseline_bleu, _ = corpus_bleu(baseline, refs, tokenize)
        print_fn(f"baseline {baseline_bleu}")
        print_fn(paired_significance(hyps, baseline, refs, test, tokenize=tokenize).describe())


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (NmtError, OSError) as err:
        print(error_line(err), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
