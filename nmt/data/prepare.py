"""Prepare a parallel corpus for training: validate, tokenize, learn BPE, binarize.

Reads parallel text in the Stanford NLP layout the paper used (one sentence per line, one file per
language: ``DIR/train.en`` + ``DIR/train.vi``, ``DIR/tst2012.*``, ...), plain or gzip (detected by
content, so ``train.en.gz`` works too), and writes a data directory (format: nmt/data/binarized.py) that
training memory-maps. ``tools/prepare_data.py`` is the command line over :func:`prepare`; train.py
prepares the embedded demo corpus once with :func:`prepare_demo`.

Source: BERT WordPiece with the BERT model's vocabulary (``bert``: a model path load_bert reads,
a ``vocab.txt``, or ``default`` for the installed all-MiniLM-L6-v2), lower-cased as the model says
(nmt.weights.pretrained.decide_lower_case, the rule load_bert follows too) unless ``lowercase`` says
otherwise, or with ``source_bpe`` its own BPE (the Transformer baselines). Target: BPE learned on the TRAINING target only (``bpe_merges``),
applied to every split; the target vocabulary is every BPE symbol of the kept training target.

Validation and filtering (counted, reported in the summary table):
- line counts must be equal on both sides (else an error names both files and counts);
- invalid UTF-8 is an error naming ``file:line``; a BOM at the start of a file is removed;
- a pair with an empty side (blank, or no tokens after tokenization) is dropped, in every split;
- training pairs with more than ``max_len`` subword tokens on either side (special tokens not
  counted) are dropped; in valid/test splits only pairs that cannot be encoded at all (source
  longer than the encoder's positions) are dropped, so they stay comparable with the references.
  ``{split}.lines.bin`` keeps the original line number of every kept pair.

Large corpora stream through in three passes over the training files, one function each, so memory
holds the BPE statistics but never the corpus: :func:`learn_codes` (validate + learn BPE),
:func:`encode_training_pairs` (ids numbered provisionally, as BPE symbols first appear) and
:func:`finish_vocabularies` (the vocabularies, then the id files remapped to them); then
:func:`encode_split` for the dev and test sets with the finished pipelines. The output is written
to a temporary directory and renamed into place at the end. A worked example (a source-BPE corpus
of two pairs, so no BERT is needed):

>>> import tempfile
>>> raw = Path(tempfile.mkdtemp())
>>> _ = (raw / "train.en").write_text("a cat .\\nthe dog .\\n", encoding="utf-8")
>>> _ = (raw / "train.de").write_text("eine Katze .\\nder Hund .\\n", encoding="utf-8")
>>> meta = prepare(raw / "data", train_prefix=raw / "train", src="en", tgt="de", target_mode="tokenized",
...                source_bpe=True, bpe_merges=10, print_fn=lambda line: None)
>>> meta["splits"]["train"]["pairs"], meta["source"]["kind"], meta["target"]["mode"]
(2, 'bpe', 'tokenized')
>>> sorted(p.name for p in (raw / "data").iterdir())       # doctest: +NORMALIZE_WHITESPACE
['meta.json', 'source.json', 'target.json', 'train.lines.bin', 'train.src.bin', 'train.src.idx',
 'train.tgt.bin', 'train.tgt.idx']
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from nmt.data.binarized import (
    FORMAT,
    SplitWriter,
    file_sha256,
    read_meta,
    vocab_fingerprint,
    write_json,
)
from nmt.errors import DataError
from nmt.files import DEMO_DIR, atomic_write, exclusive_lock, remove_stale_temporaries
from nmt.text.bpe import BPE, learn_bpe
from nmt.text.lines import open_text_lines
from nmt.text.pipeline import MODES, SourcePipeline, TargetPipeline, pre_bpe_tokens
from nmt.text.vocab import Vocab
from nmt.text.wordpiece import WordPieceTokenizer
from nmt.weights.pretrained import decide_lower_case, load_bert

DEFAULT_BPE_MERGES = 16000
DEFAULT_MAX_LEN = 250
PROGRESS_EVERY = 500_000

# BERT-fit report (WordPiece sources): how well the BERT's vocabulary and positions cover the source.
# Above any of these thresholds, in any split, the summary warns and names the fix. Chosen from what
# a BERT sees on text of a language it was trained for (English under an English uncased vocabulary:
# well under 0.1% of words [UNK], 1.1-1.4 pieces per word, no line near 512 pieces) against a
# language it does not cover (its script missing: many [UNK]s; a related script: words shredded
# into 3+ pieces), with room for names, typos and rare symbols in real corpora.
FIT_MAX_UNK_WORDS = 0.01         # > 1% of source words became [UNK]: the vocabulary lacks its characters
FIT_MAX_PIECES_PER_WORD = 2.5    # > 2.5 pieces per word: words shredded, the language is barely covered
FIT_MAX_LINES_CUT = 0.005        # > 0.5% of source lines longer than the encoder's positions (dropped)


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
    # BERT fit (WordPiece sources), over every non-empty source line read, kept or dropped
    fit_lines: int = 0
    fit_pieces: int = 0            # word pieces, [CLS]/[SEP] not counted
    fit_words: int = 0             # BERT's basic-tokenizer words: pieces that do not start with "##"
    fit_unk: int = 0               # [UNK] pieces; each is one whole word
    fit_over: int = 0              # lines with more pieces than the encoder's positions hold

    def drop_empty(self, line: int) -> None:
        """A pair with an empty side (blank, or no tokens): counted; the first few line numbers kept."""
        self.empty += 1
        if len(self.empty_lines) < 5:
            self.empty_lines.append(line)


class BertFit:
    """Counts the BERT fit of WordPiece source ids as the pipeline encodes them (no second
    tokenization): words are the pieces not marked ``##`` (BERT's basic tokenizer makes every
    word one [UNK] or a first piece plus ``##`` pieces; "#" is punctuation, so a word never starts
    with it)."""

    def __init__(self, source: SourcePipeline):
        tokens = source.vocab_tokens
        self.continuation = bytes(t.startswith("##") for t in tokens)
        self.unk_id, self.max_pieces = source.tokenizer.unk_id, source.max_positions - 2

    def add(self, st: SplitStats, ids: list[int]) -> None:
        """One non-empty source line's ids, [CLS] ... [SEP] included."""
        pieces = ids[1:-1]
        st.fit_lines += 1
        st.fit_pieces += len(pieces)
        st.fit_words += len(pieces) - sum(map(self.continuation.__getitem__, pieces))
        st.fit_unk += pieces.count(self.unk_id)
        st.fit_over += len(pieces) > self.max_pieces


