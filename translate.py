#!/usr/bin/env python
"""Translate text with a trained checkpoint: one line in, one line out, in input order.

    python translate.py < test.en > test.hyp.de           # the demo run's best model
    python translate.py --pair en-vi < test.en            # the En->Vi demo run (train.py --pair en-vi)
    python translate.py --checkpoint checkpoints/demo-en-de/finetune/checkpoint_best.pt < test.en
    python translate.py --input test.en --reference test.de --beam 10 --lenpen 1.0
    python translate.py --sampling --sampling-topk 10 --seed 1 < mono.en      # one sample per line
    python translate.py --input test.en --score-reference test.hyp.de         # one score per line

The checkpoint carries everything: the network spec and weights, the source and target text
pipelines (vocabularies, BPE merges) and, when training chose one on the dev set (``--lenpen-grid``,
on in the demo preset), the default length penalty; a stage-1 checkpoint records its frozen BERT's
path and sha256 instead of BERT's weights (``--bert PATH`` when that file has moved). The work is done by
``nmt.decode.translator.Translator``: lines are encoded, sorted by length, translated in batches
(beam search, nmt/decode/beam_search.py), decoded (BPE removed, detokenized) and written back in
input order. The input is read and written in buffers: ``--buffer-size`` lines of a file, or the
lines that have arrived from a terminal or a pipe that stays open; each buffer's translations are
written as soon as they are done. Empty input lines give empty output lines. Lines longer than the
encoder's positions are truncated (with a warning naming the line). With ``--nbest N > 1`` the
output is Moses n-best format: ``<0-based line> ||| <translation> ||| <score>``, N lines per input
line. With ``--reference`` the corpus BLEU and sacrebleu signature are printed on stderr at the end.
``--sampling`` (with ``--sampling-topk``/``--sampling-topp``/``--temperature``/``--seed``) samples
instead of searching and ``--no-repeat-ngram-size`` blocks repeated n-grams, both as in fairseq.
``--engine ctranslate2 --checkpoint DIR`` serves a model that tools/export_ctranslate2.py wrote to DIR
through CTranslate2, with the same text processing, beam, length penalty and length limits
(``--compute-type``: CTranslate2's types; where the engines can differ: docs/serving.md).

``--score-reference FILE`` scores given translations instead of writing new ones (fairseq-generate's
``--score-reference``, ``Translator.score``): FILE holds one translation per input line, each goes
through the training target pipeline and is teacher-forced through the model, and the output is
one score per line, ``sum(log p(token)) / len ** lenpen`` over its tokens and EOS (``len`` counts
EOS): the score the beam search gives that translation as a hypothesis. An empty input line scores
0 (its translation must be empty too); an empty translation of a real line is scored as EOS
alone; one longer than the decoder's positions is an error (long sources are truncated as
above). The two files must have the same number of lines; the options that choose translations
(``--beam``, ``--nbest``, ``--sampling``, ...) are refused. With ``--nbest`` it reranks: write an
n-best list, then score its hypotheses with another model or length penalty (a target-to-source
model: the two files swapped), each source line repeated for each of its hypotheses by the n-best
list's first field::

    python translate.py --input test.en --nbest 5 --output nbest.txt
    awk -F ' [|][|][|] ' '{print $2}' nbest.txt > hyps.de
    awk -F ' [|][|][|] ' 'NR == FNR {src[FNR - 1] = $0; next} {print src[$1]}' test.en nbest.txt > srcs.en
    python translate.py --checkpoint OTHER --input srcs.en --score-reference hyps.de --output other.scores

``--output`` is checked before anything is loaded (its directory must exist and be writable) and
written atomically, so a failure leaves no partial file; nonsense numbers (``--lenpen nan``), a
device that is not there (``--device cuda`` without CUDA) and a full disk are one ``error:`` line, exit
status 2. Ctrl-C, SIGTERM and SIGHUP stop it with one line and 128 + the signal (130, 143, 129),
removing the temporary ``--output`` file.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import io
import itertools
import math
import os
import select
import signal
import stat
import sys
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

import torch

from nmt.cpu.allocator import keep_freed_memory
from nmt.cpu.inference_linear import COMPUTE_TYPES
from nmt.decode.ctranslate2_engine import COMPUTE_TYPES as CTRANSLATE2_COMPUTE_TYPES
from nmt.decode.translator import Translator, check_search_options
from nmt.errors import NmtError, TranslateError, error_line, raise_on_stop_signals, restore_signals
from nmt.files import DEMO_PAIRS, atomic_write, demo_name, run_dir
from nmt.text.lines import decode_lines, open_text_lines, read_lines

DEFAULT_RUN = run_dir(demo_name("en-de"))     # the demo run directory (train.py's default)
DEFAULT_BUFFER = 10000                        # lines per buffer of a file (docs/speed.md, "Streaming translation")


class PipeLines:
    """The raw lines of a pipe or terminal, read as they arrive (``os.read`` on its descriptor), and
    :meth:`ready`: whether the next line can be had without waiting for the writer."""

    def __init__(self, fd: int):
        self.fd, self.pending, self.eof = fd, bytearray(), False

    def ready(self) -> bool:
        return self.eof or b"\n" in self.pending or bool(select.select([self.fd], [], [], 0)[0])

    def __iter__(self) -> Iterator[bytes]:
        while True:
            end = self.pending.find(b"\n")
            if end >= 0:
                line = bytes(self.pending[:end + 1])
                del self.pending[:end + 1]
                yield line
            elif self.eof:
                if self.pending:                     # a last line without a newline
                    yield bytes(self.pending)
                    self.pending.clear()
                return
            else:
                chunk = os.read(self.fd, 1 << 16)    # what is there (waits only when nothing is)
                self.eof = not chunk
                self.pending += chunk


def is_stream(stream) -> bool:
    """Whether ``stream`` is a pipe, terminal or socket (not a file, nor an in-memory stream)."""
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False
    return not stat.S_ISREG(mode)


def open_input(path: str | None) -> tuple[Iterator[tuple[int, str]], Callable[[], bool], str]:
    """(line number, line) of a UTF-8 file or stdin, read as needed; a function telling whether the
    next line is there already (a pipe or a terminal: lines that have arrived; else always); the
    name errors use for the input."""
    if path is not None:
        return open_text_lines(path), lambda: True, path
    if is_stream(sys.stdin.buffer):
        pipe = PipeLines(sys.stdin.buffer.fileno())
        return decode_lines(pipe, "<stdin>"), pipe.ready, "<stdin>"
    return decode_lines(sys.stdin.buffer, "<stdin>"), lambda: True, "<stdin>"


def read_buffers(numbered: Iterable[tuple[int, str]], size: int,
                 ready: Callable[[], bool] = lambda: True) -> Iterator[list[tuple[int, str]]]:
    """The input in buffers of at most ``size`` lines; a buffer ends early when the next line has
    not arrived yet (``ready``), so what was typed or piped in is translated without waiting.

    >>> [len(b) for b in read_buffers(enumerate("abcde", 1), 2)]
    [2, 2, 1]
    """
    buffer: list[tuple[int, str]] = []
    for item in numbered:
        buffer.append(item)
        if len(buffer) >= size or not ready():
            yield buffer
            buffer = []
    if buffer:
        yield buffer


def check_output(path: str) -> None:
    """Fail before decoding when --output cannot be written: its directory must exist and be writable."""
    out = Path(path)
    if out.is_dir():
        raise TranslateError(f"--output {out}: is a directory; give a file name")
    parent = out.parent
    if not parent.is_dir():
        raise TranslateError(f"--output {out}: the directory {parent} does not exist; create it or write elsewhere")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TranslateError(f"--output {out}: the directory {parent} is not writable; check its permissions "
                             f"or write elsewhere")


def check_numbers(args: argparse.Namespace) -> None:
    """Sizes and limits that decoding can use; a NaN or an infinity is an error, not a silent default."""
    for name in ("lenpen", "max_len_a", "temperature", "sampling_topp"):
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):
            raise TranslateError(f"--{name.replace('_', '-')} {value}: must be a finite number")
    if args.max_len_a < 0:
        raise TranslateError(f"--max-len-a {args.max_len_a}: must be >= 0")
    for name in ("batch_size", "max_tokens", "buffer_size"):
        if getattr(args, name) < 1:
            raise TranslateError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    if args.score_reference is not None:
        check_score_options(args)
    check_search_options(beam=args.beam, nbest=args.nbest, no_repeat_ngram_size=args.no_repeat_ngram_size,
                         sampling=args.sampling, sampling_topk=args.sampling_topk, sampling_topp=args.sampling_topp,
                         temperature=args.temperature, seed=args.seed)


def check_score_options(args: argparse.Namespace) -> None:
    """--score-reference scores given translations: the options that search for, sample or judge new
    ones make no sense with it (an error naming them, not a silent no-op)."""
    chosen = [flag for flag, given in (
        ("--beam", args.beam is not None), ("--nbest", args.nbest != 1), ("--sampling", args.sampling),
        ("--sampling-topk", args.sampling_topk is not None), ("--sampling-topp", args.sampling_topp is not None),
        ("--temperature", args.temperature != 1.0), ("--seed", args.seed is not None),
        ("--no-repeat-ngram-size", args.no_repeat_ngram_size != 0), ("--reference", args.reference is not None),
    ) if given]
    if chosen:
        raise TranslateError(f"--score-reference scores the given translations; {', '.join(chosen)} "
                             f"(which search for or judge new ones) cannot be used with it")


def count_mismatch(input_name: str, input_count: int | str, target_name: str,
                   target_count: int | str) -> TranslateError:
    return TranslateError(f"line counts differ: {input_name} has {input_count} lines, {target_name} has "
                          f"{target_count}; --score-reference needs one translation per input line")


def check_score_counts(args: argparse.Namespace) -> None:
    """Before the model is loaded: --score-reference's file is readable and, with --input, has as many
    lines as it (stdin is counted as it is scored)."""
    targets = sum(1 for _ in open_text_lines(args.score_reference))
    if args.input:
        inputs = sum(1 for _ in open_text_lines(args.input))
        if inputs != targets:
            raise count_mismatch(args.input, inputs, args.score_reference, targets)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Translate text with a trained nmt checkpoint.")
    p.add_argument("--checkpoint",
                   help="checkpoint file, or a run directory to use its best model (fine-tuned if there is "
                        f"one, else stage 1); default: the demo run of --pair ({DEFAULT_RUN})")
    p.add_argument("--pair", default="en-de", choices=DEMO_PAIRS,
                   help="without --checkpoint: the demo run of this direction, checkpoints/demo-PAIR "
                        "(train.py --pair PAIR); default: %(default)s")
    p.add_argument("--bert", metavar="PATH",
                   help="a stage-1 checkpoint's BERT (it stores a reference, not the weights), when it is no longer "
                        "at the path the checkpoint records; its sha256 must match")
    p.add_argument("--input", help="source text file, one sentence per line (default: stdin)")
    p.add_argument("--output", help="write translations here (default: stdout)")
    p.add_argument("--beam", type=int,
                   help="beam size; 1 = greedy (default: 10, the paper's); with --sampling: samples per line "
                        "(default: --nbest)")
    p.add_argument("--lenpen", type=float,
                   help="length penalty alpha: score = log p / len**alpha (default: the checkpoint's, chosen on its "
                        "dev set after training with --lenpen-grid; else 1.0, the paper's)")
    p.add_argument("--nbest", type=int, default=1, help="hypotheses per line; > 1 writes Moses n-best format")
    p.add_argument("--batch-size", type=int, default=64, help="most sentences per batch")
    p.add_argument("--max-tokens", type=int, default=4000,
                   help="most padded source tokens per batch (default: %(default)s)")
    p.add_argument("--max-len-a", type=float, default=1.2, help="output at most a * source length + b tokens")
    p.add_argument("--max-len-b", type=int, default=10)
    p.add_argument("--no-repeat-ngram-size", type=int, default=0, metavar="N",
                   help="no hypothesis may repeat an N-gram of target tokens (fairseq's; default: 0, off)")
    p.add_argument("--sampling", action="store_true",
                   help="sample translations instead of beam search (fairseq's): --beam N samples per line, "
                        "the --nbest best printed")
    p.add_argument("--sampling-topk", type=int, metavar="K",
                   help="with --sampling: draw from the K most probable tokens")
    p.add_argument("--sampling-topp", type=float, metavar="P",
                   help="with --sampling: draw from the smallest set of most probable tokens whose probability "
                        "reaches P")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="with --sampling: divide the logits by this before the softmax (default: %(default)s)")
    p.add_argument("--seed", type=int,
                   help="with --sampling: the same seed gives the same output (each line seeded by it and its "
                        "line number); default: random")
    p.add_argument("--buffer-size", type=int, default=DEFAULT_BUFFER, metavar="N",
                   help="translate the input N lines at a time, writing each part when done; a line from a "
                        "terminal or an open pipe is translated as soon as it arrives (default: %(default)s)")
    p.add_argument("--reference", help="reference translations: print BLEU and its signature at the end")
    p.add_argument("--bleu-tokenize", default="13a",
                   help="sacrebleu tokenizer for --reference; 'none' for pre-tokenized references")
    p.add_argument("--score-reference", metavar="FILE",
                   help="score the translations in FILE (one per input line) instead of translating: one score "
                        "per line, sum(log p(token)) / len**lenpen over the tokens and EOS, len counting EOS, "
                        "the beam search's score of that translation (fairseq's --score-reference); rescore "
                        "an --nbest list with it")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--engine", choices=("nmt", "ctranslate2"), default="nmt",
                   help="nmt (default): this package's search over a checkpoint; ctranslate2: CTranslate2 over a "
                        "directory written by tools/export_ctranslate2.py (--checkpoint DIR), same text processing "
                        "and search settings (docs/serving.md)")
    p.add_argument("--compute-type", choices=dict.fromkeys(COMPUTE_TYPES + CTRANSLATE2_COMPUTE_TYPES),
                   help="precision of the linear layers, named as in CTranslate2: float32 (default); bfloat16 (GPUs "
                        "and CPUs with bf16 instructions); int8 (CPU: int8 weights per output channel and int8 "
                        "activations in the decoder, fbgemm dynamic quantization). Speed and BLEU of each: "
                        "docs/speed.md. With --engine ctranslate2: any of CTranslate2's (default: the exported type)")
    p.add_argument("--int8", action="store_true", help="same as --compute-type int8")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


@contextlib.contextmanager
def open_output(path: str | None) -> Iterator[IO[str]]:
    """stdout, or ``path`` written atomically (no partial file if anything fails). A full disk (or
    quota) while writing is an error naming the output: the OS's own says no file name."""
    try:
        with contextlib.nullcontext(sys.stdout) if path is None else atomic_write(path, "w") as f:
            yield f
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        kept = f"{path} is as it was" if path else "the output is incomplete"
        raise TranslateError(f"{path or '<stdout>'}: no space left on the device ({e.strerror}) while writing "
                             f"the translations; {kept}: free some space, then run the same command again") from None


