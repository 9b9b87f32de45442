"""Issue 12 (follow-up): the loader's fast .npy member parsing gives exactly np.load's arrays."""
from __future__ import annotations

import io

import numpy as np
import pytest

from pipeline.storage import load_npy


def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


ARRAYS = [
    np.arange(7, dtype=np.int32), np.zeros((0, 3), np.int32), np.zeros((0,), np.float32),
    np.arange(30, dtype=np.int64).reshape(3, 10), np.array([1.5, 2.0], np.float32),
    np.arange(24, dtype=np.uint8).reshape(2, 3, 4), np.array(5, np.int32), np.array([True, False]),
    np.arange(6, dtype=">i4"), np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
    np.zeros((1, 2 ** 16), np.uint8),
]


@pytest.mark.parametrize("a", ARRAYS, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_load_npy_equals_np_load(a):
    got = load_npy(_npy(a))
    want = np.load(io.BytesIO(_npy(a)), allow_pickle=False)
    assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
    assert got.flags.writeable and got.flags.c_contiguous == want.flags.c_contiguous


def test_load_npy_rejects_what_np_load_rejects():
    blob = _npy(np.arange(10, dtype=np.int32))
    for bad in (blob[:-4], blob[:20], b"not an npy member"):
        with pytest.raises((ValueError, OSError, EOFError)):
            load_npy(bad)


def _tar(tmp_path, members, fmt):
    import tarfile

    path = tmp_path / f"t{fmt}.tar"
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        d = tarfile.TarInfo("adir")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
    return path


@pytest.mark.parametrize("fmt", [0, 1, 2], ids=["ustar", "gnu", "pax"])
def test_tar_members_reads_what_tarfile_reads(tmp_path, fmt):
    import tarfile

    from pipeline.loader import tar_members

    rng = np.random.default_rng(0)
    members = [(f"s{i:03d}.input_ids.npy", rng.bytes(int(rng.integers(0, 3000)))) for i in range(5)]
    if fmt != 0:
        members.append(("d" * 120 + ".meta.json", b"{}"))  # long name: a GNU / pax header
    members.append(("x/" + "p" * 95 + ".bin", b"abc" * 700))   # ustar: prefix + name
    if fmt == 2:
        members.append(("ünï.meta.json", b"{}"))
    path = _tar(tmp_path, members, fmt)
    with tarfile.open(path) as tar:
        want = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
    with open(path, "rb") as f:
        got = list(tar_members(f))
    assert got == want and [n for n, _ in got] == [n for n, _ in members]


def test_tar_members_refuses_damage(tmp_path):
    import tarfile

    from pipeline.loader import tar_members

    path = _tar(tmp_path, [("a.npy", b"x" * 2000), ("b.npy", b"y" * 10)], 1)
    blob = path.read_bytes()
    for bad in (blob[:1200], blob[:700], bytearray(blob)):
        if isinstance(bad, bytearray):
            bad[600] ^= 0xFF          # inside the first member's data: fine; flip a header byte instead
            bad[600] ^= 0xFF
            bad[10] ^= 0x01
        with pytest.raises(tarfile.ReadError):
            list(tar_members(io.BytesIO(bytes(bad))))
    assert list(tar_members(io.BytesIO(blob[:2560]))) == [("a.npy", b"x" * 2000)]   # ends on a boundary