def bert_fit_report(stats: dict[str, SplitStats], source: SourcePipeline) -> dict | None:
    """meta.json's "bert_fit": per split the [UNK] shares, pieces per word and lines over the
    encoder's positions; the thresholds; and a warning (with its fix) per threshold exceeded. None
    for a BPE source (no BERT)."""
    if source.kind != "wordpiece":
        return None
    casing = "uncased (lower-cased)" if source.do_lower_case else "cased"
    splits = {}
    for s in stats.values():
        n, p, w = s.fit_lines, s.fit_pieces, s.fit_words
        splits[s.name] = {"lines": n, "pieces": p, "words": w, "unk": s.fit_unk,
                          "unk_piece_share": s.fit_unk / p if p else 0.0,
                          "unk_word_share": s.fit_unk / w if w else 0.0,
                          "pieces_per_word": p / w if w else 0.0,
                          "lines_over_max_positions": s.fit_over, "lines_over_share": s.fit_over / n if n else 0.0}
    other_casing = "--cased" if source.do_lower_case else "--uncased"
    checks = (("unk_word_share", FIT_MAX_UNK_WORDS, "of source words became [UNK]", True,
               f"use a BERT whose vocabulary covers the source language (--bert), or try {other_casing}"),
              ("pieces_per_word", FIT_MAX_PIECES_PER_WORD, "word pieces per source word", False,
               "use a BERT that covers the source language (--bert; a multilingual one if none exists)"),
              ("lines_over_share", FIT_MAX_LINES_CUT, "of source lines exceed the encoder's "
               f"{source.max_positions} positions and are dropped", True,
               "split long lines into sentences, or use a BERT with more max_position_embeddings"))
    warnings = []
    for key, limit, what, share, fix in checks:
        over = [(name, v[key]) for name, v in splits.items() if v[key] > limit]
        if over:
            fmt = (lambda x: f"{100 * x:.2f}%") if share else (lambda x: f"{x:.2f}")  # noqa: E731
            found = ", ".join(f"{name} {fmt(x)}" for name, x in over)
            warnings.append(f"warning: {found} {what} (above {fmt(limit)}); {fix}")
    return {"casing": casing, "max_positions": source.max_positions, "splits": splits,
            "thresholds": {"unk_word_share": FIT_MAX_UNK_WORDS, "pieces_per_word": FIT_MAX_PIECES_PER_WORD,
                           "lines_over_share": FIT_MAX_LINES_CUT},
            "warnings": warnings}


