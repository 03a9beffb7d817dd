"""Benchmark the tokenizers against their reference implementations, on the same real text.

WordPiece (nmt.text.wordpiece) vs Google's bert/tokenization.py and HF's Rust tokenizer (through
transformers.BertTokenizer): lines/s, text -> ids, single-threaded. BPE (nmt.text.bpe) vs subword-nmt
0.3.8: learn time and apply lines/s. Text: every line of ../shared/iwslt15-en-vi/* and, when
present, data/demo/**/*.gz. Test/benchmark-only packages (bert-tensorflow, transformers,
subword-nmt) come from requirements-dev.txt.

    python tools/maintainers/bench_tokenizers.py                  # everything, default settings
    python tools/maintainers/bench_tokenizers.py --repeats 5 --merges 8000

Times are CPU seconds of this process (time.process_time: fair on a shared machine, and the
Rust tokenizer is held to one thread), each the best of --repeats runs. "cold" means a fresh tokenizer (empty per-word
cache), "warm" a second pass over the same text with the same tokenizer.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import os
import sys
import tempfile
import time
import types
from pathlib import Path

# Single-threaded Rust and torch: the comparison is one core against one core.
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


from nmt.files import DEMO_DIR, REPO

SHARED = REPO.parent / "shared"
DEFAULT_VOCAB = SHARED / "bert" / "minilm-l6-h384-uncased-tf" / "vocab.txt"


def load_google_tokenization():
    """Google's bert/tokenization.py (PyPI bert-tensorflow) with a stand-in for TensorFlow.

    It only uses tf.gfile.GFile to read the vocabulary, so a tiny module replaces TensorFlow.
    """
    if "tensorflow" not in sys.modules:
        tf, compat, v1 = (types.ModuleType(n) for n in ("tensorflow", "tensorflow.compat", "tensorflow.compat.v1"))
        v1.gfile = types.SimpleNamespace(GFile=lambda path, mode="r": open(path, mode, encoding="utf-8"))
        tf.compat, compat.v1 = compat, v1
        sys.modules.update({"tensorflow": tf, "tensorflow.compat": compat, "tensorflow.compat.v1": v1})
    from absl import flags
    from bert import tokenization

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # tokenization.py reads FLAGS.preserve_unused_tokens
    return tokenization


def read_corpora() -> dict[str, list[str]]:
    corpora = {}
    for path in sorted((SHARED / "iwslt15-en-vi").glob("*")):
        corpora[path.name] = path.read_text(encoding="utf-8").splitlines()
    for path in sorted(DEMO_DIR.glob("**/*.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            corpora[str(path.relative_to(REPO))] = f.read().splitlines()
    return corpora


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def bench_wordpiece(lines: list[str], vocab_path: Path, repeats: int) -> None:
    from transformers import BertTokenizer

    from nmt.text.wordpiece import WordPieceTokenizer

    google = load_google_tokenization().FullTokenizer(str(vocab_path), do_lower_case=True)
    hf = BertTokenizer(vocab=str(vocab_path), do_lower_case=True)
    rust = hf.backend_tokenizer  # tokenizers.Tokenizer
    rust.no_padding()
    rust.no_truncation()

    def ours_cold():
        tok = WordPieceTokenizer.from_file(vocab_path)
        start = time.process_time()
        for line in lines:
            tok.encode(line)
        return time.process_time() - start

    warm_tok = WordPieceTokenizer.from_file(vocab_path)
    for line in lines:
        warm_tok.encode(line)

    def google_run():
        for line in lines:
            google.convert_tokens_to_ids(google.tokenize(line))

    def rust_single():
        for line in lines:
            rust.encode(line)

    def hf_python_api():
        for line in lines:
            hf(line)["input_ids"]

    n = len(lines)
    results = {
        "nmt.text.wordpiece encode, cold (fresh tokenizer)": min(ours_cold() for _ in range(repeats)),
        "nmt.text.wordpiece encode, warm (cache filled)": best_time(lambda: [warm_tok.encode(x) for x in lines], repeats),
        "google tokenization.py tokenize+ids": best_time(google_run, max(1, repeats // 2)),
        "HF Rust Tokenizer.encode_batch (1 thread)": best_time(lambda: rust.encode_batch(lines), repeats),
        "HF Rust Tokenizer.encode, line by line": best_time(rust_single, repeats),
        "HF transformers BertTokenizer(line)": best_time(hf_python_api, max(1, repeats // 2)),
    }
    print(f"\n== WordPiece: {n} lines, text -> ids, single-threaded ==")
    for name, seconds in results.items():
        print(f"  {name:<48} {n / seconds:>12,.0f} lines/s   ({seconds:.3f} s CPU)")
    ours = n / results["nmt.text.wordpiece encode, cold (fresh tokenizer)"]
    print("  ratios (nmt.text.wordpiece cold lines/s divided by the other's):")
    for name in list(results)[2:]:
        print(f"    vs {name:<45} {ours / (n / results[name]):6.2f}x")
    print("  targets: >= 5x Google, >= 0.5x HF Rust")


def bench_bpe(lines: list[str], merges: int, repeats: int) -> None:
    print(f"\n== BPE: learn {merges} merges (min frequency 2) and apply, {len(lines)} lines ==")
    try:
        from nmt.text.bpe import BPE, learn_bpe, write_codes
    except ImportError as error:
        print(f"  skipped: nmt.text.bpe is not available yet ({error})")
        return
    from subword_nmt.apply_bpe import BPE as SubwordBPE
    from subword_nmt.learn_bpe import learn_bpe as subword_learn_bpe

    text = "\n".join(lines) + "\n"

    codes_text = ""

    def subword_learn():
        nonlocal codes_text
        out = io.StringIO()
        with contextlib.redirect_stderr(io.StringIO()):  # silence subword-nmt's progress bar
            subword_learn_bpe(io.StringIO(text), out, merges, min_frequency=2)
        codes_text = out.getvalue()

    ours_merges = None

    def ours_learn():
        nonlocal ours_merges
        ours_merges = learn_bpe(lines, merges, min_frequency=2)

    t_ours_learn = best_time(ours_learn, repeats)
    t_sub_learn = best_time(subword_learn, repeats)
    with tempfile.TemporaryDirectory() as tmp:
        codes_path = Path(tmp) / "codes"
        write_codes(ours_merges, codes_path)
        with open(codes_path, encoding="utf-8") as f:
            subword = SubwordBPE(f)
    ours = BPE(ours_merges)

    def ours_apply():
        for line in lines:
            ours.segment(line)

    def subword_apply():
        for line in lines:
            subword.process_line(line)

    t_ours_apply = best_time(ours_apply, repeats)
    t_sub_apply = best_time(subword_apply, repeats)
    n = len(lines)
    same_codes = [tuple(l.split(" ")) for l in codes_text.splitlines()[1:]] == [tuple(m) for m in ours_merges]
    print(f"  learn: nmt.text.bpe {t_ours_learn:.3f} s ({len(ours_merges)} merges), subword-nmt {t_sub_learn:.3f} s "
          f"-> {t_sub_learn / t_ours_learn:.2f}x faster (target >= 2x); identical merges: {same_codes}")
    print(f"  apply: nmt.text.bpe {n / t_ours_apply:,.0f} lines/s, subword-nmt {n / t_sub_apply:,.0f} lines/s "
          f"-> {t_sub_apply / t_ours_apply:.2f}x faster (target >= 3x)  [same codes for both]")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=Path, default=DEFAULT_VOCAB, help="BERT vocab.txt")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (best is kept)")
    parser.add_argument("--merges", type=int, default=8000, help="BPE merges to learn")
    parser.add_argument("--skip-bpe", action="store_true")
    parser.add_argument("--skip-wordpiece", action="store_true")
    args = parser.parse_args(argv)
    if not args.vocab.is_file():
        print(f"error: {args.vocab} not found; pass --vocab PATH to a BERT vocab.txt", file=sys.stderr)
        return 2
    corpora = read_corpora()
    if not corpora:
        print(f"error: no text found in {SHARED / 'iwslt15-en-vi'} or data/demo/", file=sys.stderr)
        return 2
    lines = [line for corpus in corpora.values() for line in corpus]
    print("text: " + ", ".join(f"{name} ({len(c)} lines)" for name, c in corpora.items()))
    print(f"python {sys.version.split()[0]}, RAYON_NUM_THREADS={os.environ['RAYON_NUM_THREADS']}")
    if not args.skip_wordpiece:
        bench_wordpiece(lines, args.vocab, args.repeats)
    if not args.skip_bpe:
        bench_bpe(lines, args.merges, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
