"""translate.py end to end on a tiny checkpoint built here (BERT-arch model + WordPiece source + BPE target)."""
import errno
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nmt.decode.beam_search import beam_search
from nmt.model.seq2seq import ModelSpec, build_model

# the text pipelines and the BERT encoder are other modules of this project; skip until present
text = pytest.importorskip("nmt.text.pipeline")
bert = pytest.importorskip("nmt.model.bert")
from nmt.text.bpe import BPE  # noqa: E402
from nmt.text.wordpiece import WordPieceTokenizer  # noqa: E402

SourcePipeline, TargetPipeline = text.SourcePipeline, text.TargetPipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # translate.py lives in the repo root
import translate  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py: tiny models run faster on one thread


WORDS = "the a cat dog sat on mat house is small big red".split()
TARGET_LINES = ["das ist ein Haus .", "die Katze sitzt auf der Matte .", "der Hund ist groß !"]


def make_checkpoint(path, max_positions=16):
    tok = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "!"] + WORDS + ["##s"])
    source = SourcePipeline.wordpiece(tok, max_positions=max_positions)
    target = TargetPipeline.build("raw", BPE([("a", "s"), ("d", "e"), ("i", "e")]), TARGET_LINES)
    cfg = bert.BertConfig(vocab_size=len(tok.vocab_tokens), hidden_size=16, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=32, max_position_embeddings=max_positions)
    spec = ModelSpec.bert(cfg, tgt_vocab_size=len(target.vocab), src_pad_id=tok.pad_id, num_layers=2)
    torch.manual_seed(0)
    model = build_model(spec)
    with torch.no_grad():
        model.decoder.output_projection.weight.mul_(4.0)   # peaky: short, input-dependent outputs
    state = {"format": "nmt-checkpoint/1", "model_spec": spec.to_dict(), "model": model.state_dict(),
             "source": source.to_dict(), "target": target.to_dict()}
    torch.save(state, path)
    return path


@pytest.fixture
def ckpt(tmp_path):
    return make_checkpoint(tmp_path / "tiny.pt")


def run(capsys, *argv):
    code = translate.main(["--quiet", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


SOURCE = ["the cat sat on the mat .", "", "a big red dog !", "dogs", "   ", "the house is small ."]


def test_translations_keep_line_count_order_and_empty_lines(tmp_path, ckpt, capsys):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(SOURCE) + "\n", encoding="utf-8")
    code, out, err = run(capsys, "--checkpoint", ckpt, "--input", src, "--beam", 4, "--batch-size", 2,
                         "--device", "cpu")
    assert code == 0, err
    lines = out.split("\n")[:-1]
    assert len(lines) == len(SOURCE)
    assert lines[1] == "" and lines[4] == ""
    # each line translated alone, through the library directly, gives the same text
    tr = translate.Translator.from_checkpoint(ckpt)
    for line, got in zip(SOURCE, lines):
        if not line.strip():
            continue
        ids = torch.tensor([tr.source.encode(line)])
        best = beam_search(tr.model, ids, torch.ones_like(ids, dtype=torch.bool), beam_size=4)[0][0]
        assert got == tr.target.decode(best.tokens)
    assert any(lines[i] for i in (0, 2, 3, 5))                 # not all empty


def test_stdin_stdout_output_file_and_greedy(tmp_path, ckpt, capsys, monkeypatch):
    import io
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\n".join(SOURCE).encode())))
    code, out, _ = run(capsys, "--checkpoint", ckpt, "--beam", 1)
    assert code == 0 and len(out.split("\n")[:-1]) == len(SOURCE)
    src, dst = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("\n".join(SOURCE), encoding="utf-8")
    assert run(capsys, "--checkpoint", ckpt, "--input", src, "--output", dst, "--beam", 1)[0] == 0
    assert dst.read_text(encoding="utf-8") == out


def test_nbest_output_format(tmp_path, ckpt, capsys):
    src = tmp_path / "in.txt"
    src.write_text("the cat .\na dog .\n", encoding="utf-8")
    code, out, _ = run(capsys, "--checkpoint", ckpt, "--input", src, "--beam", 4, "--nbest", 3)
    rows = [line.split(" ||| ") for line in out.splitlines()]
    assert code == 0 and [r[0] for r in rows] == ["0"] * 3 + ["1"] * 3
    scores = [float(r[2]) for r in rows[:3]]
    assert scores == sorted(scores, reverse=True)


def test_overlong_line_is_truncated_with_a_warning(tmp_path, ckpt, capsys):
    src = tmp_path / "in.txt"
    src.write_text("the cat .\n" + " ".join(["dog"] * 40) + "\n", encoding="utf-8")
    code, out, err = run(capsys, "--checkpoint", ckpt, "--input", src, "--beam", 2)
    assert code == 0 and len(out.splitlines()) == 2
    assert f"{src}:2: 42 source tokens" in err and "truncated" in err


def test_invalid_utf8_names_the_line(tmp_path, ckpt, capsys):
    src = tmp_path / "in.txt"
    src.write_bytes(b"the cat .\nthe \xff dog\n")
    code, out, err = run(capsys, "--checkpoint", ckpt, "--input", src)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and f"{src}:2: invalid UTF-8" in err and "Traceback" not in err


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tmp_path, ckpt, capsys):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(ckpt.read_bytes()[:1000])
    src = tmp_path / "in.txt"
    src.write_text("the cat .\n", encoding="utf-8")
    code, _, err = run(capsys, "--checkpoint", broken, "--input", src)
    assert code == 2 and err.startswith("error: ") and str(broken) in err
    code, _, err = run(capsys, "--checkpoint", tmp_path / "nope.pt", "--input", src)
    assert code == 2 and "nope.pt" in err
    bad = tmp_path / "bad.pt"
    state = torch.load(ckpt, weights_only=True)
    del state["target"]
    torch.save(state, bad)
    code, _, err = run(capsys, "--checkpoint", bad, "--input", src)
    assert code == 2 and "target" in err


