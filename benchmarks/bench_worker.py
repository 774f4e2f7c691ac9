"""Work done in the benchmark's child processes (see ``bench.py``).

Usage (internal): ``python bench_worker.py SPEC.json RESULT.json``. ``SPEC.json`` holds
one task (generate a data set, run one writer or reader, histogram an output, report
the environment); the result, including the timed seconds and the child's own
high-water RSS, is written to ``RESULT.json``. Every task runs in a fresh process so
that its peak RSS is its own.

Heavy modules (numpy, h5py, e2compress, mrcz, ...) are imported here only, never by
the parent, so the parent stays small (a child's ``ru_maxrss`` starts from the RSS of
the process that spawned it).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

NY, NX = 3838, 3710  # K2 Summit frame: rows x columns
BOX = 256  # particle box
GAIN_SEED = 20240101
SEEDS = {"k2": 101, "k2_24": 124, "counts": 202, "micrograph": 303, "particles": 404, "stack": 505}
STACK_APIX = 1.06  # A/px of the synthetic particle stacks (any value but 1 tests apix)
MICROGRAPH_FRAMES = 40
BLUR_SIGMA = 1.0  # px, Gaussian low-pass of the micrograph
MASK_RADIUS = 110  # px, particles are zero outside
HIST_SLICE = 1 << 22  # elements per bincount call (bounded scratch memory)
QUANT_BLOCK = 1 << 16  # elements per quantisation step (256 KB of float32)


# --------------------------------------------------------------------------- helpers


def proc_status_mb(key: str) -> float | None:
    """A ``/proc/self/status`` memory value (VmRSS, VmHWM) in MB, None off Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        return None
    return None


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a written file to disk (e2compress always does; so must the others)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def add_hist(hist: np.ndarray | None, codes: np.ndarray, levels: int) -> np.ndarray:
    """Accumulate the histogram of integer ``codes`` in bounded slices."""
    flat = codes.reshape(-1)
    if hist is None:
        hist = np.zeros(levels, dtype=np.int64)
    for start in range(0, flat.size, HIST_SLICE):
        part = np.bincount(flat[start : start + HIST_SLICE], minlength=levels)
        if part.size != levels:
            raise ValueError(f"codes exceed {levels} levels")
        hist += part
    return hist


