"""tools/maintainers/bench_translate.py --json: one row per system, compute type and setting (tiny runs:
nmt alone, then with nmt's model exported to CTranslate2)."""
import json
import sys
from importlib.util import find_spec

import pytest

from tools.maintainers import bench_translate


def test_json_rows_for_fp32_and_int8(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    assert bench_translate.main(["--threads", "1", "--no-hf", "--no-ctranslate2", "--repeats", "1",
                                 "--settings", "2x1,1x2", "--sentences", "2", "--sentences-batch1", "1",
                                 "--src-len", "4", "--tgt-len", "2", "--json", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["system"], r["compute_type"], r["beam"], r["batch"]) for r in rows] == [
        ("nmt", "float32", 2, 1), ("nmt", "int8", 2, 1), ("nmt", "float32", 1, 2), ("nmt", "int8", 1, 2)]
    assert all(set(r) == {"system", "compute_type", "beam", "batch", "sent_per_s", "gflops", "peak_gflops"}
               and r["sent_per_s"] > 0 and r["gflops"] > 0 for r in rows)
    # FLOPs and time are the same run's: GFLOP/s / sentences/s is the FLOPs per sentence, the same for
    # both compute types of a setting (the work is counted on the fp32 model)
    per_sentence = [r["gflops"] / r["sent_per_s"] for r in rows]
    assert per_sentence[0] == pytest.approx(per_sentence[1], rel=0.05)
    assert all(r["peak_gflops"] > 0 for r in rows)
    assert "wrote 4 rows" in capsys.readouterr().out


@pytest.mark.skipif(find_spec("ctranslate2") is None, reason="ctranslate2 is not installed (pip install ctranslate2)")
def test_nmt_exported_to_ctranslate2_is_timed(tmp_path, capsys):
    """nmt-ct2: the benchmark's model through export_ctranslate2 and ctranslate2.Translator, one row per
    compute type CTranslate2 has on the CPU; one it lacks (float16) is skipped with a note."""
    out = tmp_path / "bench.jsonl"
    assert bench_translate.main(["--threads", "1", "--no-hf", "--no-ct2-bart", "--repeats", "1",
                                 "--compute-types", "float32,int8,float16", "--settings", "2x1",
                                 "--sentences", "2", "--sentences-batch1", "1", "--src-len", "4",
                                 "--tgt-len", "2", "--json", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["system"], r["compute_type"]) for r in rows] == [
        ("nmt", "float32"), ("nmt", "int8"), ("nmt-ct2", "float32"), ("nmt-ct2", "int8")]
    assert all(r["sent_per_s"] > 0 and r["gflops"] > 0 for r in rows)
    assert "has no float16 on cpu" in capsys.readouterr().out


def test_without_ctranslate2_its_systems_are_skipped_with_a_note(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)          # import ctranslate2 -> ImportError
    out = tmp_path / "bench.jsonl"
    assert bench_translate.main(["--threads", "1", "--no-hf", "--repeats", "1", "--compute-types", "float32",
                                 "--settings", "1x1", "--sentences-batch1", "1", "--src-len", "4", "--tgt-len", "2",
                                 "--json", str(out)]) == 0
    assert [json.loads(line)["system"] for line in out.read_text().splitlines()] == ["nmt"]
    assert "ctranslate2 is not installed" in capsys.readouterr().out
