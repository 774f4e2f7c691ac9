"""The contract every reader keeps (issue 15), run over every kind of file (mrcfile's
habit): :class:`ReaderContract` holds the tests; each subclass only says how to make its
file, what its images truly are, and how its header can claim more images than the
file holds.

The contract: ``len``/``shape``/``dtype`` agree with the truth; every block of rows
``read(i, z, y0, y1)`` equals those rows of ``image(i)``; the images equal the truth
(the arrays the test writers were given, or the formula of the files real EMAN2 wrote);
four threads reading at once get the same; ``close()`` twice is harmless and reading
afterwards is an InputError; opened with ``keep``, the kept bytes and the pixels rebuild
the file byte for byte (compressed at bits 0 and restored; for formats that cannot be,
``kept()`` says why); a file cut short by one byte, or whose header claims more images
than it holds (up to about 2**31), is one InputError line naming the file, with nothing
allocated from the claim.

Truth: arrays written here with mrcfile/tifffile or the small writers in conftest, and
tests/data/eman2 (written by real EMAN2, values by formula).
"""

from __future__ import annotations

import bz2
import gzip
import importlib.util
import os
import shutil
import struct
import threading
import tracemalloc
from pathlib import Path
from typing import Any, ClassVar

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile

from e2compress import InputError, compress_file, open_source
from e2compress.readers import ImageSource, companions, strip_compression
from e2compress.restore import restore_file, restored_sha256
from helpers import (
    CORE_FILES,
    DATA,
    EMAN2_DATA,
    assert_blocks_consistent,
    formula_image,
    true_images,
    write_dm,
    write_eer,
    write_imagic,
    write_mrc_4bit,
    write_ser,
    write_spider,
)
from test_restore_formats import assert_restores_byte_for_byte, compress

HUGE = 2**31 - 1  # a count no file of these tests holds
ALLOCATION_LIMIT = 8 << 20  # bytes a refused open may allocate (the files are < 100 KB)
THREADS = 4
needs_ncempy = pytest.mark.skipif(
    importlib.util.find_spec("ncempy") is None, reason="needs the optional extras dm/ser (ncempy)"
)
needs_imagecodecs = pytest.mark.skipif(
    importlib.util.find_spec("imagecodecs") is None, reason="needs imagecodecs"
)


def _rng_values(dtype: Any, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Values of ``dtype`` over its whole range (integers) or spread widely (floats)."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dt)
    return (rng.standard_normal(shape) * 1e3).astype(dt)


def _patch(path: Path, offset: int, fmt: str, value: Any) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(struct.pack(fmt, value))


def _last_used_byte(path: Path) -> int:
    """The end of the last IFD, tag value or strip of a TIFF."""
    ends = []
    with tifffile.TiffFile(path) as tif:
        fmt = tif.tiff
        for page in tif.pages:
            ends.append(page.offset + fmt.tagnosize + len(page.tags) * fmt.tagsize + fmt.offsetsize)
            for tag in page.tags:
                ends.append(tag.valueoffset + tag.valuebytecount)
            ends += [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=True)]
    return max(ends)


def _set_next_ifd(path: Path, value: int) -> None:
    """Point the last IFD of a TIFF at ``value`` (a page the file does not hold)."""
    with tifffile.TiffFile(path) as tif:
        fmt = tif.tiff
        page = tif.pages[-1]
        raw = path.read_bytes()[page.offset : page.offset + fmt.tagnosize]
        count = struct.unpack(fmt.tagnoformat, raw)[0]
        where = page.offset + fmt.tagnosize + count * fmt.tagsize
        order = tif.byteorder
    _patch(path, where, order + fmt.offsetformat[-1], value)