def test_reference_prints_bleu_and_signature(tmp_path, ckpt, capsys):
    src, ref = tmp_path / "in.txt", tmp_path / "ref.txt"
    src.write_text("the cat .\na dog .\n", encoding="utf-8")
    code, out, _ = run(capsys, "--checkpoint", ckpt, "--input", src, "--beam", 2)
    ref.write_text(out, encoding="utf-8")                       # its own output as reference: BLEU 100
    code, out2, err = run(capsys, "--checkpoint", ckpt, "--input", src, "--beam", 2, "--reference", ref)
    assert code == 0 and out2 == out
    if out.strip():
        assert "BLEU = 100.00" in err
    assert "signature: nrefs:1" in err
    ref.write_text("only one line\n", encoding="utf-8")
    code, _, err = run(capsys, "--checkpoint", ckpt, "--input", src, "--reference", ref)
    assert code == 2 and "line counts differ" in err


def test_run_directory_uses_its_best_checkpoint(tmp_path, capsys):
    pytest.importorskip("nmt.weights.checkpoint")
    run_dir = tmp_path / "run"
    (run_dir / "decoder").mkdir(parents=True)
    make_checkpoint(run_dir / "decoder" / "checkpoint_best.pt")
    src = tmp_path / "in.txt"
    src.write_text("the cat .\n", encoding="utf-8")
    code, out, err = run(capsys, "--checkpoint", run_dir, "--input", src, "--beam", 2)
    assert code == 0 and len(out.splitlines()) == 1, err
    code, _, err = run(capsys, "--checkpoint", tmp_path, "--input", src)
    assert code == 2 and "no trained model found" in err


def test_pair_picks_the_demo_run_directory(tmp_path, capsys, monkeypatch):
    pytest.importorskip("nmt.weights.checkpoint")
    monkeypatch.setattr(translate, "DEFAULT_RUN", tmp_path / "demo-en-de")
    src = tmp_path / "in.txt"
    src.write_text("the cat .\n", encoding="utf-8")
    code, _, err = run(capsys, "--pair", "en-vi", "--input", src)
    assert code == 2 and "demo-en-vi" in err and "python train.py --pair en-vi" in err
    (tmp_path / "demo-en-vi" / "decoder").mkdir(parents=True)
    make_checkpoint(tmp_path / "demo-en-vi" / "decoder" / "checkpoint_best.pt")
    code, out, err = run(capsys, "--pair", "en-vi", "--input", src, "--beam", 2)
    assert code == 0 and len(out.splitlines()) == 1, err


def test_int8_translates_every_line_with_int8_layers_and_close_scores(tmp_path, ckpt, capsys):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(SOURCE) + "\n", encoding="utf-8")
    code, out, err = run(capsys, "--checkpoint", ckpt, "--input", src, "--beam", 4, "--int8", "--device", "cpu")
    assert code == 0, err
    lines = out.split("\n")[:-1]
    assert len(lines) == len(SOURCE) and lines[1] == "" and lines[4] == ""
    fp32, int8 = translate.Translator.from_checkpoint(ckpt), translate.Translator.from_checkpoint(ckpt, int8=True)
    assert {type(m).__name__ for m in int8.model.decoder.modules()} >= {"Int8Linear"}
    assert "Int8Linear" not in {type(m).__name__ for m in int8.model.encoder.modules()}   # BERT stays fp32
    assert not any(isinstance(m, torch.nn.Linear) for m in int8.model.modules())
    # the same hypothesis scored by both models: int8 stays within quantization error of fp32
    ids = torch.tensor([fp32.source.encode(SOURCE[0])])
    mask = torch.ones_like(ids, dtype=torch.bool)
    a = beam_search(fp32.model, ids, mask, beam_size=4)[0][0]
    b = beam_search(int8.model, ids, mask, beam_size=4)[0][0]
    assert a.score == pytest.approx(b.score, rel=0.1, abs=0.05)