def bert_fit_lines(fit: dict | None) -> list[str]:
    """The fit report's lines for the summary."""
    if fit is None:
        return []
    lines = [f"BERT fit (the source under the BERT's WordPiece, {fit['casing']}, "
             f"{fit['max_positions']} positions):"]
    for name, v in fit["splits"].items():
        lines.append(f"  {name}: [UNK] {v['unk']:,} of {v['words']:,} words ({100 * v['unk_word_share']:.2f}%; "
                     f"{100 * v['unk_piece_share']:.2f}% of {v['pieces']:,} pieces), "
                     f"{v['pieces_per_word']:.2f} pieces/word, {v['lines_over_max_positions']:,} of "
                     f"{v['lines']:,} lines ({100 * v['lines_over_share']:.2f}%) over {fit['max_positions']} positions")
    return lines + fit["warnings"]


def prepare(out: str | Path, *, train_prefix: str | Path, src: str, tgt: str, target_mode: str,
            valid_prefix: str | Path | None = None, test_prefixes: Sequence[str | Path] = (),
            bert: str | Path | None = None, lowercase: bool | None = None, bpe_merges: int = DEFAULT_BPE_MERGES,
            source_bpe: bool = False, source_bpe_merges: int | None = None, max_len: int = DEFAULT_MAX_LEN,
            min_frequency: int = 2, reuse: bool = False, pipelines_from: str | Path | None = None,
            print_fn: Callable[[str], None] = print) -> dict:
    """Prepare the data directory ``out``; returns its meta.json contents (with a "summary" table).

    Splits are named "train", "valid" and "test", "test1", ... in the order of test_prefixes.
    With ``reuse=True`` an existing ``out`` prepared from the same inputs and settings is returned
    as is (train.py uses this for its cached demo data). ``lowercase``: --uncased (True) / --cased
    (False); None: as the BERT says. One preparation of ``out`` at a time (the lock ``.OUT.lock``
    beside it, nmt.files.exclusive_lock): while another process writes it, a new preparation is a
    DataError naming its PID, and a ``reuse=True`` one waits for it and then uses its result (runs
    started in parallel on the same data, e.g. a grid).
    ``pipelines_from``: a trained model (checkpoint file or run directory) whose source and target
    pipelines encode the data instead of new ones (continuing that model on new data: train.py
    --init); ``bert``, ``lowercase``, ``source_bpe`` and the BPE settings are then not used, and
    ``target_mode`` (None: the model's) must be the model's.
    """
    out = Path(out)
    given = None
    if pipelines_from is not None:
        given = load_pipelines(pipelines_from)
        target_mode = target_mode or given[1].mode
        if target_mode != given[1].mode:
            raise DataError(f"--target-mode {target_mode} differs from the {given[1].mode!r} mode of the model's "
                            f"target pipeline ({pipelines_from}); drop --target-mode")
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
    source_merges = (source_bpe_merges or bpe_merges) if source_bpe else None
    if given is not None:
        source, max_positions = given[0], given[0].max_positions
        bpe_merges, source_merges = len(given[1].bpe.merges), None
        source_settings = {"kind": given[0].kind, "pipelines_from": str(pipelines_from),
                           "source_sha256": vocab_fingerprint([json.dumps(given[0].to_dict(), sort_keys=True)]),
                           "target_sha256": vocab_fingerprint([json.dumps(given[1].to_dict(), sort_keys=True)])}
        if given[0].kind == "wordpiece":
            source_settings["bert"] = f"the model's ({pipelines_from})"
    elif source_bpe:
        source, max_positions = None, 1024        # the source pipeline is finished in pass 3
        source_settings = {"kind": "bpe", "merges": source_merges}
    else:
        tokenizer, max_positions = load_source_tokenizer(bert, lowercase)
        source = SourcePipeline.wordpiece(tokenizer, max_positions=max_positions)
        source_settings = {"kind": "wordpiece", "bert": str(bert or "default"),
                           "vocab_sha256": vocab_fingerprint(tokenizer.vocab_tokens),
                           "lowercase": tokenizer.do_lower_case, "max_positions": max_positions}
    if source_settings["kind"] == "wordpiece" and max_len + 2 > max_positions:
        raise DataError(f"--max-len {max_len} does not fit the encoder's {max_positions} positions "
                        f"with [CLS] and [SEP] (needs max-len + 2 <= {max_positions})")
    settings = {"inputs": {name: _input_fingerprint(f) for name, f in files.items()}, "src": src, "tgt": tgt,
                "target_mode": target_mode, "source": source_settings, "bpe_merges": bpe_merges,
                "max_len": max_len, "min_frequency": min_frequency}
    if reuse and (meta := reusable(out, settings, print_fn)) is not None:
        return meta
    out.parent.mkdir(parents=True, exist_ok=True)
    waiting = (lambda pid: print_fn(f"{out} is being prepared by another process (PID {pid}): waiting for it, "
                                    f"then using its result")) if reuse else None
    with exclusive_lock(out.parent / f".{out.name}.lock", str(out), error=DataError, wait=waiting):  # one writer
        if reuse and (meta := reusable(out, settings, print_fn)) is not None:      # by a process just ended
            return meta
        return _prepare_locked(out, files, settings, target_mode=target_mode, bpe_merges=bpe_merges,
                               source_merges=source_merges, min_frequency=min_frequency, source=source,
                               max_len=max_len, max_positions=max_positions,
                               target=given[1] if given else None, print_fn=print_fn)