def translate_stream(translator: Translator, args: argparse.Namespace, warn: Callable[[str], None],
                     bar) -> list[str] | None:
    """Translate the input buffer by buffer, writing (and flushing) each buffer's translations in
    input order. Returns the best translations when --reference needs them."""
    numbered, ready, name = open_input(args.input)
    kept: list[str] | None = [] if args.reference else None
    options = dict(beam=args.beam, lenpen=args.lenpen, nbest=args.nbest, batch_size=args.batch_size,
                   max_tokens=args.max_tokens, max_len_a=args.max_len_a, max_len_b=args.max_len_b,
                   no_repeat_ngram_size=args.no_repeat_ngram_size, sampling=args.sampling,
                   sampling_topk=args.sampling_topk, sampling_topp=args.sampling_topp, temperature=args.temperature,
                   seed=args.seed, name=name, warn=warn, progress=bar)
    with open_output(args.output) as out:
        for buffer in read_buffers(numbered, args.buffer_size, ready):
            first = buffer[0][0]
            results = translator.translate([line for _, line in buffer], first_line=first, **options)
            if args.nbest > 1:
                text = "".join(f"{first - 1 + i} ||| {h.text} ||| {h.score:.4f}\n"
                               for i, r in enumerate(results) for h in r.hypotheses)
            else:
                text = "".join(r.text + "\n" for r in results)
            out.write(text)
            out.flush()
            if kept is not None:
                kept.extend(r.text for r in results)
    return kept