def entropy_bits(hist: np.ndarray) -> float:
    """Order-0 Shannon entropy (bits per value) of a histogram."""
    counts = hist[hist > 0].astype(np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def quantise(data: np.ndarray, bits: int) -> np.ndarray:
    """EMAN2's quantisation in float32 over the image's own min/max.

    codes = floor((v - min) / (max - min) * (2**bits - 1) + 0.5), as uint8 (bits <= 8)
    or uint16. Like EMAN2's per-pixel loop it needs no full-size float scratch array:
    it works through the image in cache-sized blocks.
    """
    dtype = np.uint8 if bits <= 8 else np.uint16
    x = np.asarray(data, dtype=np.float32)
    out = np.zeros(x.shape, dtype=dtype)
    lo, hi = np.float32(x.min()), np.float32(x.max())
    if hi <= lo:
        return out
    span, top = np.float32(hi - lo), np.float32(2**bits - 1)
    src, dst = x.reshape(-1), out.reshape(-1)
    buf = np.empty(min(QUANT_BLOCK, src.size), dtype=np.float32)
    for start in range(0, src.size, QUANT_BLOCK):
        part = src[start : start + QUANT_BLOCK]
        b = buf[: part.size]
        np.subtract(part, lo, out=b)
        b /= span
        b *= top
        b += np.float32(0.5)
        np.floor(b, out=b)
        dst[start : start + QUANT_BLOCK] = b
    return out


def mrc_layout(path: str) -> tuple[tuple[int, int, int], np.dtype, int, bool]:
    """(nz, ny, nx), dtype, data offset and whether the file is a ``.mrcs`` stack."""
    import mrcfile

    with mrcfile.open(path, header_only=True) as mrc:
        h = mrc.header
        shape = (int(h.nz), int(h.ny), int(h.nx))
        dtype = mrcfile.utils.data_dtype_from_header(h)
        offset = 1024 + int(h.nsymbt)
    return shape, dtype, offset, path.endswith(".mrcs")


def read_whole(path: str) -> np.ndarray:
    """The whole MRC data in memory (as EMAN2 holds a whole image)."""
    import mrcfile

    with mrcfile.open(path) as mrc:
        return np.asarray(mrc.data)


def stack_images(path: str) -> Iterator[np.ndarray]:
    """The images of an MRC file as EMAN2 sees them, read one at a time.

    A ``.mrcs`` file yields each 2-D section; any other file is one (2-D or 3-D) image.
    """
    shape, dtype, offset, is_stack = mrc_layout(path)
    if not is_stack:
        data = read_whole(path)
        yield data[0] if data.shape[0] == 1 else data
        return
    nz, ny, nx = shape
    with open(path, "rb") as fh:
        for i in range(nz):
            img = np.fromfile(fh, dtype=dtype, count=ny * nx, offset=offset if i == 0 else 0)
            yield img.reshape(ny, nx)


# --------------------------------------------------------------------------- data generation


def gain_reference() -> np.ndarray:
    """Per-pixel gain ~ N(1, 0.05), float32, the same for every K2-like data set."""
    rng = np.random.default_rng(GAIN_SEED)
    gain: np.ndarray = rng.normal(1.0, 0.05, size=(NY, NX)).astype(np.float32)
    return gain


def _new_mrc(path: str, shape: tuple[int, int, int], mode: int, stack: bool = False) -> Any:
    import mrcfile

    mrc = mrcfile.new_mmap(path, shape=shape, mrc_mode=mode, overwrite=True)
    if stack:
        mrc.set_image_stack()
    mrc.voxel_size = 1.0
    return mrc


class _HeaderStats:
    """Running min/max/mean/rms for the MRC header (no full-size temporaries)."""

    def __init__(self) -> None:
        self.lo, self.hi, self.n, self.s1, self.s2 = math.inf, -math.inf, 0, 0.0, 0.0

    def add(self, a: np.ndarray) -> None:
        self.lo = min(self.lo, float(a.min()))
        self.hi = max(self.hi, float(a.max()))
        self.n += a.size
        self.s1 += float(np.sum(a, dtype=np.float64))
        self.s2 += float(np.einsum("i,i->", a.ravel(), a.ravel(), dtype=np.float64))

    def store(self, mrc: Any) -> None:
        mean = self.s1 / self.n
        mrc.header.dmin, mrc.header.dmax, mrc.header.dmean = self.lo, self.hi, mean
        mrc.header.rms = math.sqrt(max(self.s2 / self.n - mean * mean, 0.0))


def generate_movie(path: str, frames: int, seed: int) -> dict[str, Any]:
    """K2-like gain-normalised float movie: Poisson(1) counts x gain, float32 (mode 2)."""
    gain = gain_reference()
    rng = np.random.default_rng(seed)
    stats = _HeaderStats()
    with _new_mrc(path, (frames, NY, NX), 2) as mrc:
        for z in range(frames):
            frame = rng.poisson(1.0, size=(NY, NX)).astype(np.float32)
            frame *= gain
            mrc.data[z] = frame
            stats.add(frame)
        stats.store(mrc)
    return {"shape": [frames, NY, NX], "pixels": frames * NY * NX, "mrc_mode": 2}


def generate_counts(path: str, frames: int, seed: int) -> dict[str, Any]:
    """Integer counting movie: Poisson(1) counts stored as int8 (MRC mode 0)."""
    rng = np.random.default_rng(seed)
    stats = _HeaderStats()
    with _new_mrc(path, (frames, NY, NX), 0) as mrc:
        for z in range(frames):
            counts = rng.poisson(1.0, size=(NY, NX))
            if counts.max() > 127:  # never for Poisson(1); keeps the int8 cast honest
                raise ValueError("count does not fit int8")
            frame = counts.astype(np.int8)
            mrc.data[z] = frame
            stats.add(frame)
        stats.store(mrc)
    return {"shape": [frames, NY, NX], "pixels": frames * NY * NX, "mrc_mode": 0}


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian low-pass (radius 3 sigma, reflected edges), float32."""
    radius = max(1, round(3 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel = (kernel / kernel.sum()).astype(np.float32)
    out = img
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect")
        acc = np.zeros_like(img)
        n = img.shape[axis]
        for k, w in enumerate(kernel):
            acc += w * (padded[k : k + n] if axis == 0 else padded[:, k : k + n])
        out = acc
    return out


def generate_micrograph(path: str, seed: int) -> dict[str, Any]:
    """Motion-corrected micrograph: the sum of 40 K2-like frames, Gaussian low-passed.

    With one gain reference, the sum of 40 frames of Poisson(1) counts x gain is
    Poisson(40) counts x gain (a sum of independent Poisson variables), drawn directly.
    """
    rng = np.random.default_rng(seed)
    summed = rng.poisson(float(MICROGRAPH_FRAMES), size=(NY, NX)).astype(np.float32)
    summed *= gain_reference()
    img = _gaussian_blur(summed, BLUR_SIGMA)
    stats = _HeaderStats()
    with _new_mrc(path, (1, NY, NX), 2) as mrc:
        mrc.data[0] = img
        stats.add(img)
        stats.store(mrc)
    return {"shape": [1, NY, NX], "pixels": NY * NX, "mrc_mode": 2}


def generate_particles(path: str, count: int, seed: int) -> dict[str, Any]:
    """Particle stack: smooth blobs + N(0, 1) noise, zero outside a circular mask."""
    rng = np.random.default_rng(seed)
    axis = np.arange(BOX, dtype=np.float32) - (BOX - 1) / 2
    mask = (axis[:, None] ** 2 + axis[None, :] ** 2) <= MASK_RADIUS**2
    stats = _HeaderStats()
    batch = 100
    with _new_mrc(path, (count, BOX, BOX), 2, stack=True) as mrc:
        for start in range(0, count, batch):
            n = min(batch, count - start)
            imgs = rng.standard_normal((n, BOX, BOX), dtype=np.float32)
            for _ in range(3):  # three Gaussian blobs per particle
                cy, cx = rng.uniform(-40, 40, size=(2, n, 1)).astype(np.float32)
                sy, sx = rng.uniform(8, 30, size=(2, n, 1)).astype(np.float32)
                amp = rng.uniform(0.5, 2.0, size=(n, 1, 1)).astype(np.float32)
                gy = np.exp(-0.5 * ((axis[None, :] - cy) / sy) ** 2)
                gx = np.exp(-0.5 * ((axis[None, :] - cx) / sx) ** 2)
                imgs += amp * gy[:, :, None] * gx[:, None, :]
            imgs[:, ~mask] = 0.0  # exact +0.0 (multiplying would leave -0.0)
            mrc.data[start : start + n] = imgs
            stats.add(imgs)
        stats.store(mrc)
    return {"shape": [count, BOX, BOX], "pixels": count * BOX * BOX, "mrc_mode": 2}


def generate_stack(path: str, count: int, box: int, seed: int) -> dict[str, Any]:
    """RELION-like particle stack: one Gaussian blob + N(0, 1) noise per image, no mask.

    Images are drawn in batches of 1000 from one generator, so the first N images of a
    larger stack equal a stack of N.
    """
    rng = np.random.default_rng(seed)
    axis = np.arange(box, dtype=np.float32) - (box - 1) / 2
    stats = _HeaderStats()
    batch = 1000
    with _new_mrc(path, (count, box, box), 2, stack=True) as mrc:
        mrc.voxel_size = STACK_APIX
        for start in range(0, count, batch):
            n = min(batch, count - start)
            imgs = rng.standard_normal((n, box, box), dtype=np.float32)
            cy, cx = rng.uniform(-box / 8, box / 8, size=(2, n, 1)).astype(np.float32)
            sig = rng.uniform(box / 10, box / 5, size=(n, 1)).astype(np.float32)
            amp = rng.uniform(1.0, 3.0, size=(n, 1, 1)).astype(np.float32)
            gy = np.exp(-0.5 * ((axis[None, :] - cy) / sig) ** 2)
            gx = np.exp(-0.5 * ((axis[None, :] - cx) / sig) ** 2)
            imgs += amp * gy[:, :, None] * gx[:, None, :]
            mrc.data[start : start + n] = imgs
            stats.add(imgs)
        stats.store(mrc)
    return {"shape": [count, box, box], "pixels": count * box * box, "mrc_mode": 2}


def task_generate(spec: dict[str, Any]) -> dict[str, Any]:
    kind, path = spec["dataset"], spec["path"]
    if kind.startswith("stack"):
        return generate_stack(path, spec["count"], spec["box"], SEEDS["stack"])
    seed = SEEDS[kind]
    if kind in ("k2", "k2_24"):
        return generate_movie(path, spec["frames"], seed)
    if kind == "counts":
        return generate_counts(path, spec["frames"], seed)
    if kind == "micrograph":
        return generate_micrograph(path, seed)
    if kind == "particles":
        return generate_particles(path, spec["count"], seed)
    raise ValueError(f"unknown data set {kind}")


# --------------------------------------------------------------------------- writers


def write_e2compress(spec: dict[str, Any]) -> dict[str, Any]:
    import e2compress

    kwargs: dict[str, Any] = {"verify": False}
    if not spec.get("defaults"):
        kwargs.update(bits=spec["bits"], level=spec["level"], threads=spec["threads"])
    t0 = time.perf_counter()
    report = e2compress.compress_file(spec["src"], spec["dst"], **kwargs)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "engine": report.engine}


def mrc_header_keys(path: str) -> dict[str, Any]:
    """The ``MRC.*`` keys EMAN2 copies from an MRC header into every image's header."""
    import mrcfile

    with mrcfile.open(path, header_only=True) as mrc:
        h = mrc.header
        keys: dict[str, Any] = {
            name: int(h[name])
            for name in (
                "nx",
                "ny",
                "nz",
                "mode",
                "nxstart",
                "nystart",
                "nzstart",
                "mx",
                "my",
                "mz",
                "mapc",
                "mapr",
                "maps",
                "ispg",
                "nsymbt",
                "nversion",
            )
        }
        keys.update(
            xlen=float(h.cella.x),
            ylen=float(h.cella.y),
            zlen=float(h.cella.z),
            alpha=float(h.cellb.alpha),
            beta=float(h.cellb.beta),
            gamma=float(h.cellb.gamma),
            minimum=float(h.dmin),
            maximum=float(h.dmax),
            mean=float(h.dmean),
            rms=float(h.rms),
            machinestamp=int(np.frombuffer(bytes(h.machst), dtype="<u2")[0]),
            nlabels=int(h.nlabl),
            exttyp=bytes(h.exttyp).rstrip(b"\0"),
            map=bytes(h.map),
        )
        for k in range(int(h.nlabl)):
            keys[f"label{k}"] = bytes(h.label[k])
        apix = float(mrc.voxel_size.x)
    return {"apix": apix, **{f"MRC.{k}": v for k, v in keys.items()}}


def eman2_header(
    img: np.ndarray,
    index: int,
    bits: int,
    lo: float,
    hi: float,
    mrc_keys: dict[str, Any],
    source: str,
) -> dict[str, Any]:
    """What EMAN2 writes per image: geometry, statistics, render keys and the MRC header.

    The statistics need one more pass over the image, as EMAN2's ``update_stat`` does.
    """
    flat = img.reshape(-1)
    n = flat.size
    s1 = float(np.sum(flat))
    s2 = float(np.einsum("i,i->", flat, flat))
    nnz = int(np.count_nonzero(flat))
    shape = img.shape[::-1] + (1,) * (3 - img.ndim)
    apix = mrc_keys["apix"] or 1.0

    def sigma(count: int) -> float:
        return math.sqrt(max((s2 - s1 * s1 / count) / (count - 1), 0.0)) if count > 1 else 0.0

    header: dict[str, Any] = {
        "nx": shape[0],
        "ny": shape[1],
        "nz": shape[2],
        "apix_x": apix,
        "apix_y": apix,
        "apix_z": apix,
        "origin_x": 0.0,
        "origin_y": 0.0,
        "origin_z": 0.0,
        "is_complex": 0,
        "is_complex_ri": 1,
        "is_complex_x": 0,
        "changecount": 0,
        "HostEndian": b"little",
        "ImageEndian": b"little",
        "minimum": lo,
        "maximum": hi,
        "mean": s1 / n,
        "sigma": sigma(n),
        "square_sum": s2,
        "mean_nonzero": s1 / nnz if nnz else 0.0,
        "sigma_nonzero": sigma(nnz),
        "all_int": 0,
        "datatype": {0: 7, 1: 2, 2: 4}[0 if not bits else 1 if bits <= 8 else 2],
        "source_n": index,
        "source_path": source.encode(),
    }
    if bits:
        header.update(
            stored_rendermin=lo, stored_rendermax=hi, stored_renderbits=bits, stored_truncated=0
        )
    header.update((k, v) for k, v in mrc_keys.items() if k != "apix")
    return header


def write_eman2_attrs(group: Any, header: dict[str, Any]) -> None:
    """EMAN2's attribute types: float32[1], int32[1], fixed-length strings."""
    for key, value in header.items():
        name = f"EMAN.{key}"
        if isinstance(value, bytes):
            group.attrs.create(name, data=np.bytes_(value))
        elif isinstance(value, float):
            group.attrs.create(name, data=np.array([value], dtype=np.float32))
        else:
            group.attrs.create(name, data=np.array([value], dtype=np.int32))


def write_eman2_equivalent(spec: dict[str, Any]) -> dict[str, Any]:
    """EMAN2's writer: whole float32 images, numpy quantisation, h5py gzip, 8-row chunks."""
    import h5py

    bits, level, src = spec["bits"], spec["level"], spec["src"]
    t0 = time.perf_counter()
    mrc_keys = mrc_header_keys(src)
    with h5py.File(spec["dst"], "w", libver="earliest") as f:
        images = f.create_group("MDF").create_group("images")
        for i, raw in enumerate(stack_images(src)):
            img = np.asarray(raw, dtype=np.float32)  # EMAN2 holds float32 images
            lo, hi = float(img.min()), float(img.max())
            data = quantise(img, bits) if bits else img
            nx = img.shape[-1]
            chunks = (8, nx) if img.ndim == 2 else (1, 8, nx)
            chunks = tuple(min(c, s) for c, s in zip(chunks, img.shape, strict=True))
            group = images.create_group(str(i))
            group.create_dataset(
                "image", data=data, chunks=chunks, compression="gzip", compression_opts=level
            )
            header = eman2_header(img, i, bits, lo, hi, mrc_keys, os.path.basename(src))
            write_eman2_attrs(group, header)
            images.attrs.create("imageid_max", data=np.array([i], dtype=np.int32))
    fsync_file(spec["dst"])
    return {"seconds": time.perf_counter() - t0}


def _all_codes(spec: dict[str, Any]) -> tuple[np.ndarray, int]:
    """Input as MRCZ/TIFF get it: raw integers (bits None) or EMAN2 codes per image."""
    bits = spec["bits"]
    if bits is None:
        data = read_whole(spec["src"])
        return data, 256 if data.dtype.itemsize == 1 else 65536
    dtype = np.uint8 if bits <= 8 else np.uint16
    shape, _, _, is_stack = mrc_layout(spec["src"])
    if not is_stack:
        return quantise(read_whole(spec["src"]), bits), 1 << bits
    out = np.empty(shape, dtype=dtype)
    for i, img in enumerate(stack_images(spec["src"])):
        out[i] = quantise(img, bits)
    return out, 1 << bits


def write_mrcz(spec: dict[str, Any]) -> dict[str, Any]:
    """MRCZ (blosc, bit-shuffle + zstd level 1) of the quantised codes or raw integers."""
    import mrcz

    t0 = time.perf_counter()
    codes, levels = _all_codes(spec)
    data = codes.view(np.int8) if codes.dtype == np.uint8 else codes  # MRC mode 0 / 6
    mrcz.writeMRC(data, spec["dst"], compressor="zstd", clevel=1, n_threads=spec["threads"])
    fsync_file(spec["dst"])
    seconds = time.perf_counter() - t0
    hist = add_hist(None, codes.view(np.uint8) if codes.dtype == np.int8 else codes, levels)
    return {"seconds": seconds, "entropy": entropy_bits(hist)}


def write_tiff(spec: dict[str, Any]) -> dict[str, Any]:
    """Multi-page TIFF of the integer movie (uint8), deflate or LZW, parallel strips."""
    import tifffile

    t0 = time.perf_counter()
    data = read_whole(spec["src"])
    if data.dtype == np.int8:
        if data.min() < 0:
            raise ValueError("negative counts cannot be stored as uint8")
        data = data.view(np.uint8)
    args: dict[str, Any] = {"level": spec["level"]} if spec["compression"] == "zlib" else {}
    tifffile.imwrite(
        spec["dst"],
        data,
        compression=spec["compression"],
        compressionargs=args or None,
        maxworkers=spec["threads"],
    )
    fsync_file(spec["dst"])
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "entropy": entropy_bits(add_hist(None, data, 256))}


