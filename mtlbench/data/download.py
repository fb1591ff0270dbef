"""Fetch public datasets whose licence allows it: SHA-256 checked, resumable (HTTP Range), atomic.

A download goes to ``<dest>/<file>.part`` and is renamed to ``<dest>/<file>`` only when complete and its
SHA-256 matches the published checksum; an interrupted transfer is resumed from the ``.part`` file (within
the same call up to ``retries`` times, or by running the command again); a checksum mismatch removes the
file. Datasets that need a login or a form (Tianchi, the WeChat challenge) or have no stable direct link
are listed with the page to get them from by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mtlbench.errors import ConfigError, DataError


@dataclass(frozen=True)
class Remote:
    """One file at its official location; ``sha256`` / ``size`` as published (None when unpublished)."""

    url: str
    filename: str
    sha256: str | None = None
    size: int | None = None
    extract: bool = False  # a zip archive: unpack into the destination folder


@dataclass(frozen=True)
class Source:
    """Where a dataset comes from, under which terms, and what to pass as ``dataset.path`` afterwards."""

    name: str
    dataset: str
    licence: str
    page: str
    files: tuple[Remote, ...] = ()
    manual: str | None = None  # why it cannot be fetched automatically
    folder: str = ""  # the dataset.path below the destination once fetched


GROUPLENS = "https://files.grouplens.org/datasets/movielens"
UCI = "https://archive.ics.uci.edu/ml/machine-learning-databases/census-income-mld"
GROUPLENS_TERMS = (
    "GroupLens research licence (non-commercial, acknowledge GroupLens, no redistribution without permission)"
)
TIANCHI_TERMS = "Tianchi dataset terms (non-commercial research)"
SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        # checksums: tensorflow/datasets url_checksums/movielens.txt (commit 1c076ac3)
        Source(
            "movielens-100k",
            "movielens",
            GROUPLENS_TERMS,
            "https://grouplens.org/datasets/movielens/100k/",
            (
                Remote(
                    f"{GROUPLENS}/ml-100k.zip",
                    "ml-100k.zip",
                    "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
                    4924029,
                    True,
                ),
            ),
            folder="ml-100k",
        ),
        Source(
            "movielens-1m",
            "movielens",
            GROUPLENS_TERMS,
            "https://grouplens.org/datasets/movielens/1m/",
            (
                Remote(
                    f"{GROUPLENS}/ml-1m.zip",
                    "ml-1m.zip",
                    "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
                    5917549,
                    True,
                ),
            ),
            folder="ml-1m",
        ),
        # census-income.test.gz: SHA-256 of the copy in drawbridge/keras-mmoe (data/census-income.test.gz); UCI
        # publishes no checksum, and none is known for census-income.data.gz (it is printed after download)
        Source(
            "census_income",
            "census_income",
            "CC BY 4.0 (UCI Machine Learning Repository)",
            "https://archive.ics.uci.edu/dataset/117/census+income+kdd",
            (
                Remote(f"{UCI}/census-income.data.gz", "census-income.data.gz"),
                Remote(
                    f"{UCI}/census-income.test.gz",
                    "census-income.test.gz",
                    "5ac4cacd3ca9f1ecb10de1a0a41e4ac68fdc419e3fec190f5c0c6cc03b2ea659",
                    3261416,
                ),
            ),
        ),
        Source(
            "ali_ccp",
            "ali_ccp",
            TIANCHI_TERMS,
            "https://tianchi.aliyun.com/dataset/408",
            manual="Tianchi requires an account login to download; "
            "then process it into the AITM / torch-rechub CSV layout",
        ),
        Source(
            "aliexpress",
            "aliexpress",
            TIANCHI_TERMS,
            "https://tianchi.aliyun.com/dataset/74690",
            manual="Tianchi requires an account login to download",
        ),
        Source(
            "kuairand",
            "kuairand",
            "CC BY-SA 4.0",
            "https://kuairand.com",
            manual="KuaiRand has no stable direct file link known to mtlbench; download KuaiRand-Pure (or 1K) "
            "from the links on its page and unpack its data/ folder",
        ),
        Source(
            "wechat",
            "wechat",
            "WeChat Big Data Challenge 2021 terms (participants only)",
            "https://algo.weixin.qq.com",
            manual="the data is given to registered challenge participants only",
        ),
        Source(
            "douban",
            "douban",
            "research use (Scenario-Wise-Rec sample, MIT repository)",
            "https://github.com/Xiaopengli1/Scenario-Wise-Rec (scripts/data/douban)",
            manual="the multi-domain Douban sample is published inside the Scenario-Wise-Rec repository",
        ),
    )
}
ALIASES = {"movielens": ("movielens-100k", "movielens-1m"), "ml-100k": ("movielens-100k",), "ml-1m": ("movielens-1m",)}


def source(name: str) -> Source:
    if name in SOURCES:
        return SOURCES[name]
    choices = ALIASES.get(name)
    if choices and len(choices) == 1:
        return SOURCES[choices[0]]
    if choices:
        raise ConfigError(f"{name!r} has several releases: {', '.join(choices)}; name one")
    raise ConfigError(f"no download known for {name!r}; known: {', '.join(sorted(SOURCES))}")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(
    url: str,
    target: Path,
    sha256: str | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 2.0,
    progress: bool = False,
) -> Path:
    """Download ``url`` to ``target`` through ``target.part``, resuming with HTTP Range; verify SHA-256.

    Raises :class:`DataError` (one line) when the transfer fails ``retries + 1`` times in a row (the
    ``.part`` file is kept, so the next call resumes) or when the checksum does not match (nothing kept).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and (sha256 is None or sha256_of(target) == sha256):
        return target
    part = target.with_name(target.name + ".part")
    failures = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "mtlbench"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            request = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                resumed = have > 0 and resp.status == 206
                length = int(resp.headers.get("Content-Length") or 0)
                bar = _bar(have + length if resumed else length, target.name, progress)
                if resumed:
                    bar.update(have)
                received = 0
                with open(part, "ab" if resumed else "wb") as f:  # a 200 answer restarts from byte 0
                    while block := resp.read(1 << 16):
                        f.write(block)
                        received += len(block)
                        bar.update(len(block))
                bar.close()
                if length and received < length:  # http.client ends a short body silently
                    raise http.client.IncompleteRead(b"", length - received)
            break
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # nothing left after the bytes we have: the .part file is complete
                break
            raise DataError(f"{url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            failures += 1
            reason = getattr(e, "reason", None) or type(e).__name__
            if failures > retries:
                got = part.stat().st_size if part.exists() else 0
                if got == 0 and isinstance(e, urllib.error.URLError):
                    raise DataError(f"{url}: cannot connect ({reason}); offline?") from None
                raise DataError(
                    f"{url}: download interrupted after {got:,} bytes ({reason}); run the same "
                    f"command again to resume from {part}"
                ) from None
            time.sleep(backoff * failures)
    digest = sha256_of(part)
    if sha256 is not None and digest != sha256.lower():
        part.unlink()
        raise DataError(f"{url}: checksum mismatch: expected sha256 {sha256}, got {digest}; the download was removed")
    os.replace(part, target)
    return target


def _bar(total: int, name: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total or None,
        desc=name,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        leave=False,
        file=sys.stderr,
        disable=not enabled,
    )


def extract_zip(archive: Path, dest: Path) -> None:
    """Unpack a zip into ``dest`` (refusing members that would land outside it)."""
    dest = dest.resolve()
    with zipfile.ZipFile(archive) as z:
        for member in z.namelist():
            if not (dest / member).resolve().is_relative_to(dest):
                raise DataError(f"{archive}: member {member!r} would be written outside {dest}")
        tmp = dest / f".{archive.stem}.unpacking"
        shutil.rmtree(tmp, ignore_errors=True)
        z.extractall(tmp)
    for entry in tmp.iterdir():  # move into place only once complete
        final = dest / entry.name
        if final.exists():
            shutil.rmtree(final) if final.is_dir() else final.unlink()
        os.replace(entry, final)
    tmp.rmdir()


def manual_hint(src: Source, dest: Path | None = None) -> str:
    where = f" and put the files in {dest}" if dest else ""
    return f"get {src.name} by hand from {src.page}{where} (licence: {src.licence})"


def download(
    name: str,
    dest: str | os.PathLike,
    url: str | None = None,
    sha256: str | None = None,
    retries: int = 3,
    backoff: float = 2.0,
    progress: bool = False,
    log=print,
) -> Path:
    """Fetch dataset ``name`` into ``dest``; return the folder to pass as ``dataset.path``.

    ``url`` / ``sha256`` replace the official location / checksum (a mirror, or a test server); they
    apply to single-file sources only.
    """
    src = source(name)
    dest = Path(dest).expanduser()
    if src.manual:
        raise DataError(
            f"{src.name} cannot be downloaded automatically: {src.manual}; "
            f"{manual_hint(src, None if dest == Path.cwd() else dest)}"
        )
    files = list(src.files)
    if (url or sha256) and len(files) != 1:
        raise ConfigError(f"{src.name} has {len(files)} files; --url/--sha256 apply to single-file sources")
    for remote in files:
        link = url or remote.url
        expected = sha256 or (remote.sha256 if url is None else None)
        if url is not None and sha256 is None:
            raise ConfigError("--url needs --sha256 (the published checksum does not cover another file)")
        try:
            path = fetch(link, dest / remote.filename, expected, retries=retries, backoff=backoff, progress=progress)
        except DataError as e:
            raise DataError(f"{e}; or {manual_hint(src, dest)}") from None
        digest = sha256_of(path)
        note = "verified" if expected else "no published checksum to compare; pin it with --sha256"
        log(f"{path}: {path.stat().st_size:,} bytes, sha256 {digest} ({note})")
        if remote.extract:
            extract_zip(path, dest)
    folder = dest / src.folder if src.folder else dest
    log(f"{src.name} is ready (licence: {src.licence}): mtlbench dataset={src.dataset} dataset.path={folder}")
    return folder
