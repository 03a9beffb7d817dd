"""Prepare a parallel corpus for training: validate, tokenize, learn BPE, binarize.

Reads parallel text in the Stanford NLP layout the paper used (one sentence per line, one file per
language: ``DIR/train.en`` + ``DIR/train.vi``, ``DIR/tst2012.*``, ...), plain or gzip (detected by
content, so ``train.en.gz`` works too), and writes a data directory (format: nmt/data.py) that
training memory-maps::

    python tools/prepare_data.py --train-prefix ../shared/iwslt15-en-vi/tst2012 \\
        --valid-prefix ../shared/iwslt15-en-vi/tst2013 --src en --tgt vi \\
        --target-mode tokenized --bpe-merges 16000 --out checkpoints/data/iwslt15-en-vi

Source: BERT WordPiece with the BERT model's vocabulary (``--bert``: a model path load_bert reads,
a ``vocab.txt``, or ``default`` for the installed all-MiniLM-L6-v2), or with ``--source-bpe`` its own
BPE (the Transformer baselines). Target: BPE learned on the TRAINING target only (``--bpe-merges``),
applied to every split; the target vocabulary is every BPE symbol of the kept training target.

Validation and filtering (counted, reported in the summary table):
- line counts must be equal on both sides (else an error names both files and counts);
- invalid UTF-8 is an error naming ``file:line``; a BOM at the start of a file is removed;
- a pair with an empty side (blank, or no tokens after tokenization) is dropped, in every split;
- training pairs with more than ``--max-len`` subword tokens on either side (special tokens not
  counted) are dropped; in valid/test splits only pairs that cannot be encoded at all (source
  longer than the encoder's positions) are dropped, so they stay comparable with the references.
  ``{split}.lines.bin`` keeps the original line number of every kept pair.

Large corpora stream through in three passes over the training files (validate + learn BPE,
encode, remap ids), so memory holds the BPE statistics but never the corpus. The output is written
to a temporary directory and renamed into place at the end. Exit status 2 with ``error: ...`` on
bad input.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

if __package__ in (None, ""):                  # run as `python tools/prepare_data.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from nmt.bpe import BPE, learn_bpe  # noqa: E402
from nmt.data import (FORMAT, DataError, SplitWriter, file_sha256, read_meta, vocab_fingerprint,  # noqa: E402
                      write_json)
from nmt.text import MODES, SourcePipeline, TargetPipeline, _pre_bpe_tokens, open_text_lines  # noqa: E402
from nmt.vocab import Vocab  # noqa: E402
from nmt.wordpiece import WordPieceTokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "data" / "demo"                  # en-de/{train,dev,test}.{en,de}.gz, en-vi/...
DEFAULT_BPE_MERGES = 16000
DEFAULT_MAX_LEN = 250
PROGRESS_EVERY = 500_000


@dataclass
class SplitStats:
    """Counts for one split, one row of the summary table."""
    name: str
    src_file: str
    tgt_file: str
    read: int = 0
    kept: int = 0
    empty: int = 0
    too_long: int = 0
    src_tokens: int = 0
    tgt_tokens: int = 0
    tgt_unk: int = 0
    empty_lines: list[int] = field(default_factory=list, repr=False)   # first few, for the report


def resolve_side(prefix: str | Path, lang: str) -> Path:
    """``prefix.lang`` or ``prefix.lang.gz``, whichever exists."""
    plain = Path(f"{prefix}.{lang}")
    for path in (plain, Path(f"{plain}.gz")):
        if path.is_file():
            return path
    raise DataError(f"{plain}: file not found (nor {plain}.gz); check the prefix and --src/--tgt")


def read_pairs(src_path: Path, tgt_path: Path) -> Iterator[tuple[int, str, str]]:
    """(line number, source line, target line), checking both files have the same number of lines."""
    src_it, tgt_it = open_text_lines(src_path), open_text_lines(tgt_path)
    n = 0
    for n, s in src_it:
        t = next(tgt_it, None)
        if t is None:                     # target ended first: line n of the source is extra
            _count_mismatch(src_path, n + sum(1 for _ in src_it), tgt_path, n - 1)
        yield n, s, t[1]
    rest = sum(1 for _ in tgt_it)
    if rest:
        _count_mismatch(src_path, n, tgt_path, n + rest)


def _count_mismatch(src_path: Path, src_count: int, tgt_path: Path, tgt_count: int):
    raise DataError(f"line counts differ: {src_path} has {src_count} lines, {tgt_path} has {tgt_count}; "
                    f"the files must be sentence-aligned, one pair per line")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable JSON ({e})") from None


def load_source_tokenizer(bert: str | Path | None, lowercase: bool) -> tuple[WordPieceTokenizer, int]:
    """The BERT WordPiece tokenizer and the encoder's max positions for ``--bert``.

    Only the vocabulary and the config are needed, so model directories (Google TF layout with
    bert_config.json, or HF with config.json) are read without loading weights: vocab.txt, the
    config's max_position_embeddings, and tokenizer_config.json's do_lower_case when present
    (else ``lowercase``). ``default`` is the installed all-MiniLM-L6-v2 (uncased). A native .pt
    (tools/convert_bert_checkpoint.py) goes through nmt.pretrained.load_bert.
    """
    if bert is None or str(bert) == "default":
        from nmt.wordpiece import default_vocab_path
        bert = default_vocab_path().parent
    path = Path(bert)
    if path.is_file() and path.suffix == ".txt":          # a bare vocab.txt: BERT's 512 positions
        return WordPieceTokenizer.from_file(path, do_lower_case=lowercase), 512
    if path.is_dir() and (path / "vocab.txt").is_file():
        configs = [path / n for n in ("config.json", "bert_config.json") if (path / n).is_file()]
        if not configs:
            raise DataError(f"{path}: has vocab.txt but no config.json or bert_config.json")
        max_positions = int(_read_json(configs[0]).get("max_position_embeddings", 512))
        tok_config = path / "tokenizer_config.json"
        if tok_config.is_file():
            lowercase = bool(_read_json(tok_config).get("do_lower_case", lowercase))
        return WordPieceTokenizer.from_file(path / "vocab.txt", do_lower_case=lowercase), max_positions
    if not path.exists():
        raise DataError(f"{path}: BERT model or vocab.txt not found (use --bert default for the installed model)")
    from nmt.pretrained import load_bert
    encoder, tokenizer = load_bert(path)
    return tokenizer, int(encoder.config.max_position_embeddings)


def _input_fingerprint(paths: Sequence[Path]) -> list:
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        is_ours = (out / "meta.json").is_file() or (out.is_dir() and not any(out.iterdir()))
        if not out.is_dir() or not is_ours:
            raise DataError(f"{out}: exists and is not a prepared data directory; refusing to overwrite it")
        shutil.rmtree(out)
    os.replace(tmp, out)


def _count_ids(path: Path, size: int, chunk: int = 1 << 24) -> np.ndarray:
    """Occurrences of each provisional id 0..size-1 in an id file (chunked; -1 entries ignored)."""
    counts = np.zeros(size, dtype=np.int64)
    if path.stat().st_size:
        ids = np.memmap(path, dtype=np.int32, mode="r")
        for a in range(0, len(ids), chunk):
            block = ids[a:a + chunk]
            counts += np.bincount(block[block >= 0], minlength=size)
        del ids
    return counts


def _vocab_from_counts(symbols: list[str], counts: np.ndarray) -> tuple[Vocab, np.ndarray]:
    """The Vocab that Vocab.build would make (count desc, then alphabetical) from the counts of
    provisional ids, and the provisional -> final id table."""
    count_of = dict(zip(symbols, counts.tolist()))
    kept = sorted((s for s, c in count_of.items() if c > 0 and s not in Vocab.SPECIALS),
                  key=lambda s: (-count_of[s], s))
    vocab = Vocab(list(Vocab.SPECIALS) + kept)
    table = np.array([vocab.index.get(s, Vocab.UNK) for s in symbols], dtype=np.int32)
    return vocab, table


def _remap_in_place(path: Path, table: np.ndarray, chunk: int = 1 << 24) -> None:
    """ids <- table[ids] over a memory-mapped id file, chunk by chunk."""
    if path.stat().st_size == 0:
        return
    ids = np.memmap(path, dtype=np.int32, mode="r+")
    for a in range(0, len(ids), chunk):
        ids[a:a + chunk] = table[ids[a:a + chunk]]
    ids.flush()
    del ids


def prepare(out: str | Path, *, train_prefix: str | Path, src: str, tgt: str, target_mode: str,
            valid_prefix: str | Path | None = None, test_prefixes: Sequence[str | Path] = (),
            bert: str | Path | None = None, lowercase: bool = True, bpe_merges: int = DEFAULT_BPE_MERGES,
            source_bpe: bool = False, source_bpe_merges: int | None = None, max_len: int = DEFAULT_MAX_LEN,
            min_frequency: int = 2, reuse: bool = False, print_fn: Callable[[str], None] = print) -> dict:
    """Prepare the data directory ``out``; returns its meta.json contents (with a "summary" table).

    Splits are named "train", "valid" and "test", "test1", ... in the order of test_prefixes.
    With ``reuse=True`` an existing ``out`` prepared from the same inputs and settings is returned
    as is (train.py uses this for its cached demo data).
    """
    out = Path(out)
    if target_mode not in MODES:
        raise DataError(f"unknown --target-mode {target_mode!r} (expected one of {', '.join(MODES)})")
    if bpe_merges < 1 or max_len < 1:
        raise DataError(f"--bpe-merges ({bpe_merges}) and --max-len ({max_len}) must be positive")
    prefixes = {"train": train_prefix}
    if valid_prefix is not None:
        prefixes["valid"] = valid_prefix
    for k, p in enumerate(test_prefixes):
        prefixes["test" if k == 0 else f"test{k}"] = p
    files = {name: (resolve_side(p, src), resolve_side(p, tgt)) for name, p in prefixes.items()}
    if source_bpe:
        source_settings = {"kind": "bpe", "merges": source_bpe_merges or bpe_merges}
    else:
        tokenizer, max_positions = load_source_tokenizer(bert, lowercase)
        source_settings = {"kind": "wordpiece", "bert": str(bert or "default"),
                           "vocab_sha256": vocab_fingerprint(tokenizer.vocab_tokens),
                           "lowercase": tokenizer.do_lower_case, "max_positions": max_positions}
        if max_len + 2 > max_positions:
            raise DataError(f"--max-len {max_len} does not fit the encoder's {max_positions} positions "
                            f"with [CLS] and [SEP] (needs max-len + 2 <= {max_positions})")
    settings = {"inputs": {name: _input_fingerprint(f) for name, f in files.items()}, "src": src, "tgt": tgt,
                "target_mode": target_mode, "source": source_settings, "bpe_merges": bpe_merges,
                "max_len": max_len, "min_frequency": min_frequency}
    if reuse and (out / "meta.json").is_file():
        try:
            meta = read_meta(out)
        except DataError:
            meta = None
        if meta is not None and meta.get("settings") == settings:
            print_fn(f"using prepared data in {out}")
            return meta

    t0 = time.time()
    stats = {name: SplitStats(name, str(s), str(t)) for name, (s, t) in files.items()}
    train_src, train_tgt = files["train"]

    # Pass 1 over the training files: validate (counts, UTF-8, empty lines) while learning BPE.
    def nonempty_train(side: int) -> Iterator[str]:
        for n, s, t in read_pairs(train_src, train_tgt):
            if not s.strip() or not t.strip():
                continue
            line = (s, t)[side]
            yield " ".join(_pre_bpe_tokens(line, target_mode)) if target_mode == "raw" else line

    print_fn(f"learning {bpe_merges} BPE merges on {train_tgt}")
    target_bpe = BPE(learn_bpe(nonempty_train(1), bpe_merges, min_frequency=min_frequency))
    if source_bpe:
        n_src_merges = source_bpe_merges or bpe_merges
        print_fn(f"learning {n_src_merges} source BPE merges on {train_src}")
        src_bpe = BPE(learn_bpe(nonempty_train(0), n_src_merges, min_frequency=min_frequency))
        max_positions = 1024
        source_specials = 1                    # EOS
    else:
        source = SourcePipeline.wordpiece(tokenizer, max_positions=max_positions)
        source_specials = 2                    # [CLS], [SEP]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        # Pass 2 over the training files: tokenize, filter, write provisional ids for BPE symbols
        # (numbered by first appearance, so the vocabulary is known only at the end).
        provisional: dict[str, dict[str, int]] = {"src": {}, "tgt": {}}

        def prov_ids(side: str, symbols: list[str]) -> list[int]:
            table = provisional[side]
            return [table.setdefault(sym, len(table)) for sym in symbols]

        st = stats["train"]
        writer = SplitWriter(tmp, "train")
        for n, s, t in read_pairs(train_src, train_tgt):
            st.read += 1
            if n % PROGRESS_EVERY == 0:
                print_fn(f"  train: {n} lines")
            if source_bpe:
                s_tok = src_bpe.segment_tokens(_pre_bpe_tokens(s, target_mode))
                s_len = len(s_tok)
            else:
                s_ids = source.encode(s)
                s_len = len(s_ids) - source_specials
            t_tok = target_bpe.segment_tokens(_pre_bpe_tokens(t, target_mode))
            if s_len == 0 or not t_tok:
                st.empty += 1
                if len(st.empty_lines) < 5:
                    st.empty_lines.append(n)
                continue
            if s_len > max_len or len(t_tok) > max_len:
                st.too_long += 1
                continue
            if source_bpe:
                s_ids = prov_ids("src", s_tok) + [-1]          # -1: EOS, fixed after the remap
            writer.add(s_ids, prov_ids("tgt", t_tok), n)
        info = {"train": writer.close()}
        if info["train"]["pairs"] == 0:
            raise DataError(f"{train_src}, {train_tgt}: no training pairs left after filtering "
                            f"({st.read} read, {st.empty} empty, {st.too_long} longer than --max-len {max_len})")

        # Pass 3: vocabularies from the counts of the provisional ids, then remap the id files.
        def finish_vocab(side: str) -> Vocab:
            symbols = list(provisional[side])
            bin_path = tmp / f"train.{side}.bin"
            vocab, table = _vocab_from_counts(symbols, _count_ids(bin_path, len(symbols)))
            table = np.append(table, np.int32(Vocab.EOS))      # the provisional EOS, -1, is the last entry
            _remap_in_place(bin_path, table)
            return vocab

        target = TargetPipeline(target_mode, target_bpe, finish_vocab("tgt"))
        if source_bpe:
            source = SourcePipeline.with_bpe(src_bpe, finish_vocab("src"), mode=target_mode,
                                             max_positions=max_positions)
        for name in ("train.src.bin", "train.tgt.bin"):          # rewritten: hash again
            path = tmp / name
            info["train"]["files"][name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        st.kept, st.src_tokens, st.tgt_tokens = (info["train"]["pairs"], info["train"]["src_tokens"],
                                                 info["train"]["tgt_tokens"])

        # Valid and test splits: encode with the finished pipelines.
        for name, (s_path, t_path) in files.items():
            if name == "train":
                continue
            st = stats[name]
            writer = SplitWriter(tmp, name)
            for n, s, t in read_pairs(s_path, t_path):
                st.read += 1
                s_ids, t_ids = source.encode(s), target.encode(t)
                if len(s_ids) <= source_specials or not t_ids:
                    st.empty += 1
                    if len(st.empty_lines) < 5:
                        st.empty_lines.append(n)
                    continue
                if len(s_ids) > max_positions:
                    st.too_long += 1
                    continue
                st.tgt_unk += t_ids.count(Vocab.UNK)
                writer.add(s_ids, t_ids, n)
            info[name] = writer.close()
            st.kept, st.src_tokens, st.tgt_tokens = info[name]["pairs"], info[name]["src_tokens"], info[name]["tgt_tokens"]

        for name, entry in info.items():
            entry["inputs"] = {"src": stats[name].src_file, "tgt": stats[name].tgt_file}
            entry["dropped"] = {"empty": stats[name].empty, "too_long": stats[name].too_long}
        meta_files = {"source.json": write_json(tmp / "source.json", source.to_dict()),
                      "target.json": write_json(tmp / "target.json", target.to_dict())}
        meta = {"format": FORMAT, "splits": info, "files": meta_files, "settings": settings,
                "source": {"kind": source.kind, "vocab_size": len(source.vocab_tokens),
                           "vocab_sha256": vocab_fingerprint(source.vocab_tokens), "pad_id": source.pad_id,
                           "max_positions": source.max_positions, "bpe_merges": len(src_bpe.merges) if source_bpe else None},
                "target": {"mode": target_mode, "vocab_size": len(target.vocab),
                           "vocab_sha256": vocab_fingerprint(target.vocab.symbols), "bpe_merges": len(target_bpe.merges)},
                "summary": summary_table(stats, source, target, target_bpe, bpe_merges)}
        write_json(tmp / "meta.json", meta)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print_fn(meta["summary"])
    print_fn(f"wrote {out} in {time.time() - t0:.1f} s")
    return meta


def prepare_demo(out: str | Path, pair: str = "en-de", *, bert: str | Path | None = None,
                 bpe_merges: int = DEFAULT_BPE_MERGES, source_bpe: bool = False, reuse: bool = True,
                 print_fn: Callable[[str], None] = print) -> dict:
    """Prepare the embedded demo corpus data/demo/{pair} (raw text, gzip) into ``out``, once.

    train.py with no data arguments calls this with a cache directory under checkpoints/;
    splits are train, valid (dev) and test.
    """
    src, tgt = pair.split("-")
    base = DEMO_DIR / pair
    if not base.is_dir():
        raise DataError(f"{base}: demo corpus not found (expected {base}/train.{src}.gz and friends)")
    return prepare(out, train_prefix=base / "train", valid_prefix=base / "dev", test_prefixes=[base / "test"],
                   src=src, tgt=tgt, target_mode="raw", bert=bert, bpe_merges=bpe_merges,
                   source_bpe=source_bpe, reuse=reuse, print_fn=print_fn)


def summary_table(stats: dict[str, SplitStats], source: SourcePipeline, target: TargetPipeline,
                  target_bpe: BPE, requested_merges: int) -> str:
    """The table printed at the end; source tokens include the special tokens ([CLS]/[SEP] or EOS)."""
    header = ("split", "pairs read", "kept", "dropped empty", "dropped long", "src tokens", "tgt tokens", "tgt <unk>")
    rows = [header] + [(s.name, s.read, s.kept, s.empty, s.too_long, s.src_tokens, s.tgt_tokens, s.tgt_unk)
                       for s in stats.values()]
    widths = [max(len(f"{r[i]:,}" if isinstance(r[i], int) else r[i]) for r in rows) for i in range(len(header))]
    fmt = lambda r: "  ".join((f"{v:,}" if isinstance(v, int) else v).rjust(w) if i else str(v).ljust(w)  # noqa: E731
                              for i, (v, w) in enumerate(zip(r, widths)))
    lines = [fmt(rows[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows[1:]]
    for s in stats.values():
        if s.empty_lines:
            lines.append(f"{s.name}: empty pairs at lines {', '.join(map(str, s.empty_lines))}"
                         f"{' ...' if s.empty > len(s.empty_lines) else ''} of {s.src_file} / {s.tgt_file}")
    kind = "BERT WordPiece" if source.kind == "wordpiece" else "source BPE"
    lines.append(f"source vocabulary: {len(source.vocab_tokens):,} ({kind}"
                 f"{', lower-cased' if source.do_lower_case else ''})")
    learned = len(target_bpe.merges)
    lines.append(f"target vocabulary: {len(target.vocab):,} symbols from {learned:,} BPE merges ({target.mode} mode"
                 f"{'' if learned == requested_merges else f'; {requested_merges:,} requested, no pair left above --min-frequency'})")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-prefix", required=True, help="training files are PREFIX.SRC and PREFIX.TGT (.gz ok)")
    p.add_argument("--valid-prefix", help="development set (split 'valid')")
    p.add_argument("--test-prefix", action="append", default=[],
                   help="test set; repeatable (splits 'test', 'test1', ...)")
    p.add_argument("--src", required=True, help="source language suffix, e.g. en")
    p.add_argument("--tgt", required=True, help="target language suffix, e.g. vi")
    p.add_argument("--target-mode", required=True, choices=MODES,
                   help="'tokenized': Stanford pre-tokenized text, kept as is; 'raw': untokenized text")
    p.add_argument("--bert", default="default",
                   help="BERT model (native .pt, TF or HF dir) or its vocab.txt; 'default': installed MiniLM")
    p.add_argument("--cased", action="store_true", help="with a bare vocab.txt: do not lower-case")
    p.add_argument("--bpe-merges", type=int, default=DEFAULT_BPE_MERGES, help="target BPE merges (default 16000)")
    p.add_argument("--source-bpe", action="store_true", help="Transformer baselines: BPE source instead of BERT")
    p.add_argument("--source-bpe-merges", type=int, help="source BPE merges (default: --bpe-merges)")
    p.add_argument("--max-len", type=int, default=DEFAULT_MAX_LEN,
                   help="drop training pairs with more subword tokens on a side (default 250)")
    p.add_argument("--min-frequency", type=int, default=2, help="BPE: least frequency of a merged pair")
    p.add_argument("--out", required=True, help="output data directory")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        prepare(args.out, train_prefix=args.train_prefix, valid_prefix=args.valid_prefix,
                test_prefixes=args.test_prefix, src=args.src, tgt=args.tgt, target_mode=args.target_mode,
                bert=args.bert, lowercase=not args.cased, bpe_merges=args.bpe_merges,
                source_bpe=args.source_bpe, source_bpe_merges=args.source_bpe_merges,
                max_len=args.max_len, min_frequency=args.min_frequency)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