# --------------------------------------------------------------------------- readers


def read_e2c_images(path: str) -> list[np.ndarray]:
    import e2compress

    return e2compress.read_images(path)


def read_e2c_open(path: str) -> list[np.ndarray]:
    import e2compress

    with e2compress.open(path) as f:
        return [f[i] for i in range(len(f))]


def _h5_images(path: str) -> Iterator[tuple[Any, Any]]:
    import h5py

    with h5py.File(path, "r") as f:
        images = f["MDF/images"]
        count = int(np.asarray(images.attrs["imageid_max"]).reshape(-1)[0]) + 1
        for i in range(count):
            group = images[str(i)]
            yield group, group["image"]


def read_h5py_float(path: str) -> list[np.ndarray]:
    """Plain h5py: ``ds[...]`` then EMAN2's rescale to float32."""
    out = []
    for group, ds in _h5_images(path):
        codes = ds[...]
        bits = int(group.attrs["EMAN.stored_renderbits"][0])
        rmin = np.float32(group.attrs["EMAN.stored_rendermin"][0])
        rmax = np.float32(group.attrs["EMAN.stored_rendermax"][0])
        img = codes.astype(np.float32)
        img *= (rmax - rmin) / np.float32((1 << bits) - 1)
        img += rmin
        out.append(img)
    return out


