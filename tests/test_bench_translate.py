"""tools/maintainers/bench_translate.py --json: one row per system, compute type and setting (nmt alone,
tiny run)."""
import json

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