def test_compute_type_bfloat16_translates_on_bf16_cpus_and_is_refused_elsewhere(tmp_path, ckpt, capsys, monkeypatch):
    from nmt.cpu import inference_linear
    src = tmp_path / "in.txt"
    src.write_text("\n".join(SOURCE) + "\n", encoding="utf-8")
    monkeypatch.setattr(inference_linear, "cpu_has_bf16", lambda: False)
    code, out, err = run(capsys, "--checkpoint", ckpt, "--input", src, "--compute-type", "bfloat16", "--device", "cpu")
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("error: --compute-type bfloat16: this CPU has no bfloat16 instructions")
    monkeypatch.setattr(inference_linear, "cpu_has_bf16", lambda: True)      # as on a CPU with AVX512-BF16 or AMX
    code, out, err = run(capsys, "--checkpoint", ckpt, "--input", src, "--compute-type", "bfloat16", "--beam", 4)
    assert code == 0 and len(out.split("\n")[:-1]) == len(SOURCE), err
    bf16 = translate.Translator.from_checkpoint(ckpt, compute_type="bfloat16")
    assert {type(m).__name__ for m in bf16.model.modules()} >= {"BFloat16Linear"}
    assert not any(isinstance(m, torch.nn.Linear) for m in bf16.model.modules())
    fp32 = translate.Translator.from_checkpoint(ckpt)
    ids = torch.tensor([fp32.source.encode(SOURCE[0])])
    mask = torch.ones_like(ids, dtype=torch.bool)
    a = beam_search(fp32.model, ids, mask, beam_size=4)[0][0]
    b = beam_search(bf16.model, ids, mask, beam_size=4)[0][0]
    assert a.score == pytest.approx(b.score, rel=0.05, abs=0.05)


def test_default_length_penalty_is_the_checkpoints_choice(tmp_path, ckpt, capsys):
    # a checkpoint with a dev-chosen length penalty (train.py --lenpen-grid) decodes with it unless --lenpen
    # is given; n-best scores are sum(log p) / len**lenpen, so they show which value was used
    from nmt.weights.checkpoint import update_checkpoint
    src = tmp_path / "in.txt"
    src.write_text("\n".join(SOURCE) + "\n", encoding="utf-8")
    nbest = ["--checkpoint", ckpt, "--input", src, "--beam", 4, "--nbest", 3]
    plain_default, plain_1, plain_2 = (run(capsys, *nbest, *extra)[1] for extra in ([], ["--lenpen", 1.0],
                                                                                     ["--lenpen", 2.0]))
    assert plain_default == plain_1 != plain_2                     # no stored choice: 1.0
    update_checkpoint(ckpt, decoding={"lenpen": 2.0, "chosen_on": "dev BLEU"})
    code, chosen_default, err = run(capsys, *nbest)
    assert code == 0, err
    assert chosen_default == plain_2 and run(capsys, *nbest, "--lenpen", 1.0)[1] == plain_1
    assert translate.Translator.from_checkpoint(ckpt).lenpen == 2.0
    update_checkpoint(ckpt, decoding={"lenpen": "long"})
    code, _, err = run(capsys, *nbest)
    assert code == 2 and "decoding.lenpen is 'long'" in err


def test_os_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, ckpt, capsys, monkeypatch):
    src = tmp_path / "in.txt"
    src.write_text("the cat sat .\n", encoding="utf-8")
    dst = tmp_path / "out.txt"
    dst.write_text("yesterday's translations\n", encoding="utf-8")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", full_disk)             # atomic_write's flush to disk fails as on a full disk
        code, out, err = run(capsys, "--checkpoint", ckpt, "--input", src, "--output", dst)
    assert code == 2 and err.startswith("error: ") and "No space left on device" in err and err.count("\n") == 1
    assert dst.read_text(encoding="utf-8") == "yesterday's translations\n"      # untouched: no partial file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.txt", "tiny.pt"]
    # a plain ValueError is a bug, not bad input: it is not turned into an error line
    def broken(self, *args, **kwargs):
        raise ValueError("a bug")
    monkeypatch.setattr(translate.Translator, "translate", broken)
    with pytest.raises(ValueError, match="a bug"):
        translate.main(["--quiet", "--checkpoint", str(ckpt), "--input", str(src)])


