"""tools/prepare_data.py on the real IWSLT15 En-Vi files, and on broken input."""
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nmt.data.binarized import ParallelData, check_source_vocab
from nmt.data.prepare import prepare
from nmt.errors import CheckpointError, DataError
from nmt.text.lines import open_text_lines
from nmt.text.pipeline import SourcePipeline, TargetPipeline
from nmt.text.vocab import Vocab
from tests.conftest import REPO, SHARED_BERT_TF, SHARED_IWSLT, linked_copy, require_path
from tools.prepare_data import main

MERGES = 500          # small, for speed; the default is 16,000


def lines_of(path):
    return [line for _, line in open_text_lines(path)]


@pytest.fixture(scope="module")
def iwslt_prepared(tmp_path_factory):
    """tst2012 as training data, tst2013 as valid and test; BERT vocab from ../shared/."""
    iwslt, bert = require_path(SHARED_IWSLT), require_path(SHARED_BERT_TF)
    out = tmp_path_factory.mktemp("prep") / "iwslt"
    meta = prepare(out, train_prefix=iwslt / "tst2012", valid_prefix=iwslt / "tst2013",
                   test_prefixes=[iwslt / "tst2013"], src="en", tgt="vi", target_mode="tokenized",
                   bert=bert, bpe_merges=MERGES, print_fn=lambda s: None)
    return out, meta


def test_counts_and_summary(iwslt_prepared):
    out, meta = iwslt_prepared
    assert {s: meta["splits"][s]["pairs"] for s in ("train", "valid", "test")} == \
        {"train": 1553, "valid": 1268, "test": 1268}
    assert meta["splits"]["train"]["dropped"] == {"empty": 0, "too_long": 0}
    assert len(ParallelData(out, "train", verify=True)) == 1553
    assert "train       1,553  1,553" in meta["summary"] and "source vocabulary: 30,522" in meta["summary"]
    assert meta["target"]["bpe_merges"] == MERGES


def test_round_trip_to_the_original_tokenized_text(iwslt_prepared):
    out, _ = iwslt_prepared
    source = SourcePipeline.from_dict(json.loads((out / "source.json").read_text()))
    target = TargetPipeline.from_dict(json.loads((out / "target.json").read_text()))
    for split, prefix in (("train", "tst2012"), ("test", "tst2013")):
        data = ParallelData(out, split)
        en, vi = lines_of(SHARED_IWSLT / f"{prefix}.en"), lines_of(SHARED_IWSLT / f"{prefix}.vi")
        assert data.line_numbers.tolist() == list(range(1, len(en) + 1))
        exact = 0
        for i in range(len(data)):
            src_ids, tgt_ids = data.pair(i)
            assert src_ids.tolist() == source.encode(en[i])
            text = target.decode(tgt_ids)
            if Vocab.UNK not in tgt_ids:
                assert text == vi[i]                  # entities kept, BOM removed, nothing else changed
                exact += 1
        if split == "train":                          # BPE learned here: every line round-trips
            assert exact == len(data)
        else:                                         # unseen characters become <unk>, but rarely
            assert exact > 0.95 * len(data)


def test_target_vocab_is_every_bpe_symbol_of_the_training_target(iwslt_prepared):
    out, _ = iwslt_prepared
    target = TargetPipeline.from_dict(json.loads((out / "target.json").read_text()))
    oracle = Vocab.build(target.tokens(x) for x in lines_of(SHARED_IWSLT / "tst2012.vi"))
    assert target.vocab == oracle
    data = ParallelData(out, "train")
    assert Vocab.UNK not in np.asarray(data._bin["tgt"])


def test_data_dir_rejects_another_bert_vocab(iwslt_prepared):
    out, _ = iwslt_prepared
    vocab = lines_of(SHARED_BERT_TF / "vocab.txt")
    check_source_vocab(out, vocab)
    with pytest.raises(DataError, match="different source vocabulary"):
        check_source_vocab(out, vocab[:-1])


def write_pairs(directory, name, src_lines, tgt_lines, src="en", tgt="vi", gz=False):
    directory.mkdir(parents=True, exist_ok=True)
    for lang, lines in ((src, src_lines), (tgt, tgt_lines)):
        data = "".join(x + "\n" for x in lines).encode("utf-8")
        if gz:
            with gzip.open(directory / f"{name}.{lang}.gz", "wb") as f:
                f.write(data)
        else:
            (directory / f"{name}.{lang}").write_bytes(data)
    return directory / name


def small_prepare(out, prefix, **kw):
    kw.setdefault("bert", require_path(SHARED_BERT_TF / "vocab.txt"))
    return prepare(out, train_prefix=prefix, src="en", tgt="vi", target_mode="tokenized",
                   bpe_merges=50, print_fn=lambda s: None, **kw)


