"""The ``mtlbench-data`` command (describe, prepare, download) and resumable, checksum-verified downloads
against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from test_datasets import ALI_HEADER, ali_rows, write_csv, write_ml100k

from mtlbench.cli.data import main
from mtlbench.data.download import fetch
from mtlbench.errors import DataError


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


# -- describe / prepare --------------------------------------------------------------------------------------
def test_describe_reports_rows_users_items_time_label_rates_and_splits(tmp_path, capsys):
    folder = write_ml100k(tmp_path / "ml")
    code, out, err = run(
        [
            "describe",
            "movielens",
            f"path={folder}",
            "scenario=gender",
            f"cache_dir={tmp_path / 'cache'}",
            "split.method=random",
            "split.ratios=[0.5,0.5,0.0]",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    d = json.loads(out)
    assert (d["rows"], d["users"], d["items"]) == (6, 2, 4)
    assert d["time"] == {"field": "timestamp", "min": "50", "max": "90000"}  # not unix dates: shown as is
    # like = rating >= 4 on ratings 5 3 4 1 2 5; love = rating 5
    assert d["tasks"]["like"]["rate"] == pytest.approx(3 / 6)
    assert d["tasks"]["love"]["rate"] == pytest.approx(2 / 6)
    # gender: F (user 2: ratings 3 1 5) = 0, M (user 1: ratings 5 4 2) = 1
    assert d["tasks"]["like"]["rate_by_scenario"] == pytest.approx([1 / 3, 2 / 3])
    assert d["splits"] == {"train": 3, "valid": 3, "test": 0} and d["split"]["method"] == "random"
    assert d["scenario"] == {"field": "gender", "count": 2, "rows": [3, 3]}
    assert {"name": "genres", "kind": "sequence", "vocab": 19, "role": "item", "max_len": 6} in d["features"]
    assert d["cache"]["bytes"] > 0 and Path(d["cache"]["path"]).parent == tmp_path / "cache"
    code, out, _ = run(["describe", "movielens", f"path={folder}", f"cache_dir={tmp_path / 'cache'}"], capsys)
    assert code == 0 and "schema:" in out and "splits (auto" in out and "like" in out


def test_describe_formats_unix_time_as_dates(tmp_path, capsys):
    path = shared_data_or_skip("movielens-100k")
    code, out, _ = run(["describe", "movielens", f"path={path}", f"cache_dir={tmp_path}", "--json"], capsys)
    d = json.loads(out)
    assert code == 0 and d["time"]["min"].startswith("1997-09-20")
    assert d["time"]["max"].startswith("1998-04-22")
    assert (d["rows"], d["users"], d["items"]) == (100_000, 943, 1_682)


def shared_data_or_skip(name: str) -> Path:
    from conftest import shared_data

    return shared_data(name)


def test_prepare_builds_once_reports_size_and_rebuilds_on_force(tmp_path, capsys):
    path = write_csv(tmp_path / "ali.csv", ALI_HEADER, ali_rows())
    cache = tmp_path / "cache"
    args = ["prepare", "ali_ccp", f"path={path}", f"cache_dir={cache}", "--json"]
    code, out, err = run(args, capsys)
    assert code == 0, err
    first = json.loads(out)
    entry = Path(first["cache"])
    assert first["rows"] == 4 and not first["already_prepared"] and entry.parent == cache
    assert first["bytes"] == sum(f.stat().st_size for f in entry.iterdir())
    code, out, _ = run(args, capsys)
    assert json.loads(out)["already_prepared"] is True
    code, out, _ = run([*args, "--force"], capsys)
    assert json.loads(out)["already_prepared"] is False and [p.name for p in cache.iterdir()] == [entry.name]
    code, out, _ = run(args[:-1], capsys)  # text report
    assert "ali_ccp: already prepared: 4 rows" in out


def test_user_errors_are_one_line_exit_2_and_leave_no_cache_entry(tmp_path, capsys):
    cache = tmp_path / "cache"
    bad = write_csv(tmp_path / "bad.csv", ALI_HEADER, ali_rows()[:2] + [[1, 0, 7, 100, 1, "x"]])
    code, _, err = run(["prepare", "ali_ccp", f"path={bad}", f"cache_dir={cache}"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("mtlbench-data: error: ") and "bad.csv: line 4: column 'D508' has 'x'" in err
    assert not cache.exists() or list(cache.iterdir()) == []
    code, _, err = run(["describe", "ali_ccp", f"cache_dir={cache}"], capsys)
    assert code == 2 and "needs path=" in err
    code, _, err = run(["describe", "ali_ccp", f"path={bad}", "colour=red"], capsys)
    assert code == 2 and "colour" in err and err.count("\n") == 1
    code, _, err = run(["describe", "no_such_dataset"], capsys)
    assert code == 2 and "no_such_dataset" in err


def test_the_command_runs_as_a_module_and_exits_2_on_bad_data(tmp_path):
    bad = write_csv(tmp_path / "bad.csv", ALI_HEADER, [[3, 0, 7, 100, 1, 0.5]])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtlbench.cli.data",
            "describe",
            "ali_ccp",
            f"path={bad}",
            f"cache_dir={tmp_path / 'cache'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
        cwd=tmp_path,
    )  # the installed package
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.csv: line 2: label column 'click' has value 3" in lines[0]


# -- download --------------------------------------------------------------------------------------------
class Server:
    """A local HTTP server serving ``payload`` at any path; honours Range; can cut the first responses."""

    def __init__(self, payload: bytes, cut: int = 0, ranges: bool = True) -> None:
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                header = self.headers.get("Range")
                state.seen.append(header)
                start = int(header.split("=")[1].split("-")[0]) if (header and ranges) else 0
                body = state.payload[start:]
                self.send_response(206 if start else 200)
                if start:
                    size = len(state.payload)
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if state.cut > 0:  # announce the whole body, send half, hang up
                    state.cut -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.payload, self.cut, self.seen = payload, cut, []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/file.bin"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


PAYLOAD = np.random.default_rng(0).bytes(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_interrupted_download_resumes_from_the_part_file(tmp_path):
    target = tmp_path / "data.bin"
    with Server(PAYLOAD, cut=1) as server:
        with pytest.raises(DataError, match="interrupted after 150,000 bytes.*run the same command again"):
            fetch(server.url, target, SHA, retries=0, backoff=0)
        part = tmp_path / "data.bin.part"
        assert part.stat().st_size == 150_000 and not target.exists()
        assert fetch(server.url, target, SHA, retries=0, backoff=0) == target
    assert server.seen == [None, "bytes=150000-"]  # the second request asked for the rest only
    assert target.read_bytes() == PAYLOAD and not part.exists()


def test_download_retries_and_resumes_within_one_call(tmp_path):
    with Server(PAYLOAD, cut=2) as server:
        fetch(server.url, tmp_path / "data.bin", SHA, retries=3, backoff=0)
    assert server.seen == [None, "bytes=150000-", "bytes=225000-"]
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_server_without_range_support_restarts_from_zero(tmp_path):
    with Server(PAYLOAD, cut=1, ranges=False) as server:
        fetch(server.url, tmp_path / "data.bin", SHA, retries=2, backoff=0)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch_fails_clearly_and_keeps_nothing(tmp_path):
    with Server(PAYLOAD) as server:
        with pytest.raises(
            DataError, match=f"checksum mismatch: expected sha256 {'0' * 64}, got {SHA}; the download was removed"
        ):
            fetch(server.url, tmp_path / "data.bin", "0" * 64, retries=0, backoff=0)
    assert list(tmp_path.iterdir()) == []


def ml100k_zip(tmp_path: Path) -> bytes:
    folder = write_ml100k(tmp_path / "src" / "ml-100k")
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in folder.iterdir():
            z.write(f, f"ml-100k/{f.name}")
    return archive.read_bytes()


def test_download_command_fetches_unpacks_and_the_data_describes(tmp_path, capsys):
    data = ml100k_zip(tmp_path)
    dest = tmp_path / "data"
    with Server(data) as server:
        code, out, err = run(
            [
                "download",
                "movielens-100k",
                "--dest",
                str(dest),
                "--url",
                server.url,
                "--sha256",
                hashlib.sha256(data).hexdigest(),
            ],
            capsys,
        )
    assert code == 0, err
    assert (dest / "ml-100k" / "u.data").exists() and f"dataset.path={dest / 'ml-100k'}" in out
    code, out, err = run(
        ["describe", "movielens", f"path={dest / 'ml-100k'}", f"cache_dir={tmp_path / 'c'}", "--json"], capsys
    )
    assert code == 0 and json.loads(out)["rows"] == 6
    with Server(data) as server:  # the published checksum of ml-100k.zip does not match this fixture
        code, _, err = run(
            ["download", "movielens-100k", "--dest", str(tmp_path / "d2"), "--url", server.url, "--sha256", "1" * 64],
            capsys,
        )
    assert code == 2 and "checksum mismatch" in err and not (tmp_path / "d2" / "ml-100k.zip").exists()


def test_download_tells_where_to_get_data_by_hand(tmp_path, capsys):
    code, _, err = run(["download", "ali_ccp"], capsys)
    assert code == 2 and err.count("\n") == 1 and "https://tianchi.aliyun.com/dataset/408" in err
    code, _, err = run(["download", "wechat"], capsys)
    assert code == 2 and "algo.weixin.qq.com" in err
    with socket.socket() as s:  # a port nobody listens on: "offline"
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run(
        [
            "download",
            "movielens-1m",
            "--dest",
            str(tmp_path),
            "--url",
            f"http://127.0.0.1:{port}/ml-1m.zip",
            "--sha256",
            "0" * 64,
            "--retries",
            "0",
        ],
        capsys,
    )
    assert code == 2 and "cannot connect" in err and "https://grouplens.org/datasets/movielens/1m/" in err
    code, _, err = run(["download", "movielens"], capsys)
    assert code == 2 and "movielens-100k, movielens-1m" in err