def test_output_that_cannot_be_written_fails_before_decoding(tmp_path, ckpt, capsys, monkeypatch):
    src = tmp_path / "in.txt"
    src.write_text("the cat sat .\n", encoding="utf-8")
    loaded = []
    monkeypatch.setattr(translate.Translator, "from_checkpoint", lambda *a, **k: loaded.append(a))
    cases = [(tmp_path / "no" / "such" / "x.txt", f"the directory {tmp_path / 'no' / 'such'} does not exist"),
             (tmp_path, "is a directory")]
    if os.geteuid() != 0:                                 # root may write anywhere
        (tmp_path / "ro").mkdir(mode=0o555)
        cases.append((tmp_path / "ro" / "x.txt", "is not writable"))
    for target, message in cases:
        code, out, err = run(capsys, "--checkpoint", ckpt, "--input", src, "--output", target)
        assert code == 2 and out == "" and err.startswith(f"error: --output {target}: ") and message in err
        assert err.count("\n") == 1
    assert not loaded and not (tmp_path / "no").exists()           # nothing loaded, nothing decoded


@pytest.mark.parametrize("flag, value", [("--lenpen", "nan"), ("--lenpen", "inf"), ("--max-len-a", "nan"),
                                         ("--max-len-a", "-1"), ("--beam", "-2"), ("--batch-size", "-1"),
                                         ("--max-tokens", "0")])
def test_numbers_that_make_no_sense_are_one_error_line(tmp_path, ckpt, capsys, flag, value):
    src = tmp_path / "in.txt"
    src.write_text("the cat sat .\n", encoding="utf-8")
    code, out, err = run(capsys, "--checkpoint", ckpt, "--input", src, flag, value)
    assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1
    assert flag in err and "Traceback" not in err


def test_a_device_that_is_not_there_is_one_error_line(tmp_path, ckpt, capsys, monkeypatch):
    src = tmp_path / "in.txt"
    src.write_text("the cat sat .\n", encoding="utf-8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)       # as with a CPU-only torch
    code, out, err = run(capsys, "--checkpoint", ckpt, "--input", src, "--device", "cuda")
    assert code == 2 and out == ""
    assert err == "error: --device cuda: CUDA is not available on this machine; use --device cpu\n"
    code, out, err = run(capsys, "--checkpoint", ckpt, "--input", src, "--device", "gpu0")
    assert code == 2 and err.startswith("error: --device gpu0: not a device") and err.count("\n") == 1


# ---------------------------------------------------------------- streaming (--buffer-size)

REPO = Path(__file__).resolve().parents[1]


def read_line_within(stream, seconds):
    """One line of a subprocess's stdout, or None if none comes within ``seconds``."""
    ready, _, _ = select.select([stream.fileno()], [], [], seconds)
    return stream.readline().decode() if ready else None


def test_a_pipe_that_stays_open_gets_each_translation_before_the_next_line(tmp_path, ckpt):
    lines = ["the cat sat on the mat .", "", "a big red dog !"]
    tr = translate.Translator.from_checkpoint(ckpt)
    expected = [tr.translate([line], beam=2)[0].text + "\n" for line in lines]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(REPO / "translate.py"), "--quiet", "--checkpoint", str(ckpt),
                             "--beam", "2", "--device", "cpu"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        for line, want in zip(lines, expected):
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()                       # the pipe stays open: no EOF tells it to start
            assert read_line_within(proc.stdout, 120) == want, proc.stderr.read1().decode()
        proc.stdin.close()
        assert proc.stdout.read() == b"" and proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_pipe_lines_are_ready_as_they_arrive():
    read, write = os.pipe()
    try:
        pipe = translate.PipeLines(read)
        assert translate.is_stream(os.fdopen(read, "rb", closefd=False))
        buffers = translate.read_buffers(translate.decode_lines(pipe, "<stdin>"), 2, pipe.ready)
        os.write(write, "\ufeffone\r\ntwo\nthr".encode())
        assert next(buffers) == [(1, "one"), (2, "two")]        # "thr" has no newline yet: not ready
        os.write(write, b"ee\n\nfive\nsix\nseven\n")
        assert next(buffers) == [(3, "three"), (4, "")]          # at most 2 lines a buffer
        assert next(buffers) == [(5, "five"), (6, "six")]
        assert next(buffers) == [(7, "seven")]                   # nothing more has arrived
        os.write(write, b"last")
        os.close(write)
        write = None
        assert next(buffers) == [(8, "last")] and next(buffers, None) is None
    finally:
        os.close(read)
        if write is not None:
            os.close(write)


def test_a_file_fills_whole_buffers(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("".join(f"{i}\n" for i in range(7)), encoding="utf-8")
    with open(path, "rb") as f:
        assert not translate.is_stream(f)
    numbered, ready, name = translate.open_input(str(path))
    assert [len(b) for b in translate.read_buffers(numbered, 3, ready)] == [3, 3, 1] and name == str(path)


@pytest.mark.parametrize("buffer", [1, 2, 5, None])
def test_buffered_output_equals_each_line_translated_alone(tmp_path, ckpt, capsys, buffer):
    lines = SOURCE + ["the dog is big .", "", " ".join(["dog"] * 40), "a cat ."]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sizes = [] if buffer is None else ["--buffer-size", buffer]
    code, out, err = run(capsys, "--checkpoint", ckpt, "--input", src, "--beam", 3,
                         "--batch-size", 2, *sizes)
    assert code == 0, err
    tr = translate.Translator.from_checkpoint(ckpt)
    assert out.split("\n")[:-1] == [tr.translate([line], beam=3)[0].text for line in lines]
    assert f"{src}:9: 42 source tokens" in err and err.count("truncated") == 1     # the input's line number
    code, nbest, _ = run(capsys, "--checkpoint", ckpt, "--input", src, "--beam", 3, "--nbest", 2, *sizes)
    rows = [r.split(" ||| ") for r in nbest.splitlines()]                # an empty line: one empty hypothesis
    assert [int(r[0]) for r in rows] == [i for i, line in enumerate(lines) for _ in range(2 if line.strip() else 1)]
    assert [r[1] for i, r in enumerate(rows) if i == 0 or rows[i - 1][0] != r[0]] == out.split("\n")[:-1]
    ref = tmp_path / "ref.txt"
    ref.write_text(out, encoding="utf-8")
    code, _, err = run(capsys, "--checkpoint", ckpt, "--input", src, "--beam", 3, "--reference", ref, *sizes)
    assert code == 0 and "signature: nrefs:1" in err and ("BLEU = 100.00" in err or not out.strip())


def test_stdin_reference_count_is_checked_at_the_end(tmp_path, ckpt, capsys, monkeypatch):
    import io
    ref = tmp_path / "ref.txt"
    ref.write_text("one\ntwo\nthree\n", encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"the cat .\na dog .\n")))
    code, out, err = run(capsys, "--checkpoint", ckpt, "--beam", 2, "--reference", ref, "--buffer-size", 1)
    assert code == 2 and len(out.splitlines()) == 2 and "line counts differ" in err


