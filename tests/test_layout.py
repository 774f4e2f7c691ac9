"""HDF5 structure of the output, checked with plain h5py against spec §1 (and §8's recipe)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

import e2compress
from e2compress.kept import KEPT_ATTRS
from e2compress.provenance import RECORD_KEYS
from helpers import REAL

pytestmark = pytest.mark.shared

# (file, number of images, dataset shape of every image)
INPUTS = [
    ("07jan05b_12gr_02en_00.dwn.mrc", 1, (512, 512)),  # 2-D image
    ("smallStack.mrcs", 4, (64, 64)),  # stack of 2-D images
    ("EMD-3197.map", 1, (20, 20, 20)),  # 3-D map
]
CASES = [(name, n, shape, bits) for name, n, shape in INPUTS for bits in (0, 5, 12)]
CASE_IDS = [f"{name}-bits{bits}" for name, _, _, bits in CASES]

STORED = ("EMAN.stored_rendermin", "EMAN.stored_rendermax")
STORED_INT = ("EMAN.stored_renderbits", "EMAN.stored_truncated")


def _filters(ds: h5py.Dataset) -> list[tuple[int, tuple[int, ...]]]:
    plist = ds.id.get_create_plist()
    out = []
    for k in range(plist.get_nfilters()):
        code, _flags, values, _name = plist.get_filter(k)
        out.append((code, tuple(values)))
    return out


def _compress(name: str, tmp_path: Path, **kw: object) -> Path:
    out = tmp_path / "out.hdf"
    e2compress.compress_file(REAL / name, out, **kw)  # type: ignore[arg-type]
    return out


def _check_attr_types(group: h5py.Group) -> None:
    """Every attribute has a type EMAN2 reads back correctly (spec §1.5)."""
    for name in group.attrs:
        aid = group.attrs.get_id(name)
        tid = aid.get_type()
        cls = tid.get_class()
        space = aid.get_space()
        npoints = space.get_simple_extent_npoints()
        if cls == h5py.h5t.STRING:
            assert isinstance(tid, h5py.h5t.TypeStringID)
            assert not tid.is_variable_str(), name
            assert tid.get_strpad() == h5py.h5t.STR_NULLTERM, name
            assert tid.get_cset() == h5py.h5t.CSET_ASCII, name
            assert space.get_simple_extent_type() == h5py.h5s.SCALAR, name
            raw = np.empty((), dtype=f"S{tid.get_size()}")
            aid.read(raw)
            data = raw.tobytes()
            text = data.split(b"\0", 1)[0]
            assert tid.get_size() == len(text) + 1, name
            assert data[-1:] == b"\0", name
        elif cls == h5py.h5t.INTEGER:
            # sizes 2 and 8 are read by EMAN2 as 0; 1 byte is a bool ('T'/'F')
            assert tid.get_size() in (1, 4), name
            if tid.get_size() == 1:
                assert npoints == 1, name
                assert bytes(group.attrs[name].view(np.uint8)) in (b"T", b"F"), name
        elif cls == h5py.h5t.FLOAT:
            assert tid.get_size() in (4, 8), name
            if tid.get_size() == 8:  # EMAN2 reads an 8-byte float array into one double
                assert npoints == 1, name
        else:
            assert cls == h5py.h5t.COMPOUND, name  # Transform: twelve float32
        if cls != h5py.h5t.STRING:
            assert space.get_simple_extent_type() == h5py.h5s.SIMPLE, name
            assert len(space.shape) == 1, name


# Keys of an MRC header EMAN2 carries into an image header (spec §5.1); a stack stores
# them once, on /MDF/images (EMAN2 reads them as Group.MRC.<key>).
MRC_INTS = [
    "nx",
    "ny",
    "nz",
    "nxstart",
    "nystart",
    "nzstart",
    "mx",
    "my",
    "mz",
    "mode",
    "mapc",
    "mapr",
    "maps",
    "ispg",
    "nsymbt",
    "nversion",
    "nlabels",
    "machinestamp",
]
MRC_FLOATS = ["xlen", "ylen", "zlen", "alpha", "beta", "gamma", "minimum", "maximum", "mean", "rms"]


def _check_stack_group(images: h5py.Group, name: str) -> None:
    """A stack's /MDF/images: imageid_max, the source name, the zero origin and the MRC
    header, each once for all images, typed as EMAN2 types image attributes."""
    nlabels = int(images.attrs["MRC.nlabels"][0])
    expected = {"imageid_max", "source_path", "origin_x", "origin_y", "origin_z"}
    expected |= {f"MRC.{k}" for k in (*MRC_INTS, *MRC_FLOATS, "map", "exttyp")}
    expected |= {f"MRC.label{k}" for k in range(nlabels)}
    assert set(images.attrs) == expected
    _check_attr_types(images)
    assert images.attrs["source_path"] == name.encode()
    assert images.attrs["MRC.map"] == b"MAP "
    for key in MRC_INTS:
        assert images.attrs[f"MRC.{key}"].dtype == np.int32
    for key in (*MRC_FLOATS, "origin_x", "origin_y", "origin_z"):
        assert images.attrs[key if key.startswith("origin") else f"MRC.{key}"].dtype == np.float32
    for axis in "xyz":
        assert float(images.attrs[f"origin_{axis}"][0]) == 0.0
    # EMAN2 opens these attributes by creation order (HdfIO2::init)
    order = images.id.get_create_plist().get_attr_creation_order()
    assert order == h5py.h5p.CRT_ORDER_TRACKED | h5py.h5p.CRT_ORDER_INDEXED


def _check_stack_image(group: h5py.Group, bits: int) -> None:
    """An image group of a stack holds only what EMAN2 needs per image: the stored
    mapping and the pixel size (nx/ny/nz and datatype come from the dataset, statistics
    are recomputed on read)."""
    expected = {"EMAN.apix_x", "EMAN.apix_y", "EMAN.apix_z"}
    if bits:
        expected |= {f"EMAN.{k}" for k in ("stored_rendermin", "stored_rendermax")}
        expected |= set(STORED_INT)
    assert set(group.attrs) == expected
    _check_attr_types(group)
    for key in STORED if bits else ():
        assert group.attrs[key].dtype == np.float32
    for key in STORED_INT if bits else ():
        assert group.attrs[key].dtype == np.int32
    if bits:
        assert int(group.attrs["EMAN.stored_renderbits"][0]) == bits
        assert int(group["image"][...].max()) <= (1 << bits) - 1
    for axis in "xyz":
        assert group.attrs[f"EMAN.apix_{axis}"].dtype == np.float32
        assert group.attrs[f"EMAN.apix_{axis}"].shape == (1,)


@pytest.mark.parametrize(("name", "n", "shape", "bits"), CASES, ids=CASE_IDS)
def test_layout(name: str, n: int, shape: tuple[int, ...], bits: int, tmp_path: Path) -> None:
    out = _compress(name, tmp_path, bits=bits)
    with h5py.File(out, "r") as f:
        # never num_dataset (EMAN2 would use its legacy reader); only the record of what
        # the file was made from and the source's kept bytes, which EMAN2 ignores
        assert set(f.attrs) == {f"e2compress.{k}" for k in (*RECORD_KEYS, *KEPT_ATTRS)}
        assert list(f.keys()) == ["MDF", "e2compress"]
        assert list(f["e2compress"].keys()) == ["source"]
        assert isinstance(f["MDF"], h5py.Group)
        assert len(f["MDF"].attrs) == 0
        assert list(f["MDF"].keys()) == ["images"]
        images = f["MDF/images"]
        assert isinstance(images, h5py.Group)
        # superblock 0 = HDF5's earliest format (what EMAN2 writes); 2 = HDF5 1.8's
        superblock = f.id.get_create_plist().get_version()[0]
        if n == 1:
            assert superblock == 0
            assert set(images.attrs) == {"imageid_max"}
        else:
            assert superblock == 2
            _check_stack_group(images, name)
        idmax = images.attrs["imageid_max"]
        assert idmax.dtype == np.int32
        assert idmax.shape == (1,)
        assert int(idmax[0]) == n - 1
        assert sorted(images.keys(), key=int) == [str(i) for i in range(n)]

        expected_dtype = {0: np.dtype("<f4"), 5: np.dtype("u1"), 12: np.dtype("<u2")}[bits]
        for i in range(n):
            group = images[str(i)]
            assert isinstance(group, h5py.Group)
            assert list(group.keys()) == ["image"]
            ds = group["image"]
            assert isinstance(ds, h5py.Dataset)
            assert len(ds.attrs) == 0
            assert ds.shape == shape
            assert ds.dtype == expected_dtype
            assert ds.dtype.byteorder in ("<", "|", "=")
            if ds.dtype.itemsize > 1:
                assert ds.id.get_type().get_order() == h5py.h5t.ORDER_LE

            # chunked by rows like EMAN2's (8, nx) / (1, 8, nx), but 64 rows by default
            # (measured in benchmarks/: better ratio and speed), and a volume of small
            # sections in whole sections, up to 1 MB of codes a chunk (docs/performance.md);
            # deflate level 1 (+ shuffle), then HDF5's Fletcher-32 checksum of the deflated bytes
            assert ds.chunks is not None
            assert all(c <= s for c, s in zip(ds.chunks, ds.shape, strict=True))
            rows = min(64, shape[-2])
            if len(shape) == 2:
                assert ds.chunks == (rows, shape[-1])
            else:
                section = shape[1] * shape[2] * ds.dtype.itemsize
                sections = max(1, min(shape[0], (1 << 20) // section))
                assert ds.chunks == (sections, *shape[1:])
            filters = _filters(ds)
            codes = [code for code, _ in filters]
            assert codes[-2:] == [h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_FLETCHER32]
            assert filters[-2][1][0] == 1  # deflate level
            if ds.dtype.itemsize > 1:
                assert codes[0] == h5py.h5z.FILTER_SHUFFLE
                assert len(codes) == 3
            else:
                assert len(codes) == 2

            a = group.attrs
            if n > 1:
                _check_stack_image(group, bits)
                continue
            nz = shape[0] if len(shape) == 3 else 1
            for key, value in (("nx", shape[-1]), ("ny", shape[-2]), ("nz", nz)):
                assert a[f"EMAN.{key}"].dtype == np.int32
                assert a[f"EMAN.{key}"].shape == (1,)
                assert int(a[f"EMAN.{key}"][0]) == value
            assert a["EMAN.apix_x"].dtype == np.float32
            assert a["EMAN.apix_x"].shape == (1,)
            assert a["EMAN.datatype"].dtype == np.int32
            assert int(a["EMAN.datatype"][0]) == {0: 7, 5: 2, 12: 4}[bits]
            if bits == 0:
                for key in STORED + STORED_INT:
                    assert key not in a
            else:
                for key in STORED:
                    assert a[key].dtype == np.float32
                    assert a[key].shape == (1,)
                for key in STORED_INT:
                    assert a[key].dtype == np.int32
                    assert a[key].shape == (1,)
                assert int(a["EMAN.stored_renderbits"][0]) == bits
                codes_max = int(ds[...].max())
                assert codes_max <= (1 << bits) - 1
            assert "EMAN.render_compress_level" not in a
            for key in ("EMAN.render_min", "EMAN.render_max", "EMAN.render_bits"):
                assert key not in a  # never stored (spec §1.5)
            _check_attr_types(group)
            # the MRC header strings are there and typed like EMAN2's
            assert a["EMAN.MRC.map"] == b"MAP "
            assert a.get_id("EMAN.MRC.map").get_type().get_size() == 5


def test_string_attributes_of_tiff_and_fei(tmp_path: Path) -> None:
    """TIFF and FEI-extended-header inputs bring other keys; they must be typed the same way."""
    for name in ("KLH.tif", "HAADFscan.mrc"):
        out = _compress(name, tmp_path, bits=8)
        with h5py.File(out, "r") as f:
            group = f["MDF/images/0"]
            _check_attr_types(group)
            assert group.attrs["EMAN.source_path"] == name.encode()
            aid = group.attrs.get_id("EMAN.source_path")
            assert aid.get_type().get_size() == len(name) + 1


@pytest.mark.parametrize("level", [0, 1, 6, 9], ids=lambda v: f"level{v}")
def test_compress_level_is_stored(level: int, tmp_path: Path) -> None:
    """--compresslevel sets the deflate level and adds EMAN.render_compress_level."""
    out = _compress("smallStack.mrcs", tmp_path, bits=5, level=level, store_level=True)
    with h5py.File(out, "r") as f:
        for i in range(4):
            group = f[f"MDF/images/{i}"]
            value = group.attrs["EMAN.render_compress_level"]
            assert value.dtype == np.int32
            assert value.shape == (1,)
            assert int(value[0]) == level
            filters = _filters(group["image"])
            assert filters[-2][0] == h5py.h5z.FILTER_DEFLATE
            assert filters[-2][1][0] == level
    (img,) = e2compress.read_images(out)[:1]
    assert img.shape == (64, 64)


def test_level_without_store_level_is_not_stored(tmp_path: Path) -> None:
    out = _compress("smallStack.mrcs", tmp_path, bits=5, level=6)
    with h5py.File(out, "r") as f:
        group = f["MDF/images/0"]
        assert "EMAN.render_compress_level" not in group.attrs
        assert _filters(group["image"])[-2] == (h5py.h5z.FILTER_DEFLATE, (6,))


@pytest.mark.parametrize("bits", [0, 12], ids=lambda b: f"bits{b}")
def test_shuffle_can_be_turned_off(bits: int, tmp_path: Path) -> None:
    """shuffle=False gives EMAN2's own pipeline (deflate only) for multi-byte data too."""
    out = _compress("EMD-3197.map", tmp_path, bits=bits, shuffle=False)
    with h5py.File(out, "r") as f:
        ds = f["MDF/images/0/image"]
        codes = [code for code, _ in _filters(ds)]
        assert codes == [h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_FLETCHER32]
        assert ds.dtype.itemsize > 1
        stored = ds[...]
    with e2compress.open(out) as f:
        assert np.array_equal(f.read_codes(0), stored)


@pytest.mark.parametrize(
    ("value", "dtype"),
    [
        (1.5, np.float32),
        (3.6e298, np.float64),  # a damaged calibration: kept, not cast to inf
        (-(2**40), np.float64),  # past int32: EMAN2 reads 8-byte floats, not 8-byte ints
        (7, np.int32),
        ([1, 2**33], np.float64),
        ([0.5, 1e300], np.float64),
        ([1, 2], np.int32),
    ],
)
def test_header_numbers_keep_their_value(value: object, dtype: type, tmp_path: Path) -> None:
    """EMAN2 stores header numbers as float32/int32; one that does not fit is stored as
    float64 (EMAN2 reads those too) instead of overflowing to inf or failing."""
    from e2compress.attrs import _attr_array

    arr = _attr_array(value)
    assert arr is not None
    assert arr.dtype == dtype
    np.testing.assert_array_equal(arr.astype(np.float64), np.ravel(value).astype(np.float64))
