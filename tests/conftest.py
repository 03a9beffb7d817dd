"""Shared test fixtures: paths to the read-only data in ../shared/ and the repo's demo data."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_BERT_TF = SHARED / "bert" / "minilm-l6-h384-uncased-tf"
SHARED_IWSLT = SHARED / "iwslt15-en-vi"


def require_path(path: Path) -> Path:
    """Skip the calling test, with the reason, when read-only shared data is absent."""
    if not path.exists():
        pytest.skip(f"{path} is absent (shared data is only on developer and CI machines)")
    return path


def linked_copy(src: Path, dest: Path) -> Path:
    """``src`` (a directory, e.g. a BERT model) under another name, its files as symlinks."""
    dest.mkdir()
    for f in src.iterdir():
        (dest / f.name).symlink_to(f.resolve())
    return dest


@pytest.fixture
def bert_vocab_path() -> Path:
    return require_path(SHARED_BERT_TF / "vocab.txt")


@pytest.fixture
def iwslt_dir() -> Path:
    return require_path(SHARED_IWSLT)


@pytest.fixture
def one_thread():
    """One torch thread for tests of tiny models: thread start-up costs more than it saves, badly so
    on a busy 2-core machine. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mount_tmpfs(where: Path, size: str) -> bool:
    """A small tmpfs at ``where`` (a full disk on demand, for the disk-full tests); False where this
    process may not mount one (not root, or no mount command), and the test then skips."""
    import subprocess
    where.mkdir(parents=True, exist_ok=True)
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True).returncode == 0
    except OSError:
        return False


def save_tiny_bert(path: Path, layers: int = 1, positions: int = 128, hidden: int = 32, heads: int = 2,
                   intermediate: int = 64) -> Path:
    """A tiny random BERT (by default width 32, 2 heads, FFN 64; seed 0) with the installed MiniLM's
    real vocabulary, saved as a native file at ``path``: the encoder of the fast end-to-end tests
    (``layers=6, hidden=384, heads=12, intermediate=1536``: the demo BERT's shape)."""
    import torch
    from nmt.model.bert import BertConfig, BertEncoder
    from nmt.text.wordpiece import WordPieceTokenizer, default_vocab_path
    from nmt.weights.pretrained import NativeBert, save_native
    vocab = WordPieceTokenizer.from_file(default_vocab_path()).vocab_tokens
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate, max_position_embeddings=positions)
    save_native(NativeBert(config, BertEncoder(config).state_dict(), vocab, True, "tiny random BERT"), path)
    return path