def load_pipelines(path: str | Path) -> tuple[SourcePipeline, TargetPipeline]:
    """The source and target pipelines a trained model was trained with: ``path`` is a checkpoint
    file or a run directory (its best model, nmt.weights.checkpoint.best_checkpoint_path)."""
    from nmt.weights.checkpoint import best_checkpoint_path, load_checkpoint
    path = Path(path)
    if path.is_dir():
        path = best_checkpoint_path(path)
    elif not path.is_file():
        raise DataError(f"--pipelines-from {path}: no such checkpoint file or run directory; pass a trained model's "
                        f"checkpoint_best.pt or its run directory")
    ckpt = load_checkpoint(path, required=("source", "target"))
    return (SourcePipeline.from_dict(ckpt["source"], what=f"{path}: source"),
            TargetPipeline.from_dict(ckpt["target"], what=f"{path}: target"))


def reusable(out: Path, settings: dict, print_fn: Callable[[str], None]) -> dict | None:
    """The meta.json of ``out`` when it was prepared from the same inputs and settings, else None."""
    if not (out / "meta.json").is_file():
        return None
    try:
        meta = read_meta(out)
    except DataError:
        return None
    if meta.get("settings") != settings:
        return None
    print_fn(f"using prepared data in {out}")
    return meta


def _prepare_locked(out: Path, files: dict, settings: dict, *, target_mode: str, bpe_merges: int,
                    source_merges: int | None, min_frequency: int, source, max_len: int, max_positions: int,
                    target: TargetPipeline | None, print_fn: Callable[[str], None]) -> dict:
    """:func:`prepare`'s passes, under the lock of ``out``: built in .OUT.tmp-PID, renamed into place.
    With ``target`` (and ``source``) given, a trained model's pipelines, every split is encoded with
    them in one pass each; nothing is learned."""
    t0 = time.time()
    stats = {name: SplitStats(name, str(s), str(t)) for name, (s, t) in files.items()}
    if target is None:
        target_bpe, source_bpe_codes = learn_codes(*files["train"], target_mode=target_mode, bpe_merges=bpe_merges,
                                                   source_merges=source_merges, min_frequency=min_frequency,
                                                   print_fn=print_fn)
    for stale in remove_stale_temporaries(out.parent, also=(), names=f".{out.name}.tmp-*"):
        print_fn(f"removed {stale}, left behind by an interrupted preparation")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        if target is None:
            info, provisional = encode_training_pairs(tmp, *files["train"], stats["train"], target_mode=target_mode,
                                                      target_bpe=target_bpe, source=source,
                                                      source_bpe=source_bpe_codes, max_len=max_len, print_fn=print_fn)
            source, target = finish_vocabularies(tmp, info, provisional, stats["train"], target_mode=target_mode,
                                                 target_bpe=target_bpe, source=source, source_bpe=source_bpe_codes,
                                                 max_positions=max_positions)
        else:
            info = {"train": encode_split(tmp, "train", *files["train"], stats["train"], source, target,
                                          max_len=max_len)}
            if info["train"]["pairs"] == 0:
                raise DataError(f"{files['train'][0]}, {files['train'][1]}: no training pairs left after filtering "
                                f"({stats['train'].read} read, {stats['train'].empty} empty, "
                                f"{stats['train'].too_long} longer than --max-len {max_len})")
        for name, (s_path, t_path) in files.items():
            if name != "train":
                info[name] = encode_split(tmp, name, s_path, t_path, stats[name], source, target)
        meta = write_meta(tmp, info, stats, settings, source, target, bpe_merges)
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


