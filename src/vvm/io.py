"""Atomic file writes, the process that writes them, and the on-disk form of a CKA result (cka.npz,
result.json)."""

from __future__ import annotations

import contextlib
import glob
import io
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import numpy as np


def temporary_path(path: str | os.PathLike) -> Path:
    """A hidden sibling of ``path``, unique to this process, ending in ``path``'s suffix (some writers read the
    format off the name), for write-then-rename: ``.<name>.<host>-<pid>.tmp<suffix>``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{_host()}-{os.getpid()}.tmp{path.suffix}")


def _host() -> str:
    return re.sub(r"[^\w]", "_", socket.gethostname()) or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


# a temporary file of another host (a shared file system) is left alone unless it is older than this
FOREIGN_TMP_AGE_S = 24 * 3600


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of ``path`` (see :func:`temporary_path`) that a killed process left
    behind: those of this host whose process is gone, and those of other hosts not touched for a day.
    Returns what was removed."""
    path = Path(path)
    removed = []
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:(?P<host>\w+)-)?(?P<pid>\d+)\.tmp")
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp*"):
        m = pattern.match(tmp.name)
        if m is None or int(m["pid"]) == os.getpid():
            continue
        ours = m["host"] in (None, _host())
        try:
            stale = (
                not _pid_alive(int(m["pid"]))
                if ours
                else time.time() - tmp.stat().st_mtime > FOREIGN_TMP_AGE_S
            )
            if stale:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            continue
    return removed


# What the libraries below vvm say that no vvm user can act on, each matched by its own text, filtered while a
# job runs (not process-wide, and never by silencing a library: W&B's own hints, such as `wandb sync`, stay)
NOISE_WARNINGS = (
    # torch 2.9+ deprecates LeafSpec, which Lightning's own _pytree still checks for on every batch
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    # a short training (train=demo, dataset.limit) has fewer steps per epoch than Lightning's logging interval;
    # vvm logs the epoch values anyway
    (UserWarning, r"The number of training batches \(\d+\) is smaller than the logging interval"),
)
NOISE_LOG = (("pytorch_lightning.utilities.rank_zero", "💡 Tip: For seamless cloud logging"),)  # an advert


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefix)


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    """While a job runs: :data:`NOISE_WARNINGS` ignored and the :data:`NOISE_LOG` messages dropped from their
    loggers; everything else, and every warning of vvm's own, still reaches the console and the job's log."""
    filters = [(logging.getLogger(name), _DropPrefix(prefix)) for name, prefix in NOISE_LOG]
    with warnings.catch_warnings():
        for category, message in NOISE_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        for logger, f in filters:
            logger.addFilter(f)
        try:
            yield
        finally:
            for logger, f in filters:
                logger.removeFilter(f)