def test_empty_and_overlong_pairs_are_dropped_and_counted(tmp_path):
    en = ["a cat", "", "a dog", "the " * 30, "a bird", "  "]
    vi = ["mèo", "chó", "", "x", "chim", "y"]
    meta = small_prepare(tmp_path / "out", write_pairs(tmp_path, "train", en, vi), max_len=20)
    assert meta["splits"]["train"]["pairs"] == 2
    assert meta["splits"]["train"]["dropped"] == {"empty": 3, "too_long": 1}
    assert "empty pairs at lines 2, 3, 6" in meta["summary"]
    assert ParallelData(tmp_path / "out", "train").line_numbers.tolist() == [1, 5]


def test_gzip_inputs_give_the_same_data(tmp_path):
    en, vi = ["a cat sat", "the dog ran"], ["con mèo", "con chó chạy"]
    plain = small_prepare(tmp_path / "p", write_pairs(tmp_path / "plain", "train", en, vi))
    zipped = small_prepare(tmp_path / "z", write_pairs(tmp_path / "gz", "train", en, vi, gz=True))
    assert plain["splits"]["train"]["files"] == zipped["splits"]["train"]["files"]


@pytest.mark.parametrize("src_lines, tgt_lines, message", [
    (["a", "b", "c"], ["x", "y"], r"line counts differ: .*train\.en has 3 lines, .*train\.vi has 2"),
    (["", " "], ["x", "y"], r"no training pairs left after filtering \(2 read, 2 empty"),
])
def test_bad_training_data(tmp_path, src_lines, tgt_lines, message):
    with pytest.raises(DataError, match=message):
        small_prepare(tmp_path / "out", write_pairs(tmp_path, "train", src_lines, tgt_lines))
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_invalid_utf8_and_missing_files(tmp_path):
    prefix = write_pairs(tmp_path, "train", ["a", "b"], ["x", "y"])
    (tmp_path / "train.vi").write_bytes(b"x\n\xff\xfe y\n")
    with pytest.raises(DataError, match=r"train\.vi:2: invalid UTF-8"):
        small_prepare(tmp_path / "out", prefix)
    with pytest.raises(DataError, match=r"nope\.en: file not found \(nor .*nope\.en\.gz\)"):
        small_prepare(tmp_path / "out", tmp_path / "nope")


def test_reuse_and_refusal_to_overwrite(tmp_path):
    prefix = write_pairs(tmp_path, "train", ["a cat", "a dog"], ["mèo", "chó"])
    small_prepare(tmp_path / "out", prefix)
    stamp = (tmp_path / "out" / "meta.json").stat().st_mtime_ns
    small_prepare(tmp_path / "out", prefix, reuse=True)
    assert (tmp_path / "out" / "meta.json").stat().st_mtime_ns == stamp       # nothing rebuilt
    small_prepare(tmp_path / "out", prefix, reuse=True, max_len=9)             # other settings: rebuilt
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["settings"]["max_len"] == 9
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a prepared data directory; refusing to overwrite"):
        small_prepare(tmp_path / "precious", prefix)
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def test_a_killed_preparation_leaves_nothing_behind_once_rerun(tmp_path):
    """prepare_data.py builds in .OUT.tmp-PID and renames; a kill -9 leaves that folder: the next
    preparation of OUT removes it (its process is gone), and nothing that is not ours."""
    prefix = write_pairs(tmp_path, "train", ["a cat", "a dog"], ["mèo", "chó"])
    stale = tmp_path / ".out.tmp-999999999"                  # no such process
    (stale / "sub").mkdir(parents=True)
    (stale / "train.src.bin").write_bytes(b"half")
    other = tmp_path / ".other.tmp-999999999"                # another directory's: not touched
    other.mkdir()
    small_prepare(tmp_path / "out", prefix)
    assert not stale.exists() and other.is_dir() and (tmp_path / "out" / "meta.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".other.tmp-999999999"]


def prepared_files(out):
    """Every file of a data directory, and meta.json without the --bert path it records."""
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "meta.json"}
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    del meta["settings"]["source"]["bert"]
    return files, meta


