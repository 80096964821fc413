"""CIFAR-10 from its official archive, read without ever running code from a data file.

The official "python version" (cifar-10-python.tar.gz) holds six pickled dicts. A pickle can name any Python
callable, so a crafted batch in a bucket would run code on every worker that loads it. Two guards:

- `prepare(archive, out)` checks the archive's published MD5, reads its batches through `SafeUnpickler` and
  writes plain arrays (`train_x.npy`, `train_y.npy`, `test_x.npy`, `test_y.npy`; uint8 images N x 3 x 32 x 32,
  int64 labels). Training then reads those with `np.load(allow_pickle=False)`: it never unpickles.
- `load(root)` prefers those arrays. A folder that still holds the python batches is read through
  `SafeUnpickler`, which allows exactly the globals the official format holds (numpy's array reconstruction);
  anything else is refused in one line before it is called.
"""

from __future__ import annotations

import importlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from imm.data.remote import file_digest

# https://www.cs.toronto.edu/~kriz/cifar.html publishes this checksum for the python version.
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
ARRAYS = ("train_x.npy", "train_y.npy", "test_x.npy", "test_y.npy")
HELP = (f"download {ARCHIVE} (https://www.cs.toronto.edu/~kriz/cifar.html), run `imm-orch data cifar10 "
        f"{ARCHIVE} --out DIR` and set data.name=cifar10:DIR (a local folder or an s3:// prefix)")

# The only globals the official batches name: numpy's array reconstruction (under numpy 1's and numpy 2's module
# names). Dicts, lists, ints and byte strings are pickle opcodes and need no global.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): ("_reconstruct",),
    ("numpy._core.multiarray", "_reconstruct"): ("_reconstruct",),
    ("numpy", "ndarray"): ("ndarray",),
    ("numpy", "dtype"): ("dtype",),
}


def _multiarray():
    try:
        return importlib.import_module("numpy._core.multiarray")  # numpy >= 2 (numpy.core warns there)
    except ImportError:
        return importlib.import_module("numpy.core.multiarray")


class SafeUnpickler(pickle.Unpickler):
    """An unpickler for CIFAR-10's batches: it resolves numpy's array reconstruction and refuses every other
    global (os.system, builtins.eval, ...) before anything is called."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(
                f"asks for {module}.{name}; the CIFAR-10 format holds only numpy arrays, lists and bytes "
                "(refusing to run code from a data file)")
        return getattr(_multiarray() if name == "_reconstruct" else np, name)


def read_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N x 3 x 32 x 32, labels int64) from one pickled batch, read by `SafeUnpickler`."""
    try:
        batch = SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
        x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"data.name: {where} is not a CIFAR-10 batch: {e}") from None
    if len(x) != len(y):
        raise ValueError(f"data.name: {where} holds {len(x)} images but {len(y)} labels")
    return x, y


def prepare(archive: Path, out: Path, expected_md5: str | None = None) -> dict[str, tuple[int, ...]]:
    """Check `archive` against the published MD5, then write its arrays into `out`; their shapes.

    Each array is written beside its final name and renamed, so a failure leaves no half-written file."""
    got, expected_md5 = file_digest(archive, "md5"), expected_md5 or ARCHIVE_MD5
    if got != expected_md5:
        raise ValueError(f"archive: {str(archive)!r} has MD5 {got}, not the official {ARCHIVE}'s {expected_md5}; "
                         f"{HELP}")
    batches = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if member.isfile() and name in BATCHES:
                batches[name] = read_batch(tar.extractfile(member).read(), f"{archive}:{member.name}")
    missing = [b for b in BATCHES if b not in batches]
    if missing:
        raise ValueError(f"archive: {str(archive)!r} lacks {missing}; {HELP}")
    train = [batches[b] for b in BATCHES[:5]]
    arrays = {"train_x.npy": np.concatenate([x for x, _ in train]), "train_y.npy": np.concatenate([y for _, y in train]),
              "test_x.npy": batches["test_batch"][0], "test_y.npy": batches["test_batch"][1]}
    out.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        tmp = out / f".{name}.partial"
        with tmp.open("wb") as f:
            np.save(f, arr, allow_pickle=False)
        tmp.replace(out / name)
    return {name: arr.shape for name, arr in arrays.items()}


def files(root: Path, uri: str) -> list[str]:
    """The files `load` reads in `root`: the arrays when all are there, else the six python batches."""
    if all((root / a).is_file() for a in ARRAYS):
        return list(ARRAYS)
    if all((root / b).is_file() for b in BATCHES):
        return BATCHES
    raise FileNotFoundError(f"data.name: {uri!r} holds neither {list(ARRAYS)} nor the python batches; {HELP}")


def load(root: Path, uri: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) as uint8 N x 3 x 32 x 32 and int64."""
    if files(root, uri)[0] == ARRAYS[0]:
        return tuple(np.load(root / a, allow_pickle=False) for a in ARRAYS)
    train = [read_batch((root / b).read_bytes(), f"{uri}/{b}") for b in BATCHES[:5]]
    x, y = read_batch((root / "test_batch").read_bytes(), f"{uri}/test_batch")
    return np.concatenate([a for a, _ in train]), np.concatenate([b for _, b in train]), x, y