def prepare_demo_slice(out: str | Path, pair: str, lines: dict[str, int], *, bert: str | Path | None = None,
                       bpe_merges: int = DEFAULT_BPE_MERGES, print_fn: Callable[[str], None] = print) -> dict:
    """Prepare the first ``lines[split]`` pairs of each demo split (train, dev, test) into ``out``, once:
    train.py --quick. The slices are written as text next to it (``OUT-text/``), so meta.json names
    real input files as for any other data."""
    out = Path(out)
    src, tgt = pair.split("-")
    text = out.parent / f"{out.name}-text"
    text.mkdir(parents=True, exist_ok=True)
    for split, count in lines.items():
        for lang in (src, tgt):
            target = text / f"{split}.{lang}"
            if not target.is_file():
                with gzip.open(DEMO_DIR / pair / f"{split}.{lang}.gz", "rb") as f:
                    head = b"".join(line for _, line in zip(range(count), f))
                with atomic_write(target) as w:
                    w.write(head)
    return prepare(out, train_prefix=text / "train", valid_prefix=text / "dev", test_prefixes=[text / "test"],
                   src=src, tgt=tgt, target_mode="raw", bert=bert, bpe_merges=bpe_merges, reuse=True,
                   print_fn=print_fn)


# ----------------------------------------------------------------------------------------------
# reading the input

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


def load_source_tokenizer(bert: str | Path | None, lowercase: bool | None = None) -> tuple[WordPieceTokenizer, int]:
    """The BERT WordPiece tokenizer and the encoder's max positions for ``--bert``.

    Only the vocabulary and the config are needed, so model directories (Google TF layout with
    bert_config.json, or HF with config.json) are read without loading weights. Lower-casing:
    ``lowercase`` if given, else the model's (decide_lower_case; for a bare vocab.txt, its
    directory's). ``default`` is the installed all-MiniLM-L6-v2. A native .pt
    (tools/convert_bert_checkpoint.py) goes through nmt.weights.pretrained.load_bert.
    """
    if bert is None or str(bert) == "default":
        from nmt.text.wordpiece import default_vocab_path
        bert = default_vocab_path().parent
    path = Path(bert)
    if path.is_file() and path.suffix == ".txt":          # a bare vocab.txt: BERT's 512 positions
        return WordPieceTokenizer.from_file(path, do_lower_case=decide_lower_case(path, lowercase)), 512
    if path.is_dir() and (path / "vocab.txt").is_file():
        configs = [path / n for n in ("config.json", "bert_config.json") if (path / n).is_file()]
        if not configs:
            raise DataError(f"{path}: has vocab.txt but no config.json or bert_config.json")
        max_positions = int(_read_json(configs[0]).get("max_position_embeddings", 512))
        lower = decide_lower_case(path, lowercase)
        return WordPieceTokenizer.from_file(path / "vocab.txt", do_lower_case=lower), max_positions
    if not path.exists():
        raise DataError(f"{path}: BERT model or vocab.txt not found (use --bert default for the installed model)")
    encoder, tokenizer = load_bert(path, lower_case=lowercase)
    return tokenizer, int(encoder.config.max_position_embeddings)


def _input_fingerprint(paths: Sequence[Path]) -> list:
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]


# ----------------------------------------------------------------------------------------------
# pass 1 over the training files: validate (line counts, UTF-8) while learning BPE

def learn_codes(train_src: Path, train_tgt: Path, *, target_mode: str, bpe_merges: int, source_merges: int | None,
                min_frequency: int, print_fn: Callable[[str], None]) -> tuple[BPE, BPE | None]:
    """The target BPE and, when ``source_merges`` is given (the baselines), the source BPE, each
    learned on its side of the non-empty training pairs."""
    print_fn(f"learning {bpe_merges} BPE merges on {train_tgt}")
    target_bpe = BPE(learn_bpe(nonempty_training_side(train_src, train_tgt, 1, target_mode), bpe_merges,
                               min_frequency=min_frequency))
    if source_merges is None:
        return target_bpe, None
    print_fn(f"learning {source_merges} source BPE merges on {train_src}")
    source_bpe = BPE(learn_bpe(nonempty_training_side(train_src, train_tgt, 0, target_mode), source_merges,
                               min_frequency=min_frequency))
    return target_bpe, source_bpe


