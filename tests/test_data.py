"""Tests for iaf_repro.data: checksums, clear errors, batching, dynamic binarization, the real files."""
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from iaf_repro.data import (DATA_ENV, FILES, BinarizedMNIST, DataError, DataFile, load_mnist, read_idx,
                            verified_file)

SHARED = Path(os.environ.get(DATA_ENV, Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_data = pytest.mark.skipif(not (SHARED / FILES["static"].path).exists(), reason="no data folder")


def _file(tmp_path, name, content):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(content)
    return DataFile(name, hashlib.sha256(content).hexdigest())


def test_missing_file_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=rf"binarized_mnist.npz not found: set {DATA_ENV}"):
        verified_file(FILES["static"], tmp_path)


def test_empty_data_folder_names_the_file_expected_there_before_any_download(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("tried to download"))
    with pytest.raises(DataError, match=rf"{tmp_path / 'binarized_mnist.npz'} not found: {DATA_ENV} is {tmp_path}.*unset {DATA_ENV}"):
        load_mnist("static")
    with pytest.raises(DataError, match=rf"{tmp_path / 'mnist' / 'train-images-idx3-ubyte.gz'} not found"):
        load_mnist("dynamic")
    assert list(tmp_path.iterdir()) == []                        # nothing was created in the user's folder


def test_corrupt_file_names_both_checksums_and_is_left_alone(tmp_path):
    good = _file(tmp_path, "x.bin", b"abc")
    (tmp_path / "x.bin").write_bytes(b"abd")
    with pytest.raises(DataError, match=f"expected {good.sha256}"):
        verified_file(good, tmp_path)
    assert (tmp_path / "x.bin").read_bytes() == b"abd"        # nothing is deleted behind the user's back


def test_download_keeps_only_verified_files(tmp_path):
    source = _file(tmp_path, "source.bin", b"payload")
    ok = DataFile("got/ok.bin", source.sha256, ("file:///nonexistent/first", f"file://{tmp_path / 'source.bin'}"))
    assert verified_file(ok, tmp_path, download=True).read_bytes() == b"payload"   # falls through to the 2nd URL
    bad = DataFile("got/bad.bin", "0" * 64, (f"file://{tmp_path / 'source.bin'}",))
    with pytest.raises(DataError, match="fails its sha256 check"):
        verified_file(bad, tmp_path, download=True)
    assert not (tmp_path / "got" / "bad.bin").exists()
    assert sorted(p.name for p in (tmp_path / "got").iterdir()) == ["ok.bin"]      # no temp files left


def test_read_idx_decodes_a_hand_made_file(tmp_path):
    import gzip
    values = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + np.array([2, 3, 4], dtype=">u4").tobytes()
    with gzip.open(tmp_path / "t.gz", "wb") as f:
        f.write(header + values.tobytes())
    np.testing.assert_array_equal(read_idx(tmp_path / "t.gz"), values)


def test_dynamic_batches_are_fresh_but_reproducible_under_a_seed():
    grey = torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    data = BinarizedMNIST("synthetic", grey, grey.round(), grey.round(), dynamic=True)
    run = lambda seed: torch.cat(list(data.batches("train", 5, generator=torch.Generator().manual_seed(seed))))
    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))
    assert set(run(1).unique().tolist()) <= {0.0, 1.0}
    static = BinarizedMNIST("synthetic", grey.round(), grey.round(), grey.round())
    assert sorted(torch.cat(list(static.batches("train", 5))).sum((1, 2, 3)).tolist()) == sorted(grey.round().sum((1, 2, 3)).tolist())


def test_bad_arguments_are_rejected():
    x = torch.zeros(4, 1, 28, 28)
    with pytest.raises(ValueError, match=r"\[N, 1, 28, 28\]"):
        BinarizedMNIST("bad", torch.zeros(4, 784), x, x)
    with pytest.raises(ValueError, match="batch_size"):
        next(BinarizedMNIST("ok", x, x, x).batches("train", 0))
    with pytest.raises(ValueError, match="valid kinds"):
        load_mnist("grey")


@needs_data
def test_real_data_matches_the_published_statistics():
    static = load_mnist("static", SHARED)
    assert [len(static.train), len(static.valid), len(static.test)] == [50_000, 10_000, 10_000]
    assert abs(static.valid.mean().item() - 0.13113) < 1e-5
    dynamic = load_mnist("dynamic", SHARED)
    assert dynamic.dynamic and torch.equal(dynamic.test, load_mnist("dynamic", SHARED).test)
    assert set(dynamic.valid.unique().tolist()) == {0.0, 1.0}
