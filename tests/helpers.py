"""Shared test helpers (the fixtures are in conftest.py): paths to the bundled and shared
data, the one tolerance rule (``quantize.within_half_step``), an independent decoder of our
HDF files (plain h5py + EMAN2's formula), the CLI runner, and the test writers of input
files (MRC, mode-101 MRC, EER, IMAGIC, SPIDER, DM, SER)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, settings

from e2compress.cli import main
from e2compress.commands import VERBS
from e2compress.quantize import RenderRange, range_limits, within_half_step
from e2compress.restore import restored_sha256

F32 = np.float32
REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
REAL = SHARED / "data" / "real"
EMAN2_WRITTEN = SHARED / "data" / "eman2_written"
REAL_FILES = sorted(
    p for p in REAL.glob("*") if p.is_file() and p.name not in ("MANIFEST.md", "SHA256SUMS")
)
# Small real files with permissive licences, shipped with the tests (see tests/data/README.md):
# the core tests run on these in a clone without ../shared.
DATA = REPO / "tests" / "data"
CORE_FILES = sorted(p for p in DATA.glob("*") if p.is_file() and p.suffix != ".md")


def real_file_params() -> list[Any]:
    """Every real file as a pytest param: the bundled ones always, the rest of the shared
    corpus marked ``shared`` (skipped without ../shared)."""
    core = {p.name for p in CORE_FILES}
    params: list[Any] = [pytest.param(p, id=p.name) for p in CORE_FILES]
    params += [
        pytest.param(p, id=p.name, marks=pytest.mark.shared)
        for p in REAL_FILES
        if p.name not in core
    ]
    return params


Mapping = tuple[int, float, float, int]  # bits, rmin, rmax, stored_truncated


def eman_decode(path: Path) -> list[tuple[np.ndarray, Mapping | None]]:
    """Every image of ``path`` read with plain h5py and decoded with EMAN2's float32
    formula (spec §2.4), independently of e2compress's reader, with its stored mapping
    (None for float storage)."""
    f32 = np.float32
    out: list[tuple[np.ndarray, Mapping | None]] = []
    with h5py.File(path, "r") as f:
        images = f["MDF/images"]
        count = int(np.ravel(images.attrs["imageid_max"])[0]) + 1
        for i in range(count):
            group = images[str(i)]
            codes = group["image"][...]
            bits = int(np.ravel(group.attrs.get("EMAN.stored_renderbits", [0]))[0])
            if bits <= 0:
                out.append((codes.astype(f32), None))
                continue
            rmin = f32(np.ravel(group.attrs["EMAN.stored_rendermin"])[0])
            rmax = f32(np.ravel(group.attrs["EMAN.stored_rendermax"])[0])
            values = (codes.astype(f32) / f32(2**bits - 1)) * (rmax - rmin) + rmin
            truncated = int(np.ravel(group.attrs["EMAN.stored_truncated"])[0])
            out.append((values, (bits, float(rmin), float(rmax), truncated)))
    return out


def eman2_home() -> Path:
    """The real EMAN2 build named by ``$E2C_EMAN2``; skips the test when it is not set."""
    home = os.environ.get("E2C_EMAN2")
    if not home:
        pytest.skip("real EMAN2 not available (set E2C_EMAN2 to its build directory)")
    return Path(home).expanduser()


def eman2_read(path: Path, tmp: Path) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Every image of ``path`` as real EMAN2 reads it (float32 stack) and its headers.

    Runs the EMAN2 oracle (``../shared/tools/eman2``) built in ``$E2C_EMAN2`` as a
    subprocess (EMAN2 and h5py must never share a process); skips when it is not set.
    """
    root = eman2_home()
    npy, js = tmp / f"{path.stem}.eman2.npy", tmp / f"{path.stem}.eman2.json"
    oracle = [str(root / "venv/bin/python"), str(root / "eman2_oracle.py")]
    proc = subprocess.run(
        [*oracle, "read", str(path), str(npy), "--json", str(js)],
        capture_output=True,
        text=True,
        cwd=tmp,
        timeout=600,
    )
    assert proc.returncode == 0, f"EMAN2 could not read {path.name}: {proc.stderr[-2000:]}"
    headers = json.loads(js.read_text())
    return np.load(npy), headers if isinstance(headers, list) else [headers]