class ReaderContract:
    """The tests every reader passes. Subclasses set :meth:`make` and may set
    :meth:`claim`, :attr:`restorable`, :attr:`open_args`."""

    # True: the kept bytes rebuild the file byte for byte at bits 0; False: kept()
    # says why not; None: kept() is not about this file's bytes (EMAN2 HDF)
    restorable: ClassVar[bool | None] = True
    # the archive says "byte for byte" (a compressed TIFF's: "strips encoded again", and
    # restore finds out whether they came back the same)
    byte_note = True
    open_args: ClassVar[dict[str, Any]] = {}

    def make(self, tmp: Path) -> tuple[Path, list[np.ndarray]]:
        """Write the file in ``tmp``; return it and its true images ((ny, nx) or
        (nz, ny, nx), in the dtype the reader must return)."""
        raise NotImplementedError

    def claim(self, path: Path, count: int) -> bool:
        """Make ``path``'s header claim ``count`` images (or sections); False when the
        format has no such field."""
        return False

    def cut(self, path: Path) -> None:
        """Cut the file (an IMAGIC pair: its ``.img``) short by one byte."""
        victim = companions(path)[-1] if companions(path) else path
        victim.write_bytes(victim.read_bytes()[:-1])

    # ----------------------------------------------------------------- fixtures

    @pytest.fixture
    def made(self, tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
        return self.make(tmp_path)

    def open(self, path: Path, **kw: Any) -> ImageSource:
        return open_source(path, scratch_dir=path.parent, **self.open_args, **kw)

    # ----------------------------------------------------------------- the contract

    def test_len_shape_dtype(self, made: tuple[Path, list[np.ndarray]]) -> None:
        path, truth = made
        with self.open(path) as src:
            assert len(src) == len(truth)
            for i, want in enumerate(truth):
                assert src.shape(i) == ((1, *want.shape) if want.ndim == 2 else want.shape)
                assert src.dtype(i) == want.dtype
                assert src.dtype(i).isnative

    def test_images_equal_the_truth(self, made: tuple[Path, list[np.ndarray]]) -> None:
        path, truth = made
        with self.open(path) as src:
            for got, want in zip(src, truth, strict=True):
                assert got.dtype == want.dtype
                np.testing.assert_array_equal(got, want)

    def test_blocks_equal_the_image(self, made: tuple[Path, list[np.ndarray]]) -> None:
        """Every block of rows of every section equals those rows of ``image(i)``:
        all blocks of small images (conftest.assert_blocks_consistent), a partition into
        blocks of 1-3 rows and 20 random blocks of larger ones."""
        path, _ = made
        with self.open(path) as src:
            if all(src.shape(i)[1] <= 16 for i in range(len(src))) and len(src) <= 4:
                assert_blocks_consistent(path)
                return
            rng = np.random.default_rng(0)
            for i in range(len(src)):
                nz, ny, nx = src.shape(i)
                whole = src.image(i).reshape(nz, ny, nx)
                cuts = np.unique(np.concatenate([[0, ny], np.cumsum(rng.integers(1, 4, ny))]))
                blocks = list(zip(cuts[:-1], np.minimum(cuts[1:], ny), strict=True))
                blocks += [tuple(sorted(rng.choice(ny + 1, 2, replace=False))) for _ in range(20)]
                for z in range(nz):
                    for y0, y1 in blocks:
                        if y0 < y1:
                            got = src.read(i, z, int(y0), int(y1))
                            np.testing.assert_array_equal(got, whole[z, y0:y1])

    def test_threads_read_the_same(self, made: tuple[Path, list[np.ndarray]]) -> None:
        """Blocks read by several threads at once, each in its own order, are right."""
        path, truth = made
        errors: list[BaseException] = []
        with self.open(path, keep=True) as src:

            def work(seed: int) -> None:
                try:
                    order = np.random.default_rng(seed).permutation(len(truth) * 3)
                    for k in order:
                        i = int(k) % len(truth)
                        nz, ny, _ = src.shape(i)
                        want = truth[i].reshape(nz, ny, -1)
                        for z in range(nz):
                            for y0 in range(0, ny, 2):
                                block = src.read(i, z, y0, min(ny, y0 + 2))
                                np.testing.assert_array_equal(block, want[z, y0 : y0 + 2])
                except BaseException as exc:  # reported in the main thread
                    errors.append(exc)

            threads = [threading.Thread(target=work, args=(s,)) for s in range(THREADS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            assert not any(t.is_alive() for t in threads)
        assert errors == []

    def test_close_twice_then_read_fails_clearly(self, made: tuple[Path, list[np.ndarray]]) -> None:
        path, _ = made
        src = self.open(path, keep=True)
        src.image(0)
        src.close()
        src.close()
        reuse = [os.open(each, os.O_RDONLY) for each in (path, *companions(path))]
        try:  # the closed source's descriptor numbers now name these: never read them
            with pytest.raises(InputError) as err:
                src.image(len(src) - 1)
        finally:
            for fd in reuse:
                os.close(fd)
        assert "\n" not in str(err.value)
        assert str(path) in str(err.value)

    def test_kept_rebuilds_the_file(self, made: tuple[Path, list[np.ndarray]]) -> None:
        path, _ = made
        if self.restorable is None:
            pytest.skip("kept() of this format carries another file's record")
        if not self.restorable:
            with self.open(path, keep=True) as src:
                for i in range(len(src)):
                    src.image(i)
                kept = src.kept()
            assert kept is not None
            assert kept.layout.problem
            return
        archive = compress(path, 0)
        name = strip_compression(path.name)
        if name != path.name or companions(path) or not self.byte_note:
            out = path.parent / "restored"
            out.mkdir()
            result = restore_file(archive, out)
            assert result.byte_identical
            written = {w.name: w.read_bytes() for w in (result.path, *result.others)}
            originals = {strip_compression(o.name): o for o in (path, *companions(path))}
            assert written.keys() == originals.keys()
            for name, original in originals.items():
                assert written[name] == _plain_bytes(original)
            if self.byte_note:
                assert restored_sha256(archive) is not None
        else:
            assert_restores_byte_for_byte(path, archive, path.parent / ("r" + path.suffix))

    @pytest.mark.parametrize("count", ["one more", "huge"])
    def test_claiming_more_images_is_one_line(
        self, made: tuple[Path, list[np.ndarray]], count: str
    ) -> None:
        path, truth = made
        if not self.claim(path, len(truth) + 1 if count == "one more" else HUGE):
            pytest.skip("the format's header has no image count")
        self._refused(path)

    def test_cut_short_by_one_byte_is_one_line(self, made: tuple[Path, list[np.ndarray]]) -> None:
        path, _ = made
        self.cut(path)
        self._refused(path)

    def _refused(self, path: Path) -> None:
        before = sorted(path.parent.iterdir())
        tracemalloc.start()
        try:
            with pytest.raises(InputError) as err:
                self.open(path, keep=True).close()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        message = str(err.value)
        assert "\n" not in message
        assert str(path) in message
        assert peak < ALLOCATION_LIMIT, peak
        assert sorted(path.parent.iterdir()) == before  # nothing written (no scratch file)


def _plain_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        return gzip.decompress(raw)
    if path.name.endswith(".bz2"):
        return bz2.decompress(raw)
    return raw


# --------------------------------------------------------------------------- MRC

MRC_MODES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}


def write_mrc_file(path: Path, data: np.ndarray, order: str, ext: bytes = b"") -> Path:
    """``data`` as an MRC file in byte order ``order`` (mrcfile follows the data's byte
    order), with extended header ``ext``."""
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.zeros((1, 1), np.dtype(np.int16).newbyteorder(order)))
        m.set_data(data.astype(data.dtype.newbyteorder(order)))
        if ext:
            m.set_extended_header(np.frombuffer(ext, dtype="V1"))
    return path


def _mrc_claim(path: Path, count: int) -> bool:
    """nz (int32 at byte 8) in the header's byte order."""
    order = "<" if path.read_bytes()[212] == 0x44 else ">"
    _patch(path, 8, order + "i", count)
    return True


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("mode", sorted(MRC_MODES))
class TestMrcStack(ReaderContract):
    """A ``.mrcs`` stack of every MRC mode, either byte order, with an extended header.
    Mode 0 is signed here: mrcfile writes nversion 20140 (MRC2014)."""

    mode: int
    order: str

    @pytest.fixture(autouse=True)
    def _params(self, mode: int, order: str) -> None:
        self.mode, self.order = mode, order

    def make(self, tmp: Path) -> tuple[Path, list[np.ndarray]]:
        data = _rng_values(MRC_MODES[self.mode], (3, 7, 5), seed=self.mode)
        path = write_mrc_file(tmp / "s.mrcs", data, self.order, bytes(range(160)))
        return path, list(data)

    def claim(self, path: Path, count: int) -> bool:
        return _mrc_claim(path, count)


class TestMrcVolume(ReaderContract):
    """A 3-D ``.mrc`` map: one image of nz sections; the claim is more sections."""

    def make(self, tmp: Path) -> tuple[Path, list[np.ndarray]]:
        data = _rng_values(np.float32, (4, 6, 9), seed=7)
        return write_mrc_file(tmp / "v.mrc", data, "<"), [data]

    def claim(self, path: Path, count: int) -> bool:
        return _mrc_claim(path, count)


class TestMrcMode101(ReaderContract):
    """SerialEM's packed 4-bit stack, odd nx (each row padded); not restorable."""

    restorable = False

    def make(self, tmp: Path) -> tuple[Path, list[np.ndarray]]:
        data = np.random.default_rng(3).integers(0, 16, (3, 6, 7)).astype(np.uint8)
        return write_mrc_4bit(tmp / "c.mrcs", data), list(data)

    def claim(self, path: Path, count: int) -> bool:
        return _mrc_claim(path, count)


@pytest.mark.parametrize("suffix", [".gz", ".bz2"])
class TestMrcCompressed(ReaderContract):
    """A ``.mrcs.gz``/``.bz2`` stack; cut short, its stream is corrupt. A huge claim
    is left out: decompressing refuses it as an output problem (no room in the scratch
    directory for what the header says), not an input one."""

    suffix: str

    @pytest.fixture(autouse=True)
    def _params(self, suffix: str) -> None:
        self.suffix = suffix

    def make(self, tmp: Path) -> tuple[Path, list[np.ndarray]]:
        data = _rng_values(np.float32, (3, 8, 6), seed=11)
        plain = write_mrc_file(tmp / "s.mrcs", data, "<", bytes(64))
        path = self._pack(plain)
        return path, list(data)

    def _pack(self, plain: Path) -> Path:
        raw = plain.read_bytes()
        path = plain.with_name(plain.name + self.suffix)
        path.write_bytes(gzip.compress(raw, 1) if self.suffix == ".gz" else bz2.compress(raw, 1))
        plain.unlink()
        return path

    def claim(self, path: Path, count: int) -> bool:
        if count == HUGE:
            return False
        plain = path.with_name(strip_compression(path.name))
        plain.write_bytes(_plain_bytes(path))
        _mrc_claim(plain, count)
        path.unlink()
        self._pack(plain)
        return True


@pytest.mark.parametrize("name", [p.name for p in CORE_FILES])
class TestBundled(ReaderContract):
    """The real files in tests/data (an EMDB map with axis order 3,1,2 and an extended
    header, a pre-2014 map and its .bz2, a 36-page ImageJ TIFF); truth read by
    mrcfile/tifffile (conftest.true_images)."""

    name: str

    @pytest.fixture(autouse=True)
    def _params(self, name: str) -> None:
        self.name = name

    def make(self, tmp: Path) -> tuple[Path, list[np.ndarray]]:
        path = tmp / self.name
        shutil.copyfile(DATA / self.name, path)
        return path, [np.asarray(t, t.dtype.newbyteorder("=")) for t in true_images(path)]

    def claim(self, path: Path, count: int) -> bool:
        if path.suffix in (".tif", ".tiff"):
            return TestTiff.claim(self, path, count)  # type: ignore[arg-type]
        if path.suffix == ".bz2":
            return False  # see TestMrcCompressed
        return _mrc_claim(path, count)

    def cut(self, path: Path) -> None:
        if path.suffix in (".tif", ".tiff"):
            TestTiff.cut(self, path)  # type: ignore[arg-type]
        else:
            super().cut(path)


# --------------------------------------------------------------------------- TIFF


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("compression", [None, "lzw"])
class TestTiff(ReaderContract):
    """A multi-page TIFF of each pixel type, plain or LZW (several strips a page); rows
    bottom-up as EMAN2 reads them. The claim: the last IFD points to another page."""

    dtype: str
    compression: str | None

    @pytest.fixture(autouse=True)
    def _params(self, dtype: str, compression: str | None) -> None:
        self.dtype, self.compression = dtype, compression
        self.byte_note = compression is None
        if compression is not None and importlib.util.find_spec("imagecodecs") is None:
            pytest.skip("LZW needs imagecodecs")

    def make(self, tmp: Path) -> tuple[Path, list[np.ndarray]]:
        data = _rng_values(self.dtype, (3, 9, 6), seed=5)
        if self.compression is not None:  # compressible: repeated rows
            data[:, 1::2] = data[:, ::2][:, : data[:, 1::2].shape[1]]
        path = tmp / "t.tif"
        tifffile.imwrite(
            path, data, compression=self.compression, rowsperstrip=4, photometric="minisblack"
        )
        return path, [np.ascontiguousarray(d[::-1]) for d in data]

    def claim(self, path: Path, count: int) -> bool:
        _set_next_ifd(path, 2**32 - 1 if count == HUGE else path.stat().st_size + 8)
        return True

    def cut(self, path: Path) -> None:
        """tifffile leaves bytes no IFD refers to at the end of a file (tag values it
        wrote again elsewhere): the file is cut one byte short of its last byte in use."""
        path.write_bytes(path.read_bytes()[: _last_used_byte(path) - 1])


@needs_imagecodecs
class TestEer(ReaderContract):
    """An EER movie (the test encoder), one image a frame; not restorable."""

    restorable = False

    def make(self, tmp: Path) -> tuple[Path, list[np.ndarray]]:
        frames = (np.random.default_rng(2).random((3, 16, 12)) < 0.1).astype(np.uint8)
        return write_eer(tmp / "m.eer", frames), list(frames)

    def claim(self, path: Path, count: int) -> bool:
        _set_next_ifd(path, 2**63 - 1 if count == HUGE else path.stat().st_size + 8)
        return True


# --------------------------------------------------------------------------- EMAN2 HDF


class TestEmanHdf(ReaderContract):
    """Our own EMAN2 HDF output of a float32 stack at bits 0 (values stored exactly).
    Its kept() is the record of the file it was made from, not of itself."""

    restorable = None

    def make(self, tmp: Path) -> tuple[Path, list[np.ndarray]]:
        data = _rng_values(np.float32, (3, 8, 6), seed=13)
        src = write_mrc_file(tmp / "s.mrcs", data, "<")
        path = tmp / "s.hdf"
        compress_file(src, path, bits=0, threads=1)
        src.unlink()
        return path, list(data)

    def claim(self, path: Path, count: int) -> bool:
        with h5py.File(path, "r+") as f:
            f["MDF/images"].attrs["imageid_max"] = np.array([count - 1], np.int32)
        return True


# --------------------------------------------------------------------------- IMAGIC, SPIDER


def _imagic_claim(path: Path, count: int) -> bool:
    """count (word 2, images - 1) of the first header, in the file's byte order."""
    hed = path.with_suffix(".hed")
    order = "<" if struct.unpack("<i", hed.read_bytes()[12:16])[0] == 1 else ">"
    _patch(hed, 4, order + "i", count - 1)
    return True


@pytest.mark.parametrize(("order", "kind"), [("<", "f4"), (">", "f4"), ("<", "i2"), (">", "i2")])
class TestImagic(ReaderContract):
    """An IMAGIC pair (REAL or INTG, either byte order), opened by its ``.hed``; cut
    short is its ``.img``."""

    order: str
    kind: str

    @pytest.fixture(autouse=True)
    def _params(self, order: str, kind: str) -> None:
        self.order, self.kind = order, kind

    def make(self, tmp: Path) -> tuple[Path, list[np.ndarray]]:
        data = _rng_values(self.kind, (3, 1, 7, 5), seed=17)
        write_imagic(tmp / "p.hed", data, self.order)
        return tmp / "p.hed", [d[0] for d in data]

    def claim(self, path: Path, count: int) -> bool:
        return _imagic_claim(path, count)


SPIDER_KINDS = {"image": (1, 1, False), "volume": (1, 4, False), "stack": (3, 1, True)}


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("what", list(SPIDER_KINDS))
class TestSpider(ReaderContract):
    """A SPIDER image, volume or stack in either byte order. The claim: a stack's
    ``maxim`` (word 26), a single image's ``nslice`` (word 1)."""

    order: str
    what: str

    @pytest.fixture(autouse=True)
    def _params(self, order: str, what: str) -> None:
        self.order, self.what = order, what

    def make(self, tmp: Path) -> tuple[Path, list[np.ndarray]]:
        n, nz, stack = SPIDER_KINDS[self.what]
        data = _rng_values(np.float32, (n, nz, 6, 5), seed=19)
        write_spider(tmp / "s.spi", data, self.order, stack=stack)
        return tmp / "s.spi", [d[0] if nz == 1 else d for d in data]

    def claim(self, path: Path, count: int) -> bool:
        word = 25 if SPIDER_KINDS[self.what][2] else 0
        _patch(path, 4 * word, self.order + "f", float(min(count, 2**24)))
        return True


EMAN2_FILES = {  # file -> (images, (nz, ny, nx))
    "stack.hed": (3, (1, 12, 16)),
    "stack.img": (3, (1, 12, 16)),  # the pair named by its data file
    "square_be.hed": (2, (1, 8, 8)),
    "volume.hed": (1, (4, 6, 10)),
    "stack.spi": (3, (1, 12, 16)),
    "single.spi": (1, (1, 6, 10)),
    "volume_be.spi": (1, (4, 6, 10)),
}


@pytest.mark.parametrize("name", list(EMAN2_FILES))
class TestWrittenByEman2(ReaderContract):
    """IMAGIC and SPIDER files real EMAN2 wrote (tests/data/eman2): image k holds
    ``formula_image(k, shape)``."""

    name: str

    @pytest.fixture(autouse=True)
    def _params(self, name: str) -> None:
        self.name = name

    def make(self, tmp: Path) -> tuple[Path, list[np.ndarray]]:
        for each in [EMAN2_DATA / self.name, *companions(EMAN2_DATA / self.name)]:
            shutil.copyfile(each, tmp / each.name)
        count, shape = EMAN2_FILES[self.name]
        truth = [formula_image(k, shape) for k in range(count)]
        return tmp / self.name, [t[0] if shape[0] == 1 else t for t in truth]

    def claim(self, path: Path, count: int) -> bool:
        if path.suffix in (".hed", ".img"):
            return _imagic_claim(path, count)
        order = ">" if "_be" in path.name else "<"
        word = 25 if EMAN2_FILES[path.name][0] > 1 else 0  # a stack's maxim, else nslice
        _patch(path, 4 * word, order + "f", float(min(count, 2**24)))
        return True


# --------------------------------------------------------------------------- DM, SER


@needs_ncempy
@pytest.mark.parametrize(("version", "dims"), [(3, 2), (4, 2), (4, 3)])
class TestDm(ReaderContract):
    """A DM3/DM4 image, or a DM4 stack (one image a section), with its thumbnail; rows
    bottom-up as EMAN2 reads them."""

    version: int
    dims: int

    @pytest.fixture(autouse=True)
    def _params(self, version: int, dims: int) -> None:
        self.version, self.dims = version, dims

    def make(self, tmp: Path) -> tuple[Path, list[np.ndarray]]:
        shape = (3, 7, 5) if self.dims == 3 else (7, 5)
        data = _rng_values(np.int16, shape, seed=23)
        path = tmp / f"d.dm{self.version}"
        write_dm(path, data, self.version)
        return path, list(data) if self.dims == 3 else [data]


@needs_ncempy
class TestSer(ReaderContract):
    """A TIA series of three images. The claim: ``ValidNumberElements`` (int32 at 18)."""

    def make(self, tmp: Path) -> tuple[Path, list[np.ndarray]]:
        data = _rng_values(np.uint16, (3, 6, 5), seed=29)
        write_ser(tmp / "s.ser", data)
        return tmp / "s.ser", list(data)

    def claim(self, path: Path, count: int) -> bool:
        _patch(path, 18, "<i", count)
        return True