def read_h5py_codes(path: str) -> list[np.ndarray]:
    """Plain h5py ``ds[...]`` only: the stored integers, no rescale."""
    return [ds[...] for _, ds in _h5_images(path)]


READERS: dict[str, Callable[[str], list[np.ndarray]]] = {
    "read_images": read_e2c_images,
    "open": read_e2c_open,
    "h5py_float": read_h5py_float,
    "h5py_codes": read_h5py_codes,
}


def task_decode(spec: dict[str, Any]) -> dict[str, Any]:
    reader = READERS[spec["method"]]
    t0 = time.perf_counter()
    images = reader(spec["src"])
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "pixels": int(sum(a.size for a in images))}


def task_stackmeta(spec: dict[str, Any]) -> dict[str, Any]:
    """Image count, file size and the bytes of all chunks (the pixels) of an EMAN2 HDF."""
    import h5py
    from h5py import h5d

    path = spec["path"]
    chunk_bytes = 0
    with h5py.File(path, "r") as f:
        images = f["MDF/images"]
        count = int(np.asarray(images.attrs["imageid_max"]).reshape(-1)[0]) + 1
        gid = images.id
        for i in range(count):
            ds = h5d.open(gid, b"%d/image" % i)
            if ds.get_create_plist().get_layout() == h5d.CHUNKED:
                chunk_bytes += sum(ds.get_chunk_info(k).size for k in range(ds.get_num_chunks()))
            else:
                chunk_bytes += ds.get_storage_size()
        apix = float(np.asarray(images[str(count - 1)].attrs["EMAN.apix_x"]).reshape(-1)[0])
    return {
        "images": count,
        "file_bytes": os.path.getsize(path),
        "chunk_bytes": chunk_bytes,
        "apix": apix,
    }