def assert_within_half_step(
    orig: np.ndarray, decoded: np.ndarray, mapping: Mapping | RenderRange
) -> int:
    """The library's one tolerance rule (``quantize.within_half_step``) holds for every
    pixel: within half a step inside the stored range, end values outside it. Checks the
    stored clamped count when ``mapping`` carries one; returns the clamped count."""
    rng = mapping if isinstance(mapping, RenderRange) else RenderRange(*mapping[:3])
    orig = np.asarray(orig)  # the source's own dtype, never a float32 view
    got = np.asarray(decoded).reshape(orig.shape)
    ok = within_half_step(orig, got, rng)
    bad = np.argwhere(~ok)
    if bad.size:
        first = tuple(bad[0])
        raise AssertionError(f"{len(bad)} pixels off, first {first}: {got[first]} vs {orig[first]}")
    lo, hi = range_limits(rng)
    wide = orig.astype(np.float64)
    clamped = int(np.count_nonzero((wide < lo) | (wide > hi)))
    if not isinstance(mapping, RenderRange):
        assert clamped == mapping[3]
    return clamped


def assert_file_within_half_step(
    path: Path, originals: list[np.ndarray], *, bits: int | None = None, clamped: int | None = 0
) -> list[Mapping | None]:
    """Every image of ``path``, decoded independently (:func:`eman_decode`), holds its
    original (in the original's dtype) by :func:`assert_within_half_step`; float storage
    (bits 0) holds it exactly in float32. ``bits`` checks the stored depth, ``clamped`` the
    stored count of clamped pixels of each image (None: any). Returns the mappings."""
    images = eman_decode(path)
    assert len(images) == len(originals)
    for (values, mapping), orig in zip(images, originals, strict=True):
        if bits is not None:
            assert (mapping[0] if mapping else 0) == bits
        if mapping is None:
            assert np.array_equal(values.reshape(orig.shape), np.asarray(orig, F32))
            continue
        count = assert_within_half_step(orig, values, mapping)
        assert clamped is None or count == clamped
    return [m for _, m in images]


TMP_SUFFIX = ".e2compress.tmp"  # the writer's temporary files: .<name>.e2compress.tmp


def temporaries(root: Path) -> list[Path]:
    """Every temporary file of the writer left anywhere under ``root``, sorted."""
    return sorted(p for p in root.rglob("*") if p.name.endswith(TMP_SUFFIX))


def listing(root: Path) -> set[str]:
    """The names in directory ``root``."""
    return {p.name for p in root.iterdir()}


def sha256(path: Path) -> str:
    """The SHA-256 of the file ``path`` (hex)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip_byte(path: Path, offset: int, mask: int = 0x01) -> None:
    """XOR the byte at ``offset`` of ``path`` with ``mask`` in place (a bit flip)."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ mask]))


def one_line(error: BaseException | pytest.ExceptionInfo[Any], path: Path | None = None) -> str:
    """The message of ``error``: one non-empty line, naming ``path`` when given."""
    message = str(error.value if isinstance(error, pytest.ExceptionInfo) else error)
    assert message
    assert "\n" not in message
    assert path is None or str(path) in message
    return message


class Hang(BaseException):
    """Raised by SIGALRM (a BaseException so that no reader can turn it into an error)."""


@contextmanager
def hard_timeout(seconds: int) -> Iterator[None]:
    """Raise :class:`Hang` in the main thread after ``seconds`` (a generous hang guard,
    never a timing assertion)."""

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def cli_args(*argv: object) -> list[str]:
    """``argv`` as text, with ``--settle 0`` first on a compression command line: the
    tests' inputs are written just before (the tests of --settle give their own, which
    comes later and wins)."""
    args = [str(a) for a in argv]
    if not args or args[0] not in (*VERBS, "watch"):
        args = ["--settle", "0", *args]
    return args


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """cli.main(argv) in-process; returns (exit status, stdout, stderr), never a traceback.
    The arguments go through :func:`cli_args`."""
    try:
        rc = main(cli_args(*argv))
    except SystemExit as exc:  # argparse errors, --help, --version
        rc = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert "Traceback" not in out
    return rc, out, err


