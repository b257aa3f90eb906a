"""Datasets: download, verify, cache.

Tiny Shakespeare (the corpus of char-rnn and nanoGPT) is found, in order:
1. in the directory named by the environment variable ONEHOT_DATA_DIR
   (as `tinyshakespeare/input.txt` or directly as `input.txt`),
2. in the local cache (ONEHOT_CACHE_DIR, default `~/.cache/onehot-to-clip`),
3. by downloading it from its canonical URL into the cache.
Every copy is checked against its size and sha256 before use, and downloads are written to a
temporary file and renamed only once verified, so a half-written file never takes the real name.
"""
from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
import urllib.error
import urllib.request
from urllib.parse import urlsplit
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_ENV = "ONEHOT_DATA_DIR"
CACHE_DIR_ENV = "ONEHOT_CACHE_DIR"


@dataclass(frozen=True)
class RemoteFile:
    """A file the book needs: where it lives, how to name it locally and how to verify it."""

    name: str  # directory under the data/cache dir
    filename: str
    url: str
    size: int
    sha256: str


TINY_SHAKESPEARE = RemoteFile(
    name="tinyshakespeare",
    filename="input.txt",
    url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    size=1115394,
    sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
)


class DataError(RuntimeError):
    """A dataset could not be found, fetched or verified."""


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the host of `url` opens within `timeout` seconds (no data is sent).

    A quick test before an online-only step (pretrained weights from a model hub): offline, name
    resolution fails at once or the connection times out, instead of a library retrying for half a
    minute. It says nothing about what the server will answer; the download still checks that.
    """
    parts = urlsplit(url if "//" in url else f"https://{url}")
    if not parts.hostname:
        raise ValueError(f"reachable: no host name in {url!r}; pass a URL such as 'https://huggingface.co'")
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:  # includes socket.gaierror (no name resolution) and TimeoutError
        return False


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "onehot-to-clip")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, spec: RemoteFile) -> None:
    """Raise DataError unless `path` has the size and sha256 of `spec`."""
    size = path.stat().st_size
    if size != spec.size:
        raise DataError(f"{path} has {size} bytes, expected {spec.size} for {spec.name}/{spec.filename}; "
                        "the file is truncated or a different file. Delete it and fetch it again.")
    digest = sha256_of(path)
    if digest != spec.sha256:
        raise DataError(f"{path} has sha256 {digest}, expected {spec.sha256} for "
                        f"{spec.name}/{spec.filename}. Delete it and fetch it again.")


def _candidates(spec: RemoteFile) -> list[Path]:
    paths = []
    data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir:
        paths += [Path(data_dir) / spec.name / spec.filename, Path(data_dir) / spec.filename]
    return paths


def download(spec: RemoteFile, dest: Path, timeout: float = 30.0) -> Path:
    """Download `spec.url` to `dest` atomically: verified in a temporary file, then renamed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(spec.url, timeout=timeout) as response:
            while block := response.read(1 << 20):
                out.write(block)
        verify(tmp, spec)
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise DataError(
            f"Could not download {spec.name} from {spec.url} ({err}). If this machine is offline, "
            f"put the file at <dir>/{spec.name}/{spec.filename} and set {DATA_DIR_ENV}=<dir>, "
            f"or place it in the cache at {dest}."
        ) from err
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def fetch(spec: RemoteFile, allow_download: bool = True) -> Path:
    """The local path of a verified copy of `spec`, downloading it into the cache if needed."""
    for path in _candidates(spec):
        if path.is_file():
            verify(path, spec)
            return path
    cached = cache_dir() / spec.name / spec.filename
    if cached.is_file():
        verify(cached, spec)
        return cached
    if not allow_download:
        raise DataError(f"{spec.name}/{spec.filename} not found. Put it at <dir>/{spec.name}/{spec.filename} "
                        f"and set {DATA_DIR_ENV}=<dir>, or place it at {cached}.")
    return download(spec, cached)


def tiny_shakespeare(allow_download: bool = True) -> str:
    """The full text of Tiny Shakespeare (1,115,394 characters), verified by sha256."""
    return fetch(TINY_SHAKESPEARE, allow_download=allow_download).read_text(encoding="utf-8")


def train_val_split(text: str, train_fraction: float = 0.9) -> tuple[str, str]:
    """nanoGPT's split: the first `train_fraction` of the characters for training, the rest for validation."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    if not text:
        raise ValueError("cannot split an empty text")
    n = int(len(text) * train_fraction)
    return text[:n], text[n:]


TITLE_LINE = re.compile(r"[0-9A-Z]+( [0-9A-Z]+)+")  # a running title such as "3 KING HENRY VI"


def speeches(text: str) -> list[tuple[str, str]]:
    """Split Tiny Shakespeare into (speaker, speech) pairs.

    The file is a sequence of blocks separated by a blank line, each a heading line "NAME:" followed
    by the lines spoken ("ROMEO:\nIs the day so young?"). A model of *words* should read only the
    speech bodies: the headings are about 5% of the tokens but most of the occurrences of names
    such as *romeo* or *benvolio* and of regnal numbers (*ii*, *iii*), so counted as words they teach
    who speaks after whom. A heading may have an empty body (a line given to a silent speaker).

    Title lines are dropped too: the file carries a play's running title ("3 KING HENRY VI", 27 times) as
    the last line of some speeches, a line nobody speaks (`TITLE_LINE`: capitals, digits and spaces only,
    two words or more; no spoken line of the file has that form).
    """
    out = []
    for k, block in enumerate(text.strip("\n").split("\n\n")):
        heading, _, body = block.strip("\n").partition("\n")
        if not heading.endswith(":") or heading.strip() != heading or len(heading) < 2:
            raise ValueError(f"block {k} does not start with a 'NAME:' heading line: {block[:60]!r}; "
                             "speeches() expects Tiny Shakespeare's format (heading, lines, blank line)")
        body = "\n".join(line for line in body.split("\n") if not TITLE_LINE.fullmatch(line))
        out.append((heading[:-1], body))
    return out
