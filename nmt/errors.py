"""Every error nmt raises on purpose derives from :class:`NmtError` (a ValueError): entry points catch
that one type and print one ``error:`` line, so anything else -- a bug -- keeps its traceback.
Each message names the file (and line) and what to do. Stopping on SIGTERM or SIGHUP as on Ctrl-C
(:class:`StopSignal`, a KeyboardInterrupt, not an error) lives here too, for every entry point.
"""
import signal
import threading


class NmtError(ValueError):
    """Bad input, a bad file or a run that cannot go on: something the user can fix."""


class VocabError(NmtError):
    """A vocabulary file or list that cannot be used."""


class ModelSpecError(NmtError):
    """A model spec (usually from a checkpoint) that cannot be built."""


class WordPieceError(NmtError):
    """A vocabulary or an input that the WordPiece tokenizer cannot use."""


class ConfigError(NmtError):
    """An invalid combination of training options."""


class DataError(NmtError):
    """Bad input data or a missing, truncated or corrupt data directory; the message names the file."""


class TrainingError(NmtError):
    """Training cannot start or continue (bad data, no checkpoint to resume or fine-tune, NaN)."""


class CheckpointError(NmtError):
    """A checkpoint -- a training snapshot or pre-trained BERT weights and config -- that is missing,
    truncated, corrupt, not one of ours, or does not fit the model; the message names the file."""


class EvaluationError(NmtError):
    """Bad evaluation input: names the file (and line) and what to do."""


class BPEError(NmtError):
    """Bad BPE input: a malformed codes file, undecodable text, or invalid arguments."""


class TranslateError(NmtError):
    """Bad input to translation: names the file (and line) and what to do."""


class ExportError(NmtError):
    """A model that cannot be written for another engine (CTranslate2): its package missing, a tensor
    the export does not know, an output directory in the way."""


class DistributedError(NmtError):
    """A bad torchrun environment (RANK without WORLD_SIZE, a rank outside the world, no GPU for a rank)."""


class DivergedError(TrainingError):
    """The training loss became NaN or infinite: the run diverged (a result, not an input error)."""


def error_line(e: BaseException) -> str:
    """The one line an entry point prints for a user error (:class:`NmtError`) or an OS error (a full
    disk, a permission, a missing directory), before it exits with status 2.

    >>> error_line(DataError("train.en:3: empty line"))
    'error: train.en:3: empty line'
    >>> import errno, os
    >>> error_line(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "run/checkpoint_last.pt"))
    'error: run/checkpoint_last.pt: No space left on device (free some space, then run the same command again)'
    """
    if isinstance(e, OSError) and not isinstance(e, NmtError):
        where = f"{e.filename}: " if e.filename else ""
        what = e.strerror or str(e)
        hint = {28: " (free some space, then run the same command again)",
                13: " (check the file's permissions or choose another path)"}.get(e.errno or 0, "")
        return f"error: {where}{what}{hint}"
    return f"error: {e}"


# ---- stopping on a signal: shared by the training loop (nmt/train/run_state.py) and the entry points

class StopSignal(KeyboardInterrupt):
    """Stop at once: SIGTERM or SIGHUP outside the training loop (:func:`raise_on_stop_signals`, as Ctrl-C
    raises KeyboardInterrupt), a second Ctrl-C inside it, or a run the loop saved and stopped on a
    signal (tools/run_experiments.py stops its study with it). A KeyboardInterrupt, so no ``except
    Exception`` swallows it and every ``finally`` runs (atomic_write removes its temporary file);
    ``signum`` gives the exit status, 128 + it."""

    def __init__(self, signum: int):
        super().__init__(signal_name(signum))
        self.signum = signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def raise_on_stop_signals() -> dict:
    """For entry points, until :func:`restore_signals` of what this returns: SIGTERM and SIGHUP raise
    StopSignal, as Ctrl-C raises KeyboardInterrupt, wherever the training loop does not save first (set-up,
    the length-penalty choice, evaluation). One ignored at start (nohup) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):
        raise StopSignal(signum)
    return {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)
            if signal.getsignal(s) is not signal.SIG_IGN}


def restore_signals(previous: dict) -> None:
    """Put back the handlers :func:`raise_on_stop_signals` (or a training loop) replaced."""
    for signum, handler in previous.items():
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)