def score_stream(translator: Translator, args: argparse.Namespace, warn: Callable[[str], None], bar) -> None:
    """--score-reference: score each input line's translation from that file, buffer by buffer,
    writing one score per line in input order. A file input's line count was checked before loading;
    stdin's is checked as it goes (a mismatch is an error after the scores written so far)."""
    numbered, ready, name = open_input(args.input)
    targets = (line for _, line in open_text_lines(args.score_reference))
    done = 0
    with open_output(args.output) as out:
        for buffer in read_buffers(numbered, args.buffer_size, ready):
            given = list(itertools.islice(targets, len(buffer)))
            if len(given) < len(buffer):
                raise count_mismatch(name, f"more than {done + len(given)}", args.score_reference, done + len(given))
            results = translator.score([line for _, line in buffer], given, lenpen=args.lenpen,
                                       batch_size=args.batch_size, max_tokens=args.max_tokens, name=name,
                                       target_name=args.score_reference, first_line=buffer[0][0], warn=warn,
                                       progress=bar)
            out.write("".join(f"{r.score:.6f}\n" for r in results))
            out.flush()
            done += len(buffer)
        extra = sum(1 for _ in targets)
        if extra:
            raise count_mismatch(name, done, args.score_reference, done + extra)


def load_translator(args: argparse.Namespace):
    """The --engine's translator: nmt's Translator over a checkpoint, or CTranslate2 over a directory that
    tools/export_ctranslate2.py wrote (nmt/decode/ctranslate2_engine.py; the same translate() and results)."""
    if args.engine == "nmt":
        return Translator.from_checkpoint(args.checkpoint, args.device, args.compute_type or "float32",
                                          int8=args.int8, bert=args.bert)
    nmt_only = [flag for flag, given in (("--sampling", args.sampling),
                                         ("--score-reference", getattr(args, "score_reference", None))) if given]
    if nmt_only:
        raise TranslateError(f"{' and '.join(nmt_only)}: nmt's engine only; drop --engine ctranslate2")
    from nmt.decode.ctranslate2_engine import CTranslate2Translator
    return CTranslate2Translator.from_dir(args.checkpoint, args.device,
                                          "int8" if args.int8 else args.compute_type or "default")