# ---------------------------------------------------------------- scoring given translations (--score-reference)

PAIRS = [("the house is small .", "das ist ein Haus ."), ("the cat sat on the mat .", "die Katze sitzt auf der Matte ."),
         ("the dog is big !", "der Hund ist groß !"), ("the cat is big .", "die Katze ist groß ."),
         ("the dog sat on the mat !", "der Hund sitzt auf der Matte !")]


def teacher_forced_by_hand(tr, source, target_ids, lenpen):
    """The model's log p of each target id and EOS, from one full forward pass: log_softmax, gather."""
    src = torch.tensor([tr.source.encode(source)])
    prev = torch.tensor([[1, *target_ids]])                                   # BOS + y
    with torch.no_grad():
        logits = tr.model(src, torch.ones_like(src, dtype=torch.bool), prev)  # [1,T,V]
    gold = torch.tensor([*target_ids, 2])                                     # y + EOS
    log_probs = torch.log_softmax(logits[0].double(), -1).gather(1, gold[:, None])[:, 0]
    return log_probs.tolist(), log_probs.sum().item() / len(gold) ** lenpen


def test_score_is_the_models_length_normalised_log_probability(ckpt):
    tr = translate.Translator.from_checkpoint(ckpt)
    sources = [s for s, _ in PAIRS] + ["a red dog"]
    targets = [t for _, t in PAIRS] + [""]                                    # an empty target: EOS alone
    for lenpen in (0.0, 0.6, 1.0):
        results = tr.score(sources, targets, lenpen=lenpen)
        for source, target, got in zip(sources, targets, results):
            ids = tr.target.encode(target)                                    # the training target pipeline
            log_probs, score = teacher_forced_by_hand(tr, source, ids, lenpen)
            assert got.tokens == tr.target.tokens(target) + ["</s>"] and len(got.log_probs) == len(ids) + 1
            assert got.log_probs == pytest.approx(log_probs, rel=1e-6, abs=1e-5)
            assert got.score == pytest.approx(score, rel=1e-6, abs=1e-5) and got.score < 0
    tr.lenpen = 0.6                                                           # None: the model's default
    assert [r.score for r in tr.score(sources, targets)] == [r.score for r in tr.score(sources, targets, lenpen=0.6)]


def test_beam_hypotheses_scored_get_their_beam_scores(ckpt):
    from nmt.decode.translator import teacher_forced_log_probs
    tr = translate.Translator.from_checkpoint(ckpt)
    for line in [s for s, _ in PAIRS]:
        ids = torch.tensor([tr.source.encode(line)])
        mask = torch.ones_like(ids, dtype=torch.bool)
        for lenpen in (0.5, 1.0):
            hyps = beam_search(tr.model, ids, mask, beam_size=4, nbest=4, lenpen=lenpen)[0]
            n = len(hyps)
            for h, log_probs in zip(hyps, teacher_forced_log_probs(tr.model, ids.repeat(n, 1), mask.repeat(n, 1),
                                                                   [h.tokens for h in hyps])):
                assert sum(log_probs) / len(log_probs) ** lenpen == pytest.approx(h.score, abs=1e-5)