def nonempty_training_side(train_src: Path, train_tgt: Path, side: int, target_mode: str) -> Iterator[str]:
    """Side 0 (source) or 1 (target) of the pairs with no blank side, pre-tokenized in raw mode."""
    for n, s, t in read_pairs(train_src, train_tgt):
        if not s.strip() or not t.strip():
            continue
        line = (s, t)[side]
        yield " ".join(pre_bpe_tokens(line, target_mode)) if target_mode == "raw" else line


# ----------------------------------------------------------------------------------------------
# pass 2: tokenize, filter, write provisional ids for BPE symbols

def encode_training_pairs(tmp: Path, train_src: Path, train_tgt: Path, st: SplitStats, *, target_mode: str,
                          target_bpe: BPE, source: SourcePipeline | None, source_bpe: BPE | None, max_len: int,
                          print_fn: Callable[[str], None]) -> tuple[dict, dict[str, dict[str, int]]]:
    """The train split written to ``tmp`` with provisional ids for the BPE symbols (numbered by first
    appearance, so the vocabulary is known only at the end; the source EOS is -1); returns
    {"train": the split's meta.json entry} and the provisional tables {"src": ..., "tgt": ...}.
    ``source``: the BERT source pipeline, or None with ``source_bpe`` (the baselines)."""
    provisional: dict[str, dict[str, int]] = {"src": {}, "tgt": {}}
    source_specials = 1 if source_bpe is not None else 2          # EOS, or [CLS] and [SEP]
    fit = BertFit(source) if source_bpe is None else None
    writer = SplitWriter(tmp, "train")
    for n, s, t in read_pairs(train_src, train_tgt):
        st.read += 1
        if n % PROGRESS_EVERY == 0:
            print_fn(f"  train: {n} lines")
        if source_bpe is not None:
            s_tok = source_bpe.segment_tokens(pre_bpe_tokens(s, target_mode))
            s_len = len(s_tok)
        else:
            s_ids = source.encode(s)
            s_len = len(s_ids) - source_specials
            if s_len:
                fit.add(st, s_ids)
        t_tok = target_bpe.segment_tokens(pre_bpe_tokens(t, target_mode))
        if s_len == 0 or not t_tok:
            st.drop_empty(n)
            continue
        if s_len > max_len or len(t_tok) > max_len:
            st.too_long += 1
            continue
        if source_bpe is not None:
            s_ids = provisional_ids(provisional["src"], s_tok) + [-1]      # -1: EOS, fixed after the remap
        writer.add(s_ids, provisional_ids(provisional["tgt"], t_tok), n)
    info = {"train": writer.close()}
    if info["train"]["pairs"] == 0:
        raise DataError(f"{train_src}, {train_tgt}: no training pairs left after filtering "
                        f"({st.read} read, {st.empty} empty, {st.too_long} longer than --max-len {max_len})")
    return info, provisional


def provisional_ids(table: dict[str, int], symbols: list[str]) -> list[int]:
    """Ids of ``symbols`` in ``table``, new symbols numbered in order of first appearance."""
    return [table.setdefault(sym, len(table)) for sym in symbols]


# ----------------------------------------------------------------------------------------------
# pass 3: vocabularies from the counts of the provisional ids, then remap the id files

