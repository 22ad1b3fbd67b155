"""The IDX file format of MNIST and Fashion-MNIST (LeCun et al.), gzipped or not."""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """A data file or directory is missing, corrupt, or not the file it claims to be."""


# IDX format (LeCun et al.): magic 00 00 <type> <ndim>, ndim big-endian uint32 sizes, data.

IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped when its name ends in ``.gz``) into a native-endian array.

    Raises ``DataError`` naming the file and the fault: bad gzip stream, bad magic, a header
    shorter than its dimensions, or a data size that disagrees with the header.
    """
    path = Path(path)
    return parse_idx(read_idx_bytes(path), source=str(path))


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an IDX file; ``source`` names it in error messages."""
    if len(data) < 4:
        raise DataError(f"{source}: {len(data)} bytes, too short for the 4-byte IDX magic")
    zero, type_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or type_code not in IDX_DTYPES:
        raise DataError(
            f"{source}: bad IDX magic {data[:4].hex(' ')}; expected 00 00 <type> <ndim> "
            f"with type one of {', '.join(f'{t:02x}' for t in IDX_DTYPES)}"
        )
    if ndim == 0:
        raise DataError(f"{source}: IDX header declares 0 dimensions")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(
            f"{source}: IDX header declares {ndim} dimensions ({header_size} header bytes), "
            f"but the file has only {len(data)} bytes"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, offset=4))
    dtype = IDX_DTYPES[type_code]
    expected = int(np.prod(shape)) * dtype.itemsize
    found = len(data) - header_size
    if found != expected:
        raise DataError(
            f"{source}: expected {expected} bytes of data after the header for shape "
            f"{shape}, found {found}"
        )
    array = np.frombuffer(data, dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a writable copy in native byte order


def read_idx_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when its name ends in ``.gz``."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from None
    if path.suffix != ".gz":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        raise DataError(f"{path}: not a valid gzip file ({err})") from None