def test_scores_do_not_depend_on_batching(ckpt):
    tr = translate.Translator.from_checkpoint(ckpt)
    sources = [s for s, _ in PAIRS] * 2 + ["", "dogs"]
    targets = [t for _, t in PAIRS] + [t for _, t in reversed(PAIRS)] + ["", "Hund"]
    alone = [tr.score([s], [t])[0].score for s, t in zip(sources, targets)]
    for batch_size, max_tokens in ((1, None), (3, None), (64, 20), (64, 4000)):
        got = [r.score for r in tr.score(sources, targets, batch_size=batch_size, max_tokens=max_tokens)]
        assert got == pytest.approx(alone, abs=1e-5)
    assert alone[-2] == 0.0                                                   # an empty line, as translate gives it


def test_score_errors_name_the_line(ckpt):
    tr = translate.Translator.from_checkpoint(ckpt)
    with pytest.raises(translate.TranslateError, match=r"src:2 is empty but tgt:2 is not"):
        tr.score(["the cat .", " "], ["die Katze .", "Katze"], name="src", target_name="tgt")
    with pytest.raises(translate.TranslateError, match=r"tgt:1: 1100 target tokens, more than the 1023"):
        tr.score(["the cat ."], ["t" * 1100], name="src", target_name="tgt")
    with pytest.raises(translate.TranslateError, match=r"src has 2 lines, tgt has 1"):
        tr.score(["the cat .", "a dog"], ["die Katze ."], name="src", target_name="tgt")
    warnings = []
    tr.score(["the cat .", " ".join(["dog"] * 40)], ["Katze", "Hund"], warn=warnings.append)
    assert len(warnings) == 1 and "<input>:2: 42 source tokens" in warnings[0]   # truncated, as translate does


def test_score_reference_writes_one_score_per_line(tmp_path, ckpt, capsys, monkeypatch):
    import io
    from nmt.weights.checkpoint import update_checkpoint
    update_checkpoint(ckpt, decoding={"lenpen": 0.6, "chosen_on": "dev BLEU"})
    sources = SOURCE                                                          # lines 2 and 5 are empty
    targets = ["die Katze sitzt .", "", "der Hund !", "Hunde", "", "das Haus ist klein ."]
    src, ref, dst = tmp_path / "in.txt", tmp_path / "ref.txt", tmp_path / "out.txt"
    src.write_text("\n".join(sources) + "\n", encoding="utf-8")
    ref.write_text("\n".join(targets) + "\n", encoding="utf-8")
    one = ["--batch-size", 1]                     # one line per batch: the same sums whatever the buffers
    code, out, err = run(capsys, "--checkpoint", ckpt, "--input", src, "--score-reference", ref, *one)
    assert code == 0, err
    expected = translate.Translator.from_checkpoint(ckpt).score(sources, targets)        # lenpen 0.6, stored
    lines = out.splitlines()
    assert [float(x) for x in lines] == pytest.approx([r.score for r in expected], rel=1e-6, abs=1e-5)
    assert len(lines) == len(sources) and lines[1] == lines[4] == "0.000000" and lines[0] != "0.000000"
    assert run(capsys, "--checkpoint", ckpt, "--input", src, "--score-reference", ref, "--lenpen", 1.0)[1] != out
    assert run(capsys, "--checkpoint", ckpt, "--input", src, "--score-reference", ref, "--output", dst, *one)[0] == 0
    assert dst.read_text(encoding="utf-8") == out
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\n".join(sources).encode())))
    assert run(capsys, "--checkpoint", ckpt, "--score-reference", ref, "--buffer-size", 4, *one)[1] == out


def test_score_reference_line_counts_must_agree(tmp_path, ckpt, capsys, monkeypatch):
    import io
    src, ref, dst = tmp_path / "in.txt", tmp_path / "ref.txt", tmp_path / "out.txt"
    src.write_text("the cat .\na dog .\nthe mat .\n", encoding="utf-8")
    ref.write_text("Katze\nHund\n", encoding="utf-8")
    with monkeypatch.context() as m:                                          # a file is counted before loading
        m.setattr(translate.Translator, "from_checkpoint", lambda *a, **k: pytest.fail("loaded"))
        code, out, err = run(capsys, "--checkpoint", ckpt, "--input", src, "--score-reference", ref)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err == f"error: line counts differ: {src} has 3 lines, {ref} has 2; --score-reference needs one " \
                  "translation per input line\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"the cat .\na dog .\nthe mat .\n")))
    code, out, err = run(capsys, "--checkpoint", ckpt, "--score-reference", ref, "--output", dst)
    assert code == 2 and not dst.exists() and f"<stdin> has more than 2 lines, {ref} has 2" in err
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"the cat .\n")))
    code, out, err = run(capsys, "--checkpoint", ckpt, "--score-reference", ref)
    assert code == 2 and f"<stdin> has 1 lines, {ref} has 2" in err


