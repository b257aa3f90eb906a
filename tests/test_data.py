import hashlib
import os
import re
import http.server
import socket
import threading
from pathlib import Path

import pytest

from utils import data
from utils.data import DataError, RemoteFile, fetch, train_val_split

CONTENT = b"To be, or not to be, that is the question.\n" * 10


def spec_for(content: bytes, url: str = "http://127.0.0.1:9/none") -> RemoteFile:
    return RemoteFile(name="toy", filename="toy.txt", url=url, size=len(content),
                      sha256=hashlib.sha256(content).hexdigest())


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    data_dir, cache = tmp_path / "data", tmp_path / "cache"
    monkeypatch.setenv(data.DATA_DIR_ENV, str(data_dir))
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(cache))
    return data_dir, cache


@pytest.fixture
def server(tmp_path):
    """A loopback HTTP server serving files from a folder (no network beyond 127.0.0.1)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_found_in_data_dir(dirs):
    data_dir, _ = dirs
    (data_dir / "toy").mkdir(parents=True)
    (data_dir / "toy" / "toy.txt").write_bytes(CONTENT)
    assert fetch(spec_for(CONTENT)).read_bytes() == CONTENT


def test_wrong_checksum_is_rejected(dirs):
    data_dir, _ = dirs
    (data_dir / "toy").mkdir(parents=True)
    tampered = CONTENT.replace(b"question", b"QUESTION")
    (data_dir / "toy" / "toy.txt").write_bytes(tampered)
    with pytest.raises(DataError, match="sha256"):
        fetch(spec_for(CONTENT))


def test_wrong_size_is_rejected(dirs):
    data_dir, _ = dirs
    (data_dir / "toy").mkdir(parents=True)
    (data_dir / "toy" / "toy.txt").write_bytes(CONTENT[:-5])
    with pytest.raises(DataError, match="truncated"):
        fetch(spec_for(CONTENT))


def test_missing_file_offline_says_where_to_put_it(dirs):
    with pytest.raises(DataError, match=r"ONEHOT_DATA_DIR.*|put the file"):
        fetch(spec_for(CONTENT))  # the URL points at a closed loopback port: like being offline
    _, cache = dirs
    assert not (cache / "toy" / "toy.txt").exists()
    assert not list((cache / "toy").glob("*.part")) if (cache / "toy").exists() else True


def test_missing_file_without_download(dirs):
    with pytest.raises(DataError, match="not found.*ONEHOT_DATA_DIR"):
        fetch(spec_for(CONTENT), allow_download=False)


def test_download_is_verified_and_cached(dirs, server):
    root, base = server
    (root / "toy.txt").write_bytes(CONTENT)
    spec = spec_for(CONTENT, f"{base}/toy.txt")
    path = fetch(spec)
    assert path.read_bytes() == CONTENT and path.parent.parent == dirs[1]
    (root / "toy.txt").unlink()  # second call must come from the cache
    assert fetch(spec) == path


def test_corrupt_download_leaves_nothing_behind(dirs, server):
    root, base = server
    (root / "toy.txt").write_bytes(CONTENT.replace(b"be", b"BE"))
    with pytest.raises(DataError, match="sha256"):
        fetch(spec_for(CONTENT, f"{base}/toy.txt"))
    folder = dirs[1] / "toy"
    assert not (folder / "toy.txt").exists() and list(folder.iterdir()) == []


def test_tiny_shakespeare_is_verified():
    if not os.environ.get(data.DATA_DIR_ENV) and not os.environ.get("CI"):
        pytest.skip(f"set {data.DATA_DIR_ENV} to a folder holding tinyshakespeare/input.txt")
    text = data.tiny_shakespeare(allow_download=False)
    assert len(text) == 1115394 and text.startswith("First Citizen:")


def test_split_is_nanogpt_split():
    train, val = train_val_split("abcdefghij", 0.9)
    assert (train, val) == ("abcdefghi", "j")
    with pytest.raises(ValueError, match="empty"):
        train_val_split("")
    with pytest.raises(ValueError, match="train_fraction"):
        train_val_split("abc", 1.5)


def test_reachable_opens_a_connection_or_says_no(server):
    _, base = server  # a loopback HTTP server that is listening
    assert data.reachable(base, timeout=2.0)
    with socket.socket() as s:  # a port nobody listens on: bind, read the port, close
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert not data.reachable(f"http://127.0.0.1:{port}/", timeout=2.0)
    assert not data.reachable("https://no-such-host.invalid", timeout=2.0)  # .invalid never resolves (RFC 2606)
    with pytest.raises(ValueError, match="no host name"):
        data.reachable("https://")


def test_speeches_keep_the_bodies_and_drop_the_headings():
    text = "KING RICHARD II:\nOld John of Gaunt, time-honour'd Lancaster,\nHast thou...\n\nROMEO:\n\nJULIET:\nRomeo!\n"
    assert data.speeches(text) == [("KING RICHARD II", "Old John of Gaunt, time-honour'd Lancaster,\nHast thou..."),
                                   ("ROMEO", ""), ("JULIET", "Romeo!")]
    from utils.text import words
    body_words = [w for _, body in data.speeches(text) for w in words(body)]
    assert "ii" not in body_words and "richard" not in body_words and body_words.count("romeo") == 1
    # a running title left at the end of a speech is not spoken: dropped; a spoken line in capitals stays
    assert data.speeches("EXETER:\nAnd I, I hope, shall reconcile them all.\n3 KING HENRY VI\n\nLEAR:\nO!\nI\n") == [
        ("EXETER", "And I, I hope, shall reconcile them all."), ("LEAR", "O!\nI")]
    with pytest.raises(ValueError, match="heading"):
        data.speeches("ROMEO:\nhello\n\nthis block has no heading\nat all")


def test_speeches_cover_tiny_shakespeare():
    if not os.environ.get(data.DATA_DIR_ENV) and not os.environ.get("CI"):
        pytest.skip(f"set {data.DATA_DIR_ENV} to a folder holding tinyshakespeare/input.txt")
    text = data.tiny_shakespeare(allow_download=False)
    parts = data.speeches(text)
    assert len(parts) == 7222 and parts[0][0] == "First Citizen"
    # the 27 running titles ("3 KING HENRY VI" at the end of a speech) are gone, and nothing else is
    assert text.count("\n3 KING HENRY VI\n") == 27
    assert not any(line.isupper() and " " in line for _, body in parts for line in body.split("\n"))
    # heading + body, joined back, is the file again without them (up to the extra blank line between plays)
    joined = "\n\n".join(f"{name}:\n{body}" if body else f"{name}:" for name, body in parts)
    assert joined == re.sub(r"\n{3,}", "\n\n", text.strip("\n").replace("\n3 KING HENRY VI\n", "\n"))
