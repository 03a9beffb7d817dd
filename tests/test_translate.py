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