def main(argv=None) -> int:
    args = parse_args(argv)
    keep_freed_memory()                           # nmt/cpu/allocator.py: no page faults per decoding step
    demo_run = args.checkpoint is None
    if demo_run:
        args.checkpoint = str(DEFAULT_RUN.with_name(demo_name(args.pair)))
    warn = lambda msg: print(f"warning: {msg}", file=sys.stderr)   # noqa: E731
    written = False                               # --output complete: an interrupt later leaves it
    previous = raise_on_stop_signals()
    try:
        check_numbers(args)
        if args.output:
            check_output(args.output)
        if args.score_reference:
            check_score_counts(args)
        if demo_run and not Path(args.checkpoint).is_dir():
            raise TranslateError(f"{args.checkpoint}: no demo run for {args.pair} yet; train one first "
                                 f"(python train.py --pair {args.pair}) or pass --checkpoint")
        translator = load_translator(args)
        if args.lenpen is None and not args.quiet and (args.beam or 10) > 1 and not args.sampling:
            print(f"length penalty {translator.lenpen:g} (the checkpoint's default; --lenpen to change)",
                  file=sys.stderr)
        references = None
        if args.reference:
            from nmt.metrics import check_parallel
            references = read_lines(args.reference)
            if args.input:                        # a file can be counted first: a mismatch fails before decoding
                check_parallel([(args.input, range(sum(1 for _ in open_text_lines(args.input)))),
                                (args.reference, references)])
        from tqdm import tqdm
        interactive = args.input is None and sys.stdin.isatty()
        with tqdm(file=sys.stderr, unit="sent", disable=args.quiet or interactive,
                  desc="scoring" if args.score_reference else "translating") as bar:
            if args.score_reference:
                hypotheses = score_stream(translator, args, warn, bar)
            else:
                hypotheses = translate_stream(translator, args, warn, bar)
        written = True
        if references is not None:
            from nmt.metrics import check_parallel, corpus_bleu
            check_parallel([(args.input or "<stdin>", hypotheses), (args.reference, references)])
            score, signature = corpus_bleu(hypotheses, references, tokenize=args.bleu_tokenize)
            print(f"{score.format()}\nsignature: {signature}", file=sys.stderr)
    except (NmtError, OSError) as e:     # a user error or the disk: one line; anything else is a bug
        print(error_line(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:       # Ctrl-C, SIGTERM, SIGHUP
        signum = getattr(e, "signum", signal.SIGINT)
        lost = f": {args.output} not written (no partial file; a previous one is kept)"
        print(f"interrupted by {signal.Signals(signum).name}{lost if args.output and not written else ''}",
              file=sys.stderr)
        return 128 + signum
    finally:
        restore_signals(previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
