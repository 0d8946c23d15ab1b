"""CIFAR-10 loading (chapter 20): checks, clear errors, batches, subsets. Uses the data folder when present."""
import tarfile
import io
import pickle

import numpy as np
import pytest
import torch

from iaf_repro import cifar
from iaf_repro.cifar import CIFAR10, CIFAR_FILES, DataError, check_arrays, cifar_arrays, cifar_subset, _archive_arrays
from iaf_repro.data import data_root


def _fake(n=4):
    return CIFAR10("fake", *(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8) for _ in range(3)))


def test_missing_files_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"cifar10_train.npz not found.*IAF_REPRO_DATA"):
        cifar_arrays(tmp_path, download=False)


def test_corrupt_file_is_refused(tmp_path):
    path = tmp_path / CIFAR_FILES["train"].path
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not cifar")
    with pytest.raises(DataError, match="corrupt or a different version"):
        cifar_arrays(tmp_path, download=False)


def test_archive_decoding_and_array_checks(tmp_path):
    "A tiny archive in the official pickle layout decodes to NHWC arrays; its (wrong) contents fail the array checksums."
    rng = np.random.default_rng(0)
    planes = {name: rng.integers(0, 256, (2, 3072), dtype=np.uint8) for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}
    path = tmp_path / "tiny.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in planes.items():
            blob = pickle.dumps({b"data": data, b"labels": [1, 2]})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}"); info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    arrays = _archive_arrays(path)
    assert arrays["x_train"].shape == (10, 32, 32, 3) and arrays["x_test"].shape == (2, 32, 32, 3)
    assert arrays["x_train"][0, 0, 1, 2] == planes["data_batch_1"][0, 2 * 1024 + 1]    # B plane, row 0, column 1
    with pytest.raises(DataError, match="not the official CIFAR-10"): check_arrays(arrays, path)


def test_container_checks_and_batches():
    data = _fake(10)
    assert [len(b) for b in data.batches("test", 4, shuffle=False)] == [4, 4, 2]
    assert [len(b) for b in data.batches("train", 4, shuffle=True)] == [4, 4]
    assert next(data.batches("train", 4)).dtype == torch.uint8
    with pytest.raises(ValueError, match="uint8 tensor"): CIFAR10("bad", data.train.float(), data.valid, data.test)
    with pytest.raises(ValueError, match="uint8 tensor"): CIFAR10("bad", data.train[:, :1], data.valid, data.test)
    small = cifar_subset(data, 3, 5)
    assert len(small.train) == 3 and torch.equal(small.test, data.test[torch.linspace(0, 9, 5).long()])


@pytest.mark.skipif(not (data_root() / CIFAR_FILES["test"].path).exists(), reason="no CIFAR-10 in the data folder")
def test_real_data_valid_split():
    data = cifar.load_cifar10(valid_images=5000)
    assert (len(data.train), len(data.valid), len(data.test)) == (45000, 5000, 10000)
    with pytest.raises(ValueError, match="valid_images"): cifar.load_cifar10(valid_images=0)