def _rchar() -> int | None:
    """Bytes this process has read through read()-like calls so far (Linux)."""
    try:
        with open("/proc/self/io") as fh:
            for line in fh:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def task_open_one(spec: dict[str, Any]) -> dict[str, Any]:
    """``e2compress.open(path)[i]`` on a large stack: seconds and bytes read."""
    import e2compress

    before = _rchar()
    t0 = time.perf_counter()
    with e2compress.open(spec["path"]) as f:
        count = len(f)
        img = f[spec["index"]]
    seconds = time.perf_counter() - t0
    after = _rchar()
    read = after - before if after is not None and before is not None else None
    return {"seconds": seconds, "images": count, "pixels": int(img.size), "bytes_read": read}


def task_histogram(spec: dict[str, Any]) -> dict[str, Any]:
    """Order-0 entropy of the stored codes of an EMAN2 HDF file (all images pooled)."""
    hist: np.ndarray | None = None
    levels = 1 << spec["bits"]
    for _, ds in _h5_images(spec["path"]):
        if ds.ndim == 3:
            for z in range(ds.shape[0]):
                hist = add_hist(hist, ds[z], levels)
        else:
            hist = add_hist(hist, ds[...], levels)
    if hist is None:
        raise ValueError("no images")
    return {"entropy": entropy_bits(hist), "values": int(hist.sum())}


