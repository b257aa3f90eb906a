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


def test_cache_dir_defaults_to_dot_cache_under_home(tmp_path, monkeypatch):
    monkeypatch.delenv(data.CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # Path.home() reads HOME on POSIX
    assert data.cache_dir() == tmp_path / ".cache" / "onehot-to-clip"
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path / "elsewhere"))
    assert data.cache_dir() == tmp_path / "elsewhere"


class FakeResponse:
    """What urllib.request.urlopen returns, serving `content`; each read() records the size asked for and
    what the destination folder holds at that moment."""

    def __init__(self, content: bytes, folder: Path, log: list):
        self.content, self.folder, self.log = content, folder, log

    def read(self, n=-1):
        self.log.append((n, sorted(p.name for p in self.folder.iterdir())))
        if n is None or n < 0:
            n = len(self.content)
        block, self.content = self.content[:n], self.content[n:]
        return block

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_streams_into_a_hidden_part_file_beside_the_destination(tmp_path, monkeypatch):
    content = bytes(range(256)) * 8200  # 2.1 MB: more than two 1 MiB blocks
    spec = spec_for(content, "http://example.invalid/toy.txt")
    dest = tmp_path / "cache" / "toy" / "toy.txt"
    dest.parent.mkdir(parents=True)  # the folder exists already (an earlier download): not an error
    (dest.parent / "old.txt").write_text("keep")
    log, asked = [], []

    def urlopen(url, timeout=None):
        asked.append((url, timeout))
        return FakeResponse(content, dest.parent, log)

    monkeypatch.setattr(data.urllib.request, "urlopen", urlopen)
    assert data.download(spec, dest, timeout=7.5) == dest
    assert dest.read_bytes() == content and asked == [("http://example.invalid/toy.txt", 7.5)]
    # streamed: every read asks for at most 1 MiB, and at least three reads for 2.1 MB (the last one empty)
    assert all(isinstance(n, int) and 0 < n <= 1 << 20 for n, _ in log) and len(log) >= 4
    # while it is written, the only new file is a hidden '.toy.txt.<random>.part' in the destination's folder
    for _, names in log:
        new = [name for name in names if name != "old.txt"]
        assert len(new) == 1 and re.fullmatch(r"\.toy\.txt\..+\.part", new[0]), names
    assert sorted(p.name for p in dest.parent.iterdir()) == ["old.txt", "toy.txt"]


def test_sha256_of_reads_in_blocks_of_at_most_one_mebibyte(tmp_path, monkeypatch):
    content = bytes(range(256)) * 9000  # 2.3 MB
    path = tmp_path / "big.bin"
    path.write_bytes(content)
    sizes = []
    real_open = open

    class Tracked:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            sizes.append(n)
            return self.f.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(data, "open", lambda *a, **k: Tracked(real_open(*a, **k)), raising=False)
    assert data.sha256_of(path) == hashlib.sha256(content).hexdigest()
    assert all(isinstance(n, int) and 0 < n <= 1 << 20 for n in sizes) and len(sizes) >= 4


def test_reachable_picks_the_scheme_s_port_and_passes_the_timeout(monkeypatch):
    calls = []

    class Conn:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def create_connection(address, timeout=None):
        calls.append((address, timeout))
        return Conn()

    monkeypatch.setattr(data.socket, "create_connection", create_connection)
    assert data.reachable("http://example.org/x", timeout=1.25)
    assert data.reachable("https://example.org/x", timeout=0.5)
    assert data.reachable("huggingface.co", timeout=2.0)  # no scheme: read as https
    assert data.reachable("http://example.org:8080/", timeout=3.0)
    assert calls == [(("example.org", 80), 1.25), (("example.org", 443), 0.5), (("huggingface.co", 443), 2.0),
                     (("example.org", 8080), 3.0)]


def test_tiny_shakespeare_passes_allow_download_and_decodes_utf8(tmp_path, monkeypatch):
    path = tmp_path / "input.txt"
    path.write_bytes("ROMEO:\nO, caf\u00e9!\n".encode("utf-8"))
    got = []
    monkeypatch.setattr(data, "fetch", lambda spec, allow_download=True: got.append((spec, allow_download)) or path)
    assert data.tiny_shakespeare(allow_download=False) == "ROMEO:\nO, caf\u00e9!\n"
    assert data.tiny_shakespeare() == "ROMEO:\nO, caf\u00e9!\n"
    assert got == [(data.TINY_SHAKESPEARE, False), (data.TINY_SHAKESPEARE, True)]  # downloads by default


def test_tiny_shakespeare_is_read_as_utf8_whatever_the_locale(tmp_path):
    """Under an ASCII locale with Python's UTF-8 mode off, an encoding left to the locale fails on 'é'."""
    import subprocess
    import sys
    code = ("from pathlib import Path; from utils import data; "
            f"p = Path({str(tmp_path / 'x.txt')!r}); p.write_bytes('caf\\u00e9'.encode('utf-8')); "
            "data.fetch = lambda spec, allow_download=True: p; print(data.tiny_shakespeare() == 'caf\\u00e9')")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG", "PYTHONUTF8"))}
    env.update(LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0", PYTHONIOENCODING="utf-8",
               PYTHONPATH=str(Path(data.__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr[-500:]


def test_split_fraction_must_be_strictly_between_0_and_1():
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="train_fraction"):
            train_val_split("abcd", bad)
    assert train_val_split("abcd", 0.5) == ("ab", "cd") and train_val_split("abcd") == ("abc", "d")


def test_speeches_strip_only_newlines_and_check_every_heading():
    # spaces at the end of a line are spoken text, an X is a letter: only blank lines around blocks go
    text = "\nXANTHUS:\nGive me an X\n\nA:\nwell  \n\n"
    assert data.speeches(text) == [("XANTHUS", "Give me an X"), ("A", "well  ")]
    for bad in ("  ROMEO:\nhello", "ROMEO:\nhi\n\n:\nnameless", "ROMEO:\nhi\n\nROMEO\nno colon"):
        with pytest.raises(ValueError, match="heading"):
            data.speeches(bad)


def test_the_documented_default_timeouts_are_the_ones_used(monkeypatch, tmp_path):
    """download waits 30 s for the server and reachable 3 s for a connection when no timeout is given."""
    seen = {}

    def fake_urlopen(url, timeout):
        seen["download"] = timeout
        raise OSError("offline")

    def fake_connect(address, timeout):
        seen["reachable"] = timeout
        raise OSError("offline")

    monkeypatch.setattr(data.urllib.request, "urlopen", fake_urlopen)
    monkeypatch.setattr(data.socket, "create_connection", fake_connect)
    with pytest.raises((OSError, DataError)):
        data.download(RemoteFile("f", "f.txt", "https://example.invalid/f.txt", 4, "0" * 64), tmp_path / "f.txt")
    assert not data.reachable("https://example.invalid")
    assert seen == {"download": 30.0, "reachable": 3.0}


def test_tiny_shakespeare_is_read_as_utf8_whatever_the_locale(monkeypatch):
    """The text is decoded as UTF-8 explicitly, not with the platform's default encoding (cp1252 on Windows)."""
    seen = {}

    class FakePath:
        def read_text(self, encoding=None):
            seen["encoding"] = encoding
            return "text"

    monkeypatch.setattr(data, "fetch", lambda spec, allow_download=True: FakePath())
    assert data.tiny_shakespeare() == "text"
    assert seen["encoding"] is not None and seen["encoding"].lower().replace("-", "") == "utf8"