def finish_vocabularies(tmp: Path, info: dict, provisional: dict[str, dict[str, int]], st: SplitStats, *,
                        target_mode: str, target_bpe: BPE, source: SourcePipeline | None, source_bpe: BPE | None,
                        max_positions: int) -> tuple[SourcePipeline, TargetPipeline]:
    """The finished source (the baselines' source BPE gets its vocabulary here) and target pipelines;
    the train split's id files remapped to their final ids, hashed again in ``info``."""
    target = TargetPipeline(target_mode, target_bpe, finish_vocab(tmp, "tgt", provisional["tgt"]))
    if source_bpe is not None:
        source = SourcePipeline.with_bpe(source_bpe, finish_vocab(tmp, "src", provisional["src"]), mode=target_mode,
                                         max_positions=max_positions)
    for name in ("train.src.bin", "train.tgt.bin"):          # rewritten: hash again
        path = tmp / name
        info["train"]["files"][name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    st.kept, st.src_tokens, st.tgt_tokens = (info["train"]["pairs"], info["train"]["src_tokens"],
                                             info["train"]["tgt_tokens"])
    return source, target


def finish_vocab(tmp: Path, side: str, provisional: dict[str, int]) -> Vocab:
    """One side's Vocab from the counts of its provisional ids in train.SIDE.bin, which is remapped."""
    symbols = list(provisional)
    bin_path = tmp / f"train.{side}.bin"
    vocab, table = _vocab_from_counts(symbols, _count_ids(bin_path, len(symbols)))
    table = np.append(table, np.int32(Vocab.EOS))      # the provisional EOS, -1, is the last entry
    _remap_in_place(bin_path, table)
    return vocab


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


# ----------------------------------------------------------------------------------------------
# dev and test splits, and the output

def encode_split(tmp: Path, name: str, src_path: Path, tgt_path: Path, st: SplitStats, source: SourcePipeline,
                 target: TargetPipeline, max_len: int | None = None) -> dict:
    """A dev or test split encoded with the finished pipelines; returns its meta.json entry. With
    ``max_len`` (a training split encoded with a trained model's pipelines) pairs with more subword
    tokens on a side are dropped too, as in :func:`encode_training_pairs`."""
    source_specials = 2 if source.kind == "wordpiece" else 1
    fit = BertFit(source) if source.kind == "wordpiece" else None
    writer = SplitWriter(tmp, name)
    for n, s, t in read_pairs(src_path, tgt_path):
        st.read += 1
        s_ids, t_ids = source.encode(s), target.encode(t)
        if fit is not None and len(s_ids) > source_specials:
            fit.add(st, s_ids)
        if len(s_ids) <= source_specials or not t_ids:
            st.drop_empty(n)
            continue
        too_long = max_len is not None and (len(s_ids) - source_specials > max_len or len(t_ids) > max_len)
        if len(s_ids) > source.max_positions or too_long:
            st.too_long += 1
            continue
        st.tgt_unk += t_ids.count(Vocab.UNK)
        writer.add(s_ids, t_ids, n)
    info = writer.close()
    st.kept, st.src_tokens, st.tgt_tokens = info["pairs"], info["src_tokens"], info["tgt_tokens"]
    return info


def write_meta(tmp: Path, info: dict, stats: dict[str, SplitStats], settings: dict, source: SourcePipeline,
               target: TargetPipeline, bpe_merges: int) -> dict:
    """source.json, target.json and meta.json (the splits, their inputs and drop counts, the settings
    that ``reuse`` compares, and the summary table); returns the meta."""
    for name, entry in info.items():
        entry["inputs"] = {"src": stats[name].src_file, "tgt": stats[name].tgt_file}
        entry["dropped"] = {"empty": stats[name].empty, "too_long": stats[name].too_long}
    meta_files = {"source.json": write_json(tmp / "source.json", source.to_dict()),
                  "target.json": write_json(tmp / "target.json", target.to_dict())}
    meta = {"format": FORMAT, "splits": info, "files": meta_files, "settings": settings,
            "source": {"kind": source.kind, "vocab_size": len(source.vocab_tokens),
                       "vocab_sha256": vocab_fingerprint(source.vocab_tokens), "pad_id": source.pad_id,
                       "max_positions": source.max_positions,
                       "bpe_merges": len(source.bpe.merges) if source.kind == "bpe" else None},
            "target": {"mode": target.mode, "vocab_size": len(target.vocab),
                       "vocab_sha256": vocab_fingerprint(target.vocab.symbols), "bpe_merges": len(target.bpe.merges)},
            "bert_fit": bert_fit_report(stats, source)}
    meta["summary"] = "\n".join([summary_table(stats, source, target, target.bpe, bpe_merges)]
                                 + bert_fit_lines(meta["bert_fit"]))
    write_json(tmp / "meta.json", meta)
    return meta


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


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        is_ours = (out / "meta.json").is_file() or (out.is_dir() and not any(out.iterdir()))
        if not out.is_dir() or not is_ours:
            raise DataError(f"{out}: exists and is not a prepared data directory; refusing to overwrite it")
        shutil.rmtree(out)
    os.replace(tmp, out)