# --------------------------------------------------------------------------- environment


def _version(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    return str(getattr(mod, "__version__", "present"))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def task_info(spec: dict[str, Any]) -> dict[str, Any]:
    import platform
    import zlib

    import h5py

    import e2compress
    from e2compress import codecs

    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    mem_gb = None
    try:
        with open("/proc/meminfo") as fh:
            mem_gb = int(fh.readline().split()[1]) * 1024 / 1e9
    except (OSError, ValueError, IndexError):
        pass
    return {
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "memory_gb": mem_gb,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "e2compress": e2compress.__version__,
        "engines": {str(lv): codecs.engine_names(lv) for lv in (1, 6, 9)},
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "isal": _version("isal"),
        "deflate (libdeflate)": _version("deflate"),
        "zlib_ng": _version("zlib_ng"),
        "mrcfile": _version("mrcfile"),
        "tifffile": _version("tifffile"),
        "imagecodecs": _version("imagecodecs"),
        "mrcz": _version("mrcz"),
        "blosc": _version("blosc"),
    }


# --------------------------------------------------------------------------- entry point

Task = Callable[[dict[str, Any]], dict[str, Any]]
# Each task with the modules it needs, imported before the baseline RSS and the clock.
TASKS: dict[str, tuple[Task, tuple[str, ...]]] = {
    "generate": (task_generate, ("mrcfile",)),
    "e2compress": (write_e2compress, ("e2compress",)),
    "eman2": (write_eman2_equivalent, ("h5py", "mrcfile")),
    "mrcz": (write_mrcz, ("mrcz", "blosc", "mrcfile")),
    "tiff": (write_tiff, ("tifffile", "mrcfile")),
    "decode": (task_decode, ("e2compress", "h5py")),
    "histogram": (task_histogram, ("h5py",)),
    "stackmeta": (task_stackmeta, ("h5py",)),
    "open_one": (task_open_one, ("e2compress",)),
    "info": (task_info, ("h5py", "e2compress")),
}


def main(argv: list[str]) -> int:
    spec_path, result_path = argv
    spec = json.loads(Path(spec_path).read_text())
    result: dict[str, Any]
    status = 0
    try:
        task, modules = TASKS[spec["task"]]
        for name in modules:
            importlib.import_module(name)
        base = proc_status_mb("VmRSS")
        result = task(spec)
        result["base_rss_mb"] = base
        result["hwm_mb"] = proc_status_mb("VmHWM")
    except ImportError as exc:  # an optional competitor (MRCZ) is not installed
        result = {"skipped": f"skipped: {exc.name or exc} is not installed"}
    except Exception:
        result = {"error": traceback.format_exc()}
        status = 1
    Path(result_path).write_text(json.dumps(result))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