def assert_restore_refused(
    capsys: pytest.CaptureFixture[str], archive: Path, tmp_path: Path
) -> str:
    """``e2compress restore`` of a damaged or hostile ``archive`` into a fresh directory:
    no byte-for-byte hash, exit status 1, one line on stderr, nothing on stdout and
    nothing written. Returns the line."""
    out = tmp_path / "out"
    out.mkdir()
    assert restored_sha256(archive) is None
    rc, stdout, err = run_cli(capsys, "restore", archive, out)
    assert (rc, stdout, err.count("\n")) == (1, "", 1)
    assert list(out.iterdir()) == []
    return err


FUZZ_SCALE = float(os.environ.get("E2C_FUZZ_EXAMPLES", "1"))


def fuzz_settings(examples: int, *suppress: HealthCheck, print_blob: bool = False) -> settings:
    """The fuzz tests' settings: ``examples`` times E2C_FUZZ_EXAMPLES examples,
    derandomised, no database, no deadline, the health checks ``suppress`` off."""
    return settings(
        max_examples=max(1, int(examples * FUZZ_SCALE)),
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=print_blob,
        suppress_health_check=list(suppress),
    )


def write_mrc(
    path: Path,
    data: np.ndarray,
    *,
    voxel_size: float | tuple[float, float, float] | None = None,
    origin: tuple[float, float, float] | None = None,
    ispg: int | None = None,
) -> Path:
    """Write ``data`` as an MRC file with mrcfile (NaN and huge pixels allowed): the one
    MRC writer of the tests. ``voxel_size`` (Å, one or x, y, z), ``origin`` (x, y, z) and
    the space group ``ispg`` go into the header when given."""
    with np.errstate(invalid="ignore", over="ignore"), mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)  # mrcfile's header statistics warn about NaN pixels
        if voxel_size is not None:
            m.voxel_size = voxel_size
        if origin is not None:
            m.header.origin.x, m.header.origin.y, m.header.origin.z = origin
        if ispg is not None:
            m.header.ispg = ispg
    return path


def write_mrc_4bit(path: Path, data: np.ndarray, voxel_size: float = 1.0) -> Path:
    """Write uint8 ``data`` (values 0..15, (ny, nx) or (nz, ny, nx)) as SerialEM's mode 101
    MRC: the header from mrcfile, then each row packed pixel by pixel as SerialEM's
    documentation says (first pixel of a pair in the low 4 bits, ``(nx + 1) // 2`` bytes
    a row, the last high nibble of an odd row zero)."""
    data = np.asarray(data, dtype=np.uint8)
    vol = data[None] if data.ndim == 2 else data
    assert vol.max(initial=0) <= 15
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.zeros(vol.shape if data.ndim == 3 else vol.shape[1:], np.uint8))
        m.voxel_size = voxel_size
        m.header.mode = 101
    packed = bytearray()
    for row in vol.reshape(-1, vol.shape[2]):
        for x in range(0, len(row), 2):
            high = int(row[x + 1]) if x + 1 < len(row) else 0
            packed.append(int(row[x]) | high << 4)
    with open(path, "r+b") as fh:
        fh.truncate(1024)
        fh.seek(1024)
        fh.write(bytes(packed))
    return path


EER_BITS = {65000: (8, 2, 2), 65001: (7, 2, 2)}