def host_reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds; through the proxy when
    ``HTTPS_PROXY``/``https_proxy`` names one (the connection the libraries would make first)."""
    from urllib.parse import urlsplit

    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlsplit(proxy if proxy else url)
    host = target.hostname
    port = target.port or (443 if target.scheme == "https" else 80)
    if not host:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: str | os.PathLike) -> None:
    """Give ``path`` the mode a plain ``open()`` would: ``0o666 & ~umask`` (some writers create 0600 files)."""
    os.chmod(path, 0o666 & ~current_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` (never a half file), after
    an ``fsync`` of what was written when asked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        honour_umask(tmp)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a quota, a file-size limit: name the file (writers often do not)
        if e.errno is None or e.filename == str(path):
            raise
        raise OSError(e.errno, f"could not write {path.name} ({e.strerror})", str(path)) from e
    finally:
        if tmp.exists():
            tmp.unlink()


def is_rank_zero() -> bool:
    """Whether this process is the one that writes files and logs (rank 0, or the only process)."""
    from pytorch_lightning.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_bytes(
        path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode()
    )


def load_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def write_npz(path: str | os.PathLike, **arrays: Any) -> Path:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return write_bytes(path, buf.getvalue())


def save_result(path: str | os.PathLike, res: Any, **extra: Any) -> Path:
    """A result of vvm.cka (CKA's, or another measure's) as its npz file: ``res.arrays(**extra)``."""
    return write_npz(path, **res.arrays(**extra))


class InputError(ValueError):
    """A file, directory or flag given to a command that it cannot use; the message names it and the way out."""


def exit_with_error(prog: str, message: object, code: int = 2) -> NoReturn:
    """A command line's answer to an input it cannot use: one line on stderr, ``<prog>: error: <message>``, and
    exit status 2, as argparse answers a bad flag (the usage is left out: the message names what to change)."""
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def writable_dir(path: str | Path, key: str, *, need_bytes: int = 0) -> Path:
    """Make ``path`` (a directory) if needed and write a file there; an :class:`InputError` names ``key`` and
    the path. With ``need_bytes``, the file system must also have that much room. (No torch: a command line
    checks its output folder with it before the heavy imports.)"""
    path = Path(path).expanduser()
    fix = f"set {key} to a folder you can write to"
    if path.exists() and not path.is_dir():
        raise InputError(f"{key}={str(path)!r} is a file, not a directory: {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".vvm-write-check-"):
            pass
    except OSError as e:
        raise InputError(f"{key}={str(path)!r} is not writable ({type(e).__name__}: {e}): {fix}") from None
    free = shutil.disk_usage(path).free
    if need_bytes and free < need_bytes:
        raise InputError(
            f"{key}={str(path)!r} has {free / 2**20:.0f} MiB free, and this job writes about "
            f"{need_bytes / 2**20:.0f} MiB there: free some space or {fix}"
        )
    return path


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, busy: str) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``path`` (created, holding this process's id) while the block runs; the
    system releases it when the block ends, on an error too, and when the process dies. Taken already (by
    another process, or another open of it here): :class:`InputError` ``busy``, with the holder's pid."""
    import fcntl

    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise InputError(f"{busy} (pid {holder}, lock {path})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)


class UnreadableFile(InputError):
    """A result file that is missing, damaged (truncated, corrupt) or not what vvm writes; the message is vvm's
    own and names the file (never a library's advice to load it unsafely)."""


# what reading a damaged .npz can raise: truncated (BadZipFile, EOFError), corrupt (zlib.error), not an npz
# (ValueError), a member missing (KeyError), gone or unreadable (OSError)
NPZ_DAMAGE = (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, zlib.error)


def load_npz(path: str | os.PathLike) -> dict[str, Any]:
    """cka.npz as a dict of numpy arrays; string scalars come back as ``str``. :class:`UnreadableFile` naming
    the file when it is missing, damaged or holds pickled objects (never loaded: they could run code)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            out: dict[str, Any] = {}
            for k in z.files:
                v = z[k]
                out[k] = v.item() if v.ndim == 0 else v
            return out
    except FileNotFoundError:
        raise UnreadableFile(f"{path} is missing") from None
    except NPZ_DAMAGE as e:
        why = (
            "holds pickled Python objects, which vvm never loads (a file vvm did not write)"
            if "pickle" in str(e)
            else f"is damaged or not an .npz file ({type(e).__name__})"
        )
        raise UnreadableFile(f"{path} {why}") from None


def write_rdms(path: Path, measure: Any, res: Any, indices: list[int] | None) -> Path | None:
    """``rdms.npz``: RSA's RDM of every layer on the first pool, in rsatoolbox's vector form (``dissimilarities``
    ``[L, n(n-1)/2]``, the pairs ``i < j`` row after row), with ``layers`` (its ``rdm_descriptors``),
    ``indices`` (the examples' indices in the split, its ``pattern_descriptors``) and ``dissimilarity_measure``:
    ``rsatoolbox.rdm.RDMs(z["dissimilarities"], dissimilarity_measure=..., rdm_descriptors={"layer": ...},
    pattern_descriptors={"index": ...})``. None when no pool was kept (a rank without the first pool)."""
    rdms = getattr(measure, "first_rdms", None)
    if not rdms:
        return None
    layers = list(res.layers_x) + (list(res.layers_y) if len(rdms) > 1 else [])
    d = np.concatenate([np.asarray(r.detach().cpu(), dtype=np.float64) for r in rdms])
    n = int(round((1 + (1 + 8 * d.shape[1]) ** 0.5) / 2))
    return write_npz(
        path,
        dissimilarities=d,
        layers=np.array(layers, dtype=str),
        indices=np.asarray(indices if indices is not None else range(n))[:n],
        dissimilarity_measure=np.array(measure.params.distance),
        n=np.array(n),
    )