def test_one_bert_as_directory_or_converted_file_gives_identical_data(tmp_path, capsys):
    """One casing rule for preparation, load_bert and the converter: Google's TF layout under an uncased
    and a cased name, each as a directory and as its converted .pt; a name that says nothing needs a flag."""
    from tools import convert_bert_checkpoint
    tf = require_path(SHARED_BERT_TF)
    en = ["Select the cells in Excel .", "Click OK and close Word .", "The Rhine flows through Basel ."]
    vi = ["chọn ô trong Excel .", "nhấn OK và đóng Word .", "sông Rhine chảy qua Basel ."]
    prefix = write_pairs(tmp_path / "raw", "train", en, vi)
    prepared = {}
    for name in ("uncased_L-6_H-384_A-12", "cased_L-6_H-384_A-12"):
        directory = linked_copy(tf, tmp_path / name)
        converted = tmp_path / f"{name}.pt"
        assert convert_bert_checkpoint.main([str(directory), str(converted)]) == 0
        small_prepare(tmp_path / f"{name}-dir", prefix, bert=directory)
        small_prepare(tmp_path / f"{name}-pt", prefix, bert=converted)
        prepared[name] = prepared_files(tmp_path / f"{name}-dir")
        assert prepared[name] == prepared_files(tmp_path / f"{name}-pt"), name
    uncased, cased = prepared["uncased_L-6_H-384_A-12"], prepared["cased_L-6_H-384_A-12"]
    assert json.loads(uncased[0]["source.json"])["do_lower_case"] is True
    assert json.loads(cased[0]["source.json"])["do_lower_case"] is False
    unk = SourcePipeline.from_dict(json.loads(uncased[0]["source.json"])).tokenizer.unk_id
    # this vocabulary is uncased: kept case turns capitalised words into [UNK]
    assert unk not in np.frombuffer(uncased[0]["train.src.bin"], np.int32)
    assert unk in np.frombuffer(cased[0]["train.src.bin"], np.int32)

    unnamed = linked_copy(tf, tmp_path / "mybert")
    argv = ["--train-prefix", str(prefix), "--src", "en", "--tgt", "vi", "--target-mode", "tokenized",
            "--bpe-merges", "50", "--bert", str(unnamed), "--out", str(tmp_path / "m")]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "mybert: cannot tell" in err and "--cased" in err and err.count("\n") == 1
    with pytest.raises(CheckpointError, match="pass --uncased or --cased"):
        small_prepare(tmp_path / "m", prefix, bert=unnamed / "vocab.txt")     # a bare vocab.txt: its directory's
    assert main(argv + ["--cased"]) == 0
    assert prepared_files(tmp_path / "m") == cased


def test_source_bpe_for_the_baselines(tmp_path):
    en = ["the cat sat on the mat", "the dog sat", "a cat ran"]
    vi = ["con mèo ngồi", "con chó ngồi", "mèo chạy"]
    meta = small_prepare(tmp_path / "out", write_pairs(tmp_path, "train", en, vi), source_bpe=True,
                         source_bpe_merges=30, bert=None)
    source = SourcePipeline.from_dict(json.loads((tmp_path / "out" / "source.json").read_text()))
    assert source.kind == "bpe" and meta["source"]["pad_id"] == Vocab.PAD
    data = ParallelData(tmp_path / "out", "train", verify=True)
    for i, line in enumerate(en):
        ids = data.pair(i)[0].tolist()
        assert ids == source.encode(line) and ids[-1] == Vocab.EOS and Vocab.UNK not in ids
    assert source.vocab == Vocab.build(source.tokens(x) for x in en)