def eer_encode(
    events: np.ndarray, subpix: np.ndarray | None = None, run_bits: int = 7, sub_bits: int = 4
) -> bytes:
    """One EER frame's strip, written from the format's description (EMAN2's eerio.h,
    imagecodecs' ``imcd_eer_decode``): for each event in raster order a run of empty
    pixels in ``run_bits`` bits (a run of all ones means "more run, no event"), then its
    ``sub_bits`` sub-pixel bits; a final run reaches the frame's end. Bits are packed least
    significant first, the strip padded with zeros to a multiple of 8 bytes.

    Args:
        events: bool/0-1 (ny, nx) frame, at most one event a pixel.
        subpix: sub-pixel code of each event (raster order); default random.
    """
    flat = np.flatnonzero(np.asarray(events).reshape(-1))
    size = np.asarray(events).size
    if subpix is None:
        subpix = np.random.default_rng(len(flat)).integers(0, 2**sub_bits, len(flat))
    full = 2**run_bits - 1
    gaps = np.diff(np.concatenate([[-1], flat])) - 1  # empty pixels before each event
    tail = size - (int(flat[-1]) + 1 if len(flat) else 0)
    per = gaps // full + 1  # "more run" codes, then the event's code
    last = np.cumsum(per) - 1
    v = np.full(int(per.sum()), full, np.int64)
    w = np.full(len(v), run_bits, np.int64)
    v[last] = gaps % full | np.asarray(subpix, np.int64) << run_bits
    w[last] = run_bits + sub_bits
    ends = [full] * (tail // full) + ([tail % full] if tail % full else [])
    v = np.concatenate([v, np.array(ends, np.int64)])
    w = np.concatenate([w, np.full(len(ends), run_bits, np.int64)])
    bit = np.arange(w.max(initial=1))
    bits = ((v[:, None] >> bit) & 1).astype(np.uint8)[bit[None, :] < w[:, None]]
    raw = np.packbits(bits, bitorder="little").tobytes()
    return raw + b"\0" * (-len(raw) % 8)


def write_eer(
    path: Path,
    frames: np.ndarray,
    *,
    compression: int = 65001,
    metadata: dict[str, str] | None = None,
    bigtiff: bool = True,
) -> Path:
    """Write (n, ny, nx) 0/1 ``frames`` as an EER movie: one TIFF page a frame, one strip
    coded by :func:`eer_encode`, the acquisition metadata as XML in tag 65001 of page 0."""
    run_bits, horz, vert = EER_BITS.get(compression, (7, 2, 2))
    n, ny, nx = frames.shape
    meta = {
        "numberOfFrames": str(n),
        "sensorPixelSize.width": "8.2e-11",
        "sensorPixelSize.height": "8.2e-11",
        "sensorImageWidth": str(nx),
        "sensorImageHeight": str(ny),
    }
    meta.update(metadata or {})
    xml = (
        "<metadata>"
        + "".join(f'<item name="{k}">{v}</item>' for k, v in meta.items())
        + "</metadata>"
    )
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
        for k, frame in enumerate(frames):
            strip = eer_encode(frame, run_bits=run_bits, sub_bits=horz + vert)
            extra = [(65001, 7, None, xml.encode(), True)] if k == 0 else []
            if compression == 65002:
                extra += [
                    (65007, 3, 1, run_bits, True),
                    (65008, 3, 1, horz, True),
                    (65009, 3, 1, vert, True),
                ]
            # tifffile writes encoded strips only under a compression it knows: write
            # them as "deflate", then set the EER compression in each IFD
            tw.write(
                iter([strip]),
                shape=(ny, nx),
                dtype=bool,  # BitsPerSample 1: the TIFF default, which Falcon files leave unset
                compression="zlib",
                rowsperstrip=ny,
                extratags=extra,
                photometric="minisblack",
                metadata=None,
            )
    with tifffile.TiffFile(path) as tif:
        where = [page.tags[259].valueoffset for page in tif.pages]
    with open(path, "r+b") as fh:
        for offset in where:
            fh.seek(offset)
            fh.write(compression.to_bytes(2, "little"))
    return path


def plain_name(path: Path) -> str:
    """File name without a .bz2/.gz suffix."""
    return path.name.removesuffix(".bz2").removesuffix(".gz")


def true_images(path: Path) -> tuple[np.ndarray, ...]:
    """The images of ``path`` read with mrcfile/tifffile (independently of e2compress), as
    EMAN2 sees them: TIFF pages with rows flipped, MRC axes in (z, y, x) order from
    mapc/mapr/maps, ``.mrcs`` sections as separate images."""
    if plain_name(path).endswith((".tif", ".tiff")):
        data = tifffile.imread(path)
        pages = data[None] if data.ndim == 2 else data
        return tuple(np.ascontiguousarray(p[::-1]) for p in pages)
    with mrcfile.open(path, permissive=True) as mrc:
        data = np.array(mrc.data)
        axes = (int(mrc.header.mapc), int(mrc.header.mapr), int(mrc.header.maps))
    if axes != (1, 2, 3):
        # numpy axes 0, 1, 2 hold the file's sections, rows, columns = axes maps, mapr, mapc
        held = (axes[2], axes[1], axes[0])
        data = np.ascontiguousarray(data.transpose([held.index(a) for a in (3, 2, 1)]))
    if plain_name(path).endswith(".mrcs"):
        return tuple(data)
    return (data,)


# --------------------------------------------------------------------------- small writers
# Test-only writers of the older particle-stack formats and of Gatan DM files, so that
# tests can make files of any size, type and byte order. test_eman2_formats checks that
# real EMAN2 reads what they write as e2compress does (tests/data/eman2 holds files
# written by EMAN2 itself).

EMAN2_DATA = DATA / "eman2"


def formula_image(k: int, shape: tuple[int, ...]) -> np.ndarray:
    """Image ``k`` of the files in tests/data/eman2: ``arange * 0.25 + 1000 k - 37.5``."""
    n = int(np.prod(shape))
    values = np.arange(n, dtype=F32) * F32(0.25) + F32(1000 * k - 37.5)
    return values.reshape(shape)


def write_imagic(hed: Path, images: np.ndarray, order: str = "<", apix: float = 1.5) -> None:
    """IMAGIC-5 pair ``hed`` + ``.img`` of ``images`` (n, nz, ny, nx), float32 (REAL) or
    int16 (INTG), rows stored top line first as EMAN2 writes them."""
    n, nz, ny, nx = images.shape
    kind = {np.dtype(np.float32): b"REAL", np.dtype(np.int16): b"INTG"}[images.dtype]
    headers = bytearray()
    for k in range(n):
        words = np.zeros(256, order + "i4")
        words[0], words[1], words[3] = k + 1, n - 1 if k == 0 else 0, 1
        words[4:10] = (12, 5, 2026, 8, 0, 0)
        words[10], words[12], words[13], words[60], words[61] = nx * ny * 4, ny, nx, nz, n
        words[68] = 33686018 if order == "<" else 67372036
        raw = bytearray(words.tobytes())
        raw[56:60] = kind
        raw[488:500] = np.array([apix] * 3, order + "f4").tobytes()
        headers += raw
    hed.write_bytes(bytes(headers))
    data = images[:, :, ::-1].astype(images.dtype.newbyteorder(order))  # top line first
    hed.with_suffix(".img").write_bytes(data.tobytes())


def write_spider(path: Path, images: np.ndarray, order: str = "<", stack: bool = True) -> None:
    """SPIDER file of float32 ``images`` (n, nz, ny, nx): a stack, or (n == 1, ``stack``
    False) a single image, with EMAN2's header layout."""
    n, nz, ny, nx = images.shape
    lenbyt = nx * 4
    labrec = -(-1024 // lenbyt)
    labbyt = labrec * lenbyt

    def header(istack: float, maxim: float, imgnum: float) -> bytes:
        words = np.zeros(labbyt // 4, order + "f4")
        words[[0, 1, 4, 11, 12, 21, 22]] = (nz, ny, 3 if nz > 1 else 1, nx, labrec, labbyt, lenbyt)
        words[[23, 25, 26]] = (istack, maxim, imgnum)
        return words.tobytes()

    data = images.astype(np.dtype(np.float32).newbyteorder(order))
    with open(path, "wb") as fh:
        if not stack:
            assert n == 1
            fh.write(header(0, 0, 0) + data[0].tobytes())
            return
        fh.write(header(2, n, 0))
        for k in range(n):
            fh.write(header(-1, 0, k + 1) + data[k].tobytes())


def _dm_tag(version: int, name: str, payload: bytes, group: bool) -> bytes:
    head = bytes([20 if group else 21]) + len(name).to_bytes(2, "big") + name.encode()
    if version == 4:
        head += len(payload).to_bytes(8, "big")
    return head + payload


def _dm_group(version: int, entries: list[bytes]) -> bytes:
    count = len(entries).to_bytes(8 if version == 4 else 4, "big")
    return b"\x01\x00" + count + b"".join(entries)


_DM_SIMPLE = {"h": 2, "i": 3, "H": 4, "I": 5, "f": 6, "d": 7, "B": 10, "b": 9}
_DM_DATA = {"<i2": 1, "<f4": 2, "|u1": 6, "<i4": 7, "|i1": 9, "<u2": 10, "<u4": 11, "<f8": 12}


def _dm_data(version: int, info: list[int], payload: bytes) -> bytes:
    word = ">u8" if version == 4 else ">u4"
    return b"%%%%" + np.array([len(info), *info], word).tobytes() + payload


def _dm_value(version: int, value: Any) -> bytes:
    if isinstance(value, str):
        chars = np.frombuffer(value.encode("utf-16-le"), "<u2")
        return _dm_data(version, [20, 4, len(chars)], chars.tobytes())
    if isinstance(value, tuple):  # a struct of floats, as DM stores pairs
        info = [15, 0, len(value)] + [0, 6] * len(value)
        return _dm_data(version, info, np.array(value, "<f4").tobytes())
    if isinstance(value, float):
        return _dm_data(version, [7], np.array([value], "<f8").tobytes())
    return _dm_data(version, [3], np.array([value], "<i4").tobytes())


def _dm_tree(version: int, tree: dict[str, Any]) -> list[bytes]:
    out = []
    for name, value in tree.items():
        if isinstance(value, dict):
            out.append(_dm_tag(version, name, _dm_group(version, _dm_tree(version, value)), True))
        else:
            out.append(_dm_tag(version, name, _dm_value(version, value), False))
    return out


def write_dm(
    path: Path,
    data: np.ndarray,
    version: int = 4,
    scale: float = 0.25,
    unit: str = "nm",
    tags: dict[str, Any] | None = None,
    thumbnail: bool = True,
) -> None:
    """A DM3/DM4 file holding ``data`` (ny, nx) or (nz, ny, nx), stored top line first as
    DigitalMicrograph does, calibrated ``scale`` ``unit`` per pixel, with ``tags`` (nested
    dicts; str, int, float or tuple-of-floats values) under its ImageTags and, as
    DigitalMicrograph writes, an RGBA thumbnail before it (EMAN2 reads a 3-D DM4 as a
    stack only then)."""
    v = version

    def image(arr: np.ndarray, code: int, name: str, extra: dict[str, Any]) -> bytes:
        dims = arr.shape[::-1]
        elem = _DM_SIMPLE[arr.dtype.char] if code != 23 else 5
        calib = [
            _dm_tag(
                v,
                "",
                _dm_group(v, _dm_tree(v, {"Origin": 0.0, "Scale": scale, "Units": unit})),
                True,
            )
            for _ in dims
        ]
        stored = arr[..., ::-1, :] if arr.ndim >= 2 else arr  # DM stores the top line first
        image_data = [
            _dm_tag(
                v,
                "Calibrations",
                _dm_group(v, [_dm_tag(v, "Dimension", _dm_group(v, calib), True)]),
                True,
            ),
            _dm_tag(
                v,
                "Data",
                _dm_data(
                    v, [20, elem, arr.size], stored.astype(arr.dtype.newbyteorder("<")).tobytes()
                ),
                False,
            ),
            _dm_tag(v, "DataType", _dm_data(v, [5], np.array([code], "<u4").tobytes()), False),
            _dm_tag(
                v,
                "Dimensions",
                _dm_group(
                    v,
                    [
                        _dm_tag(v, "", _dm_data(v, [5], np.array([d], "<u4").tobytes()), False)
                        for d in dims
                    ],
                ),
                True,
            ),
            _dm_tag(
                v,
                "PixelDepth",
                _dm_data(v, [5], np.array([arr.dtype.itemsize], "<u4").tobytes()),
                False,
            ),
        ]
        entries = [
            _dm_tag(v, "ImageData", _dm_group(v, image_data), True),
            _dm_tag(v, "ImageTags", _dm_group(v, _dm_tree(v, extra)), True),
            _dm_tag(v, "Name", _dm_value(v, name), False),
        ]
        return _dm_tag(v, "", _dm_group(v, entries), True)

    images = []
    if thumbnail:
        images.append(image(np.zeros((8, 8), "<u4"), 23, "thumbnail", {}))
    code = _DM_DATA[data.dtype.newbyteorder("<").str if data.dtype.itemsize > 1 else data.dtype.str]
    images.append(image(data, code, path.stem, tags or {}))
    root_tags = [_dm_tag(v, "ImageList", _dm_group(v, images), True)]
    if thumbnail:  # where EMAN2 learns that image 0 is the thumbnail
        index = _dm_group(v, _dm_tree(v, {"ImageIndex": 0}))
        root_tags.append(
            _dm_tag(v, "Thumbnails", _dm_group(v, [_dm_tag(v, "", index, True)]), True)
        )
    root = _dm_group(v, root_tags)
    head = 16 if v == 4 else 12
    size = head + len(root) + 8  # DM files end with 8 zero bytes
    if v == 4:
        header = np.array([4], ">u4").tobytes() + np.array([size - 24], ">u8").tobytes()
    else:
        header = np.array([3, size - 16], ">u4").tobytes()
    path.write_bytes(header + np.array([1], ">u4").tobytes() + root + b"\0" * 8)


_SER_CODES = {"u1": 1, "<u2": 2, "<u4": 3, "i1": 4, "<i2": 5, "<i4": 6, "<f4": 7, "<f8": 8}


def write_ser(
    path: Path, images: np.ndarray, delta: float = 2e-10, valid: int | None = None
) -> None:
    """A TIA series file (version 0x0210) of ``images`` (n, ny, nx), or of spectra when
    ``images`` is (n, nx), in file row order, with ``delta`` metres per pixel; ``valid``
    elements (default all) are marked as written."""
    n = len(images)
    spectra = images.ndim == 2
    dtype = images.dtype.newbyteorder("<") if images.dtype.itemsize > 1 else images.dtype
    code = _SER_CODES[dtype.str.lstrip("|")]
    dims = struct.pack("<iddii", n, 0.0, 1.0, 0, 6) + b"Number" + struct.pack("<i", 0)
    head_size = 30 + len(dims)
    elements = []
    for img in images:
        if spectra:
            meta = struct.pack("<ddihi", 0.0, delta, 0, code, img.shape[0])
        else:
            ny, nx = img.shape
            meta = struct.pack("<ddiddihii", 0.0, delta, 0, 0.0, delta, 0, code, nx, ny)
        elements.append(meta + img.astype(dtype).tobytes())
    table = head_size
    first = table + 8 * n
    data_offsets, pos = [], first
    for e in elements:
        data_offsets.append(pos)
        pos += len(e)
    tag_offsets = [pos + 6 * k for k in range(n)]
    kind = 0x4120 if spectra else 0x4122
    head = struct.pack(
        "<hhhiiiiii",
        0x4949,
        0x0197,
        0x0210,
        kind,
        0x4152,
        n,
        n if valid is None else valid,
        table,
        1,
    )
    offsets = struct.pack(f"<{n}i", *data_offsets) + struct.pack(f"<{n}i", *tag_offsets)
    tags = b"".join(struct.pack("<hi", 0x4152, 1000 + k) for k in range(n))
    path.write_bytes(head + dims + offsets + b"".join(elements) + tags)


def assert_blocks_consistent(path: Path) -> None:
    """Every block of rows ``read(i, z, y0, y1)`` of every image of ``path`` equals those
    rows of the whole image (the pipeline reads blocks; the readers flip rows)."""
    from e2compress import open_source

    with open_source(path) as src:
        for i in range(len(src)):
            nz, ny, nx = src.shape(i)
            whole = src.image(i).reshape(nz, ny, nx)
            for z in range(nz):
                for y0 in range(ny):
                    for y1 in range(y0 + 1, ny + 1):
                        block = src.read(i, z, y0, y1)
                        assert block.shape == (y1 - y0, nx)
                        np.testing.assert_array_equal(block, whole[z, y0:y1])


def assert_keys_kept(src_path: Path, out: Path) -> None:
    """Every header key of every source image is in the output's header for that image,
    with its value: per image, or once for the stack (``Group.``) when all agree."""
    import e2compress
    from e2compress import open_source

    with open_source(src_path) as src, e2compress.open(out) as hdf:
        assert len(hdf) == len(src)
        for i in range(len(src)):
            got = hdf.header(i)
            for key, value in src.header(i).items():
                stored = got[key] if key in got else got[f"Group.{key}"]
                if isinstance(value, str):
                    assert stored == value, key
                else:
                    assert float(stored) == pytest.approx(float(value), nan_ok=True), key


# --------------------------------------------------------------------------- the spec's range rule
# An independent float32 implementation of the range choice of the format spec
# (../shared/docs/eman2_hdf_format.md §2.2 EMUtil::getRenderMinMax, §3 --nooutliers), with
# e2compress's one deliberate difference (docs/format.md: case 4 keeps [min, max] instead of
# EMAN2's [0, 0]). The golden tests check the stored ranges against it.


def _round_half_away(x: np.float32) -> np.float32:
    return F32(np.sign(x) * np.floor(np.abs(x) + F32(0.5)))


def spec_nooutliers_limits(image: np.ndarray) -> tuple[float, float]:
    """``--nooutliers`` limits (spec §3): a 1024-bin histogram over [min, max] (bin =
    round((v - h0) * 1023 / (h1 - h0))), and each end moved in while at most
    max(n // 20000, 8) pixels lie beyond it."""
    v = np.asarray(image, F32).reshape(-1)
    h0, h1 = float(v.min()), float(v.max())
    maxout = max(v.size // 20000, 8)
    scale = F32(1023) / (F32(h1) - F32(h0))
    index = np.clip(np.vectorize(_round_half_away)((v - F32(h0)) * scale), 0, 1023)
    hist = np.bincount(index.astype(np.int64), minlength=1024)
    sl = next((j for j in range(512) if hist[: j + 1].sum() > maxout), 511)
    sh = next((j for j in range(1023, 512, -1) if hist[j:].sum() > maxout), 513)
    hs = (h1 - h0) / 1023
    return h0 + sl * hs, h0 + sh * hs


def spec_render_range(
    image: np.ndarray, bits: int, limits: tuple[float, float] | None = None
) -> tuple[float, float, int]:
    """(rmin, rmax, clamped pixels) the spec's decision chain gives ``image`` at ``bits``,
    with requested ``limits`` (None: none), all in float32 (spec §2.2)."""
    v = np.asarray(image).astype(F32).reshape(-1)
    lo, hi = (F32(limits[0]), F32(limits[1])) if limits is not None else (F32(0), F32(0))
    has_limits = limits is not None and hi > lo and max(abs(lo), abs(hi)) <= 1e28
    clamped = np.clip(v, lo, hi) if has_limits else v
    vmin, vmax = F32(clamped.min()), F32(clamped.max())
    levels = F32(2**bits - 1)
    if vmax - vmin == F32(1):
        rmin, rmax = vmin, vmax
    elif np.all(clamped == np.trunc(clamped)):
        if vmax - vmin < F32(2**bits):
            rmin, rmax = vmin, vmin + levels
        else:
            needed = math.ceil(math.log2(float(vmax - vmin) + 1))
            step = F32(2.0 ** (needed - bits))
            rmin = _round_half_away(vmin / step) * step if vmin < 0 < vmax else vmin
            rmax = rmin + step * levels
    elif vmin < 0 < vmax:
        step1 = (vmax - vmin) / levels
        if vmin == F32(np.floor(vmin / step1)) * step1:
            rmin, rmax = vmin, vmax
        else:
            step = (vmax - vmin) / F32(2**bits - 2)
            rmin = F32(np.floor(vmin / step)) * step
            rmax = rmin + step * levels
    elif has_limits:
        rmin, rmax = lo, hi
    else:  # EMAN2 stores [0, 0] here (its bug); e2compress keeps the data's range
        rmin, rmax = vmin, vmax
    rmin, rmax = F32(rmin), F32(rmax)
    outside = int(np.count_nonzero((v < rmin) | (v > rmax)))
    return float(rmin), float(rmax), outside