@pytest.mark.parametrize("flags, named", [
    (["--sampling"], "--sampling"), (["--nbest", "2"], "--nbest"), (["--beam", "4"], "--beam"),
    (["--seed", "1"], "--seed"), (["--no-repeat-ngram-size", "2"], "--no-repeat-ngram-size"),
    (["--reference", "ref.txt"], "--reference"),
])
def test_score_reference_refuses_search_options(tmp_path, ckpt, capsys, monkeypatch, flags, named):
    src = tmp_path / "in.txt"
    src.write_text("the cat sat .\n", encoding="utf-8")
    monkeypatch.setattr(translate.Translator, "from_checkpoint", lambda *a, **k: pytest.fail("loaded"))
    code, out, err = run(capsys, "--checkpoint", ckpt, "--input", src, "--score-reference", src, *flags)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("error: --score-reference scores the given translations") and named in err


def test_help_states_the_score_references_formula(capsys):
    with pytest.raises(SystemExit):
        translate.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--score-reference FILE score the translations in FILE" in text
    assert "sum(log p(token)) / len**lenpen over the tokens and EOS, len counting EOS" in text


def train_on_pairs(path, steps=200):
    """The tiny checkpoint, trained until it has learned PAIRS (full batch, Adam, no dropout)."""
    make_checkpoint(path)
    state = torch.load(path)
    model = build_model(ModelSpec.from_dict(state["model_spec"]))
    model.load_state_dict(state["model"])
    source, target = SourcePipeline.from_dict(state["source"]), TargetPipeline.from_dict(state["target"])
    src_ids = [source.encode(s) for s, _ in PAIRS]
    tgt_ids = [target.encode(t) for _, t in PAIRS]
    src = torch.zeros(len(PAIRS), max(map(len, src_ids)), dtype=torch.long)
    prev = torch.zeros(len(PAIRS), max(map(len, tgt_ids)) + 1, dtype=torch.long)
    gold = torch.zeros_like(prev)
    for row, (s, t) in enumerate(zip(src_ids, tgt_ids)):
        src[row, :len(s)] = torch.tensor(s)
        prev[row, :len(t) + 1] = torch.tensor([1, *t])
        gold[row, :len(t) + 1] = torch.tensor([*t, 2])
    model.eval()                                                              # no dropout: it learns fast
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss, _ = model(src, src != 0, prev, target=gold, label_smoothing=0.0)
        loss.backward()
        opt.step()
    state["model"] = model.state_dict()
    torch.save(state, path)
    return path


def test_a_trained_model_ranks_its_own_translations_above_shuffled_references(tmp_path, capsys):
    ckpt = train_on_pairs(tmp_path / "trained.pt")
    sources, references = [s for s, _ in PAIRS], [t for _, t in PAIRS]
    src, own, ref, shuffled = (tmp_path / f"{name}.txt" for name in ("in", "own", "ref", "shuffled"))
    src.write_text("\n".join(sources) + "\n", encoding="utf-8")
    code, out, err = run(capsys, "--checkpoint", ckpt, "--input", src, "--beam", 4, "--nbest", 2, "--max-len-b", 30)
    assert code == 0, err
    rows = [line.split(" ||| ") for line in out.splitlines()]
    best = [next(r for r in rows if r[0] == str(i)) for i in range(len(sources))]       # n-best: best first
    own.write_text("".join(r[1] + "\n" for r in best), encoding="utf-8")
    ref.write_text("\n".join(references) + "\n", encoding="utf-8")
    shuffled.write_text("\n".join(references[1:] + references[:1]) + "\n", encoding="utf-8")   # another line's
    scores = {}
    for path in (own, ref, shuffled):
        code, out, err = run(capsys, "--checkpoint", ckpt, "--input", src, "--score-reference", path)
        assert code == 0, err
        scores[path.stem] = [float(x) for x in out.splitlines()]
    assert all(o > s for o, s in zip(scores["own"], scores["shuffled"])), scores
    assert all(r > s for r, s in zip(scores["ref"], scores["shuffled"])), scores
    # where it learned the reference, its translation, scored as text, gets the beam score translate wrote
    learned = [i for i, r in enumerate(best) if r[1] == references[i]]
    assert len(learned) >= 3, best
    assert [scores["own"][i] for i in learned] == pytest.approx([float(best[i][2]) for i in learned], abs=2e-4)


# ---------------------------------------------------------------- --sampling, --no-repeat-ngram-size