def test_cli_reports_errors_with_exit_2(tmp_path, capsys):
    prefix = write_pairs(tmp_path, "train", ["a", "b", "c"], ["x", "y"])
    code = main(["--train-prefix", str(prefix), "--src", "en", "--tgt", "vi", "--target-mode", "tokenized",
                 "--bert", str(require_path(SHARED_BERT_TF / "vocab.txt")), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: line counts differ") and "Traceback" not in err


def test_cli_runs_as_a_script(tmp_path):
    prefix = write_pairs(tmp_path, "train", ["a cat", "a dog"], ["mèo", "chó"])
    run = subprocess.run([sys.executable, str(REPO / "tools" / "prepare_data.py"), "--train-prefix", str(prefix),
                          "--src", "en", "--tgt", "vi", "--target-mode", "tokenized", "--bpe-merges", "10",
                          "--bert", str(require_path(SHARED_BERT_TF / "vocab.txt")), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(REPO)})     # as after `pip install -e .`
    assert run.returncode == 0, run.stderr
    assert "train           2     2" in run.stdout and (tmp_path / "o" / "meta.json").is_file()


@pytest.mark.slow
def test_demo_corpus_end_to_end(tmp_path):
    """The embedded demo (raw text, gzip) as train.py prepares it; decode gives the raw text back."""
    from nmt.data.prepare import prepare_demo
    from nmt.files import DEMO_DIR
    base = require_path(DEMO_DIR / "en-de")
    meta = prepare_demo(tmp_path / "demo", "en-de", bpe_merges=2000, print_fn=lambda s: None)
    target = TargetPipeline.from_dict(json.loads((tmp_path / "demo" / "target.json").read_text()))
    for split, name in (("train", "train"), ("valid", "dev"), ("test", "test")):
        de = lines_of(base / f"{name}.de.gz")
        info = meta["splits"][split]
        assert info["pairs"] + sum(info["dropped"].values()) == len(de)
        data = ParallelData(tmp_path / "demo", split, verify=True)
        rows = range(0, len(data), 7 if split == "train" else 1)
        exact = sum(target.decode(data.pair(i)[1]) == de[data.line_numbers[i] - 1] for i in rows)
        assert exact >= 0.97 * len(rows), (split, exact, len(rows))
    assert prepare_demo(tmp_path / "demo", "en-de", bpe_merges=2000, print_fn=lambda s: None) == meta  # cached


def test_bert_fit_report_counts_a_corpus_known_by_hand(tmp_path):
    """A tiny BERT (vocab.txt + bert_config.json with 8 positions: 6 pieces) so every number is known."""
    bert = tmp_path / "tiny-bert"
    bert.mkdir()
    (bert / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "mat",
                                               "##s", ".", "dog", "ran", "x", "##y"]) + "\n", encoding="utf-8")
    (bert / "bert_config.json").write_text(json.dumps({"max_position_embeddings": 8}), encoding="utf-8")
    en = ["the cat sat .",               # 4 pieces, 4 words
          "the cats sat on the mat",     # the cat ##s sat on the mat: 7 pieces > 6, 6 words; dropped as too long
          "the zebra ran",               # the [UNK] ran: 3 pieces, 3 words, 1 [UNK]
          "Dog xylophone .",             # dog [UNK] . (x ##y, then nothing matches: the whole word): 1 [UNK]
          ""]                            # empty: dropped, not counted
    train = write_pairs(tmp_path, "train", en, ["a", "b c", "d", "e", "f"])
    valid = write_pairs(tmp_path, "dev", ["xyyyy the"], ["g"])     # x ##y ##y ##y ##y the: 6 pieces, 2 words
    lines = []
    meta = prepare(tmp_path / "out", train_prefix=train, valid_prefix=valid, src="en", tgt="vi",
                   target_mode="tokenized", bert=bert, lowercase=True, bpe_merges=5, max_len=6, print_fn=lines.append)
    fit = meta["bert_fit"]
    assert fit["casing"].startswith("uncased") and fit["max_positions"] == 8
    t, v = fit["splits"]["train"], fit["splits"]["valid"]
    assert (t["lines"], t["pieces"], t["words"], t["unk"], t["lines_over_max_positions"]) == (4, 17, 16, 2, 1)
    assert t["unk_word_share"] == 2 / 16 and t["unk_piece_share"] == 2 / 17 and t["pieces_per_word"] == 17 / 16
    assert t["lines_over_share"] == 1 / 4
    assert (v["lines"], v["pieces"], v["words"], v["unk"], v["pieces_per_word"]) == (1, 6, 2, 0, 3.0)
    assert meta["splits"]["train"]["dropped"] == {"empty": 1, "too_long": 1}
    warnings = fit["warnings"]
    assert len(warnings) == 3, warnings
    assert warnings[0].startswith("warning: train 12.50% of source words became [UNK] (above 1.00%)")
    assert "--bert" in warnings[0] and "--cased" in warnings[0]
    assert warnings[1].startswith("warning: valid 3.00 word pieces per source word (above 2.50)")
    assert warnings[2].startswith("warning: train 25.00% of source lines exceed the encoder's 8 positions")
    printed = "\n".join(lines)
    assert "train: [UNK] 2 of 16 words (12.50%; 11.76% of 17 pieces), 1.06 pieces/word, 1 of 4 lines" in printed
    assert all(w in printed for w in warnings)
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["bert_fit"] == fit


def test_no_bert_fit_for_a_bpe_source_and_none_above_thresholds_on_real_text(tmp_path, iwslt_prepared):
    prefix = write_pairs(tmp_path, "train", ["a cat .", "the dog ."], ["eine Katze .", "der Hund ."])
    meta = prepare(tmp_path / "bpe", train_prefix=prefix, src="en", tgt="vi", target_mode="tokenized",
                   source_bpe=True, bpe_merges=10, print_fn=lambda s: None)
    assert meta["bert_fit"] is None and "BERT fit" not in meta["summary"]
    fit = json.loads((iwslt_prepared[0] / "meta.json").read_text())["bert_fit"]
    assert fit["warnings"] == [] and 1.0 < fit["splits"]["train"]["pieces_per_word"] < 1.5
