"""Reading and validating IDX files (gzipped or raw), and their checksums.

IDX is the format MNIST ships in: a big-endian header (magic, then one uint32
per dimension) followed by the raw unsigned bytes. Only the two layouts MNIST
uses are accepted: images (magic 0x00000803, [count, rows, cols]) and labels
(magic 0x00000801, [count]).

Checksums are SHA-256 of the *decompressed* content, as in `SHA256SUMS`, so a
file verifies the same whether it is stored gzipped or raw. Verifications are
remembered in a small JSON stamp in the user cache directory, keyed by the
file's path, size and mtime, so later runs skip the hashing.
"""

import gzip
import hashlib
import json
import os
from pathlib import Path
import struct
import tempfile
import zlib

import numpy as np

from mnist_tf2.errors import DataError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
_NDIM = {IMAGES_MAGIC: 3, LABELS_MAGIC: 1}
_GZIP_MAGIC = b"\x1f\x8b"


def read_content(path) -> bytes:
  """Returns the bytes of `path`, decompressed if it is gzipped.

  Gzip is detected by its magic bytes, not by the file name, so a raw file
  called `*.gz` (or a gzipped one without the suffix) still reads correctly.
  """
  data = Path(path).read_bytes()
  if data[:2] != _GZIP_MAGIC:
    return data
  try:
    return gzip.decompress(data)
  except (OSError, EOFError, zlib.error) as e:
    # A truncated download ends in EOFError, a corrupt one in zlib.error or
    # BadGzipFile (an OSError); users need the file name, not the traceback.
    raise DataError(f"{path}: corrupt or truncated gzip stream ({e})") from None


def content_sha256(content: bytes) -> str:
  """Returns the hex SHA-256 of already decompressed IDX content."""
  return hashlib.sha256(content).hexdigest()


def parse_idx(content: bytes, path) -> np.ndarray:
  """Parses decompressed IDX `content`; `path` only names the file in errors.

  Returns:
    A read-only uint8 array, [count, rows, cols] for images or [count] for
    labels, sharing memory with `content` (no copy).
  """
  if len(content) < 4:
    raise DataError(
        f"{path}: {len(content)} bytes is too short for an IDX header")
  (magic,) = struct.unpack(">I", content[:4])
  if magic not in _NDIM:
    raise DataError(
        f"{path}: bad magic number 0x{magic:08x}, expected 0x{IMAGES_MAGIC:08x}"
        f" (images) or 0x{LABELS_MAGIC:08x} (labels)")
  ndim = _NDIM[magic]
  header_size = 4 + 4 * ndim
  if len(content) < header_size:
    raise DataError(f"{path}: truncated IDX header, expected {header_size} "
                    f"bytes, found {len(content)}")
  shape = struct.unpack(f">{ndim}I", content[4:header_size])
  expected = header_size + int(np.prod(shape))
  if len(content) != expected:
    raise DataError(
        f"{path}: header says shape {list(shape)}, so expected {expected} "
        f"bytes of content, found {len(content)}")
  return np.frombuffer(content, np.uint8, offset=header_size).reshape(shape)


def read_idx(path, expected_sha256: str | None = None) -> np.ndarray:
  """Reads an IDX file, gzipped or raw, optionally verifying its checksum.

  Args:
    path: the file.
    expected_sha256: hex SHA-256 of the decompressed content, or None to skip
      the check. The check uses the same bytes that are parsed.

  Returns:
    uint8 array, [count, rows, cols] (images) or [count] (labels).

  Raises:
    DataError: unreadable gzip, bad magic, wrong size or checksum mismatch.
  """
  content = read_content(path)
  if expected_sha256 is not None:
    actual = content_sha256(content)
    if actual != expected_sha256.lower():
      raise DataError(f"{path}: SHA-256 of the decompressed content is "
                      f"{actual}, expected {expected_sha256}")
  return parse_idx(content, path)


def read_sha256sums(path) -> dict[str, str]:
  """Parses a `sha256sum`-style file into {file name: hex digest}."""
  sums = {}
  for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
    if not line.strip():
      continue
    parts = line.split()
    if len(parts) != 2 or len(parts[0]) != 64:
      raise DataError(f"{path}:{lineno}: expected '<sha256>  <name>', "
                      f"found {line!r}")
    # sha256sum marks binary mode with a leading '*' on the name.
    sums[parts[1].lstrip("*")] = parts[0].lower()
  return sums


def _stamp_path() -> Path:
  cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
  return Path(cache_home) / "mnist_tf2" / "verified.json"


def _stamp_key(path: Path, sha256: str) -> tuple[str, dict]:
  stat = path.stat()
  # The expected hash is part of the entry so a changed SHA256SUMS re-verifies.
  return str(path.resolve()), {
      "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}


def _read_stamps() -> dict:
  try:
    return json.loads(_stamp_path().read_text())
  except (OSError, ValueError):
    return {}


def _write_stamp(key: str, entry: dict) -> None:
  """Records a verification; does nothing if the cache is unwritable."""
  stamp = _stamp_path()
  try:
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamps = _read_stamps()
    stamps[key] = entry
    # Write-then-rename so concurrent readers never see half a JSON file.
    with tempfile.NamedTemporaryFile(
        "w", dir=stamp.parent, suffix=".tmp", delete=False) as f:
      json.dump(stamps, f, indent=1)
    os.replace(f.name, stamp)
  except OSError:
    pass


def read_idx_verified(path, expected_sha256: str) -> np.ndarray:
  """Like `read_idx(path, expected_sha256)`, hashing only on first use.

  A file whose path, size and mtime match an earlier successful verification
  against the same hash is trusted without hashing again.
  """
  path = Path(path)
  key, entry = _stamp_key(path, expected_sha256.lower())
  if _read_stamps().get(key) == entry:
    return read_idx(path)
  array = read_idx(path, expected_sha256)
  _write_stamp(key, entry)
  return array