def test_sampling_is_reproducible_per_line_whatever_the_buffers(tmp_path, ckpt, capsys):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(SOURCE) + "\n", encoding="utf-8")
    base = ["--checkpoint", ckpt, "--input", src, "--sampling", "--temperature", 3]
    code, first, err = run(capsys, *base, "--seed", 5)
    assert code == 0, err
    assert len(first.split("\n")[:-1]) == len(SOURCE) and first.split("\n")[1] == ""
    assert run(capsys, *base, "--seed", 5, "--buffer-size", 1, "--batch-size", 1)[1] == first
    assert run(capsys, *base, "--seed", 6)[1] != first
    tr = translate.Translator.from_checkpoint(ckpt)
    api = tr.translate(SOURCE, sampling=True, temperature=3.0, seed=5)
    assert [r.text for r in api] == first.split("\n")[:-1]
    # line 3 alone, told its place in the input, draws what it drew among the others
    assert tr.translate([SOURCE[2]], sampling=True, temperature=3.0, seed=5, first_line=3)[0].text == api[2].text
    greedy = run(capsys, "--checkpoint", ckpt, "--input", src, "--beam", 1)[1]
    assert run(capsys, *base[:-2], "--sampling-topk", 1)[1] == greedy


def test_sampling_nbest_draws_beam_samples_per_line(tmp_path, ckpt, capsys):
    src = tmp_path / "in.txt"
    src.write_text("the cat .\na dog .\n", encoding="utf-8")
    code, out, err = run(capsys, "--checkpoint", ckpt, "--input", src, "--sampling", "--beam", 5, "--nbest", 3,
                         "--temperature", 2, "--seed", 1)
    rows = [line.split(" ||| ") for line in out.splitlines()]
    assert code == 0 and [r[0] for r in rows] == ["0"] * 3 + ["1"] * 3, err
    for i in (0, 3):
        scores = [float(r[2]) for r in rows[i:i + 3]]
        assert scores == sorted(scores, reverse=True)
    code, out, _ = run(capsys, "--checkpoint", ckpt, "--input", src, "--sampling", "--nbest", 2, "--seed", 1)
    assert code == 0 and len(out.splitlines()) == 4                # --nbest 2 alone: 2 samples per line


def test_no_repeat_ngram_size_reaches_the_search(tmp_path, ckpt, capsys):
    lines = [line for line in SOURCE if line.strip()]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tr = translate.Translator.from_checkpoint(ckpt)
    for beam in (1, 4):
        code, out, err = run(capsys, "--checkpoint", ckpt, "--input", src, "--beam", beam, "--no-repeat-ngram-size", 1)
        assert code == 0, err
        for line, got in zip(lines, out.splitlines()):
            ids = torch.tensor([tr.source.encode(line)])
            best = beam_search(tr.model, ids, torch.ones_like(ids, dtype=torch.bool), beam_size=beam,
                               no_repeat_ngram_size=1)[0][0]
            assert got == tr.target.decode(best.tokens) and len(set(best.tokens)) == len(best.tokens)


@pytest.mark.parametrize("flags, named", [
    (["--buffer-size", "0"], "--buffer-size"), (["--no-repeat-ngram-size", "-1"], "--no-repeat-ngram-size"),
    (["--sampling-topk", "3"], "--sampling"), (["--seed", "1"], "--seed"), (["--temperature", "0.5"], "--sampling"),
    (["--sampling", "--sampling-topk", "0"], "--sampling-topk"),
    (["--sampling", "--sampling-topp", "1.5"], "--sampling-topp"),
    (["--sampling", "--sampling-topp", "nan"], "--sampling-topp"),
    (["--sampling", "--temperature", "0"], "--temperature"), (["--sampling", "--temperature", "inf"], "--temperature"),
    (["--sampling", "--sampling-topk", "2", "--sampling-topp", "0.5"], "give one of them"),
    (["--sampling", "--beam", "2", "--nbest", "3"], "--nbest"), (["--beam", "1", "--nbest", "2"], "--nbest"),
])
def test_new_options_that_make_no_sense_are_one_error_line(tmp_path, ckpt, capsys, monkeypatch, flags, named):
    src = tmp_path / "in.txt"
    src.write_text("the cat sat .\n", encoding="utf-8")
    monkeypatch.setattr(translate.Translator, "from_checkpoint", lambda *a, **k: pytest.fail("loaded"))
    code, out, err = run(capsys, "--checkpoint", ckpt, "--input", src, *flags)
    assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1
    assert named in err and "Traceback" not in err


def test_help_names_the_new_options(capsys):
    with pytest.raises(SystemExit):
        translate.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--buffer-size N translate the input N lines at a time", "--sampling sample translations",
                 "--sampling-topk K", "--sampling-topp P", "--temperature", "--seed",
                 "--no-repeat-ngram-size N no hypothesis may repeat an N-gram"):
        assert flag in text
