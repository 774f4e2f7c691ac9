"""The numba versions of :mod:`e2compress.kernels` (imported only when numba is).

Each function does what its numpy twin in :mod:`~e2compress.kernels` does, in one
sweep; see there for the contract. Compiled on first call, cached on disk.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

_njit = numba.njit(cache=True, nogil=True)
MAX_BITS = 15  # longest literal code deflate allows
_CL_ORDER = np.array([16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15], np.int64)


@_njit
def quantize(x: Any, lo: Any, hi: Any, span: Any, rmaxcode: Any, half: Any, out: Any) -> int:
    """``kernels.quantize_numpy`` in one sweep: codes of ``x`` into ``out``, clamped count.

    The same float32 operations in the same order (``span = hi - lo``), so the same codes.
    """
    n = x.size
    truncated = 0
    zero = rmaxcode - rmaxcode
    for i in range(n):
        v = x[i]
        if v < lo or v > hi:
            truncated += 1
        t = (v - lo) / span
        t = t * rmaxcode
        t = max(t, zero)
        t = min(t, rmaxcode)
        out[i] = t + half
    return truncated


@_njit
def _huffman_lengths(freq: Any, limit: int, lengths: Any) -> None:
    """Code lengths of a Huffman code for ``freq`` (ints), no longer than ``limit``.

    At least two symbols get a code (a lone symbol is paired with the next free one),
    so the code is complete, as zlib's. Over-long codes: the frequencies are halved
    (keeping every used symbol at >= 1) and the code rebuilt.
    """
    n = freq.size
    f = freq.copy()
    used = 0
    for s in range(n):
        if f[s] > 0:
            used += 1
    if used < 2:
        for s in range(n):
            if f[s] == 0:
                f[s] = 1
                used += 1
                if used == 2:
                    break
    while True:
        # two-queue Huffman on symbols sorted by (frequency, symbol)
        syms = np.empty(used, np.int64)
        j = 0
        for s in range(n):
            if f[s] > 0:
                syms[j] = s
                j += 1
        keys = np.empty(used, np.int64)
        for j in range(used):
            keys[j] = f[syms[j]] * 1024 + syms[j]
        order = np.argsort(keys, kind="mergesort")
        syms = syms[order]
        m = 2 * used - 1
        weight = np.zeros(m, np.int64)
        parent = np.full(m, -1, np.int64)
        for j in range(used):
            weight[j] = f[syms[j]]
        leaf = 0
        node = used
        inner = used
        while node < m:
            picks = np.empty(2, np.int64)
            for p in range(2):
                if leaf < used and (inner >= node or weight[leaf] <= weight[inner]):
                    picks[p] = leaf
                    leaf += 1
                else:
                    picks[p] = inner
                    inner += 1
            weight[node] = weight[picks[0]] + weight[picks[1]]
            parent[picks[0]] = node
            parent[picks[1]] = node
            node += 1
        depth = np.zeros(m, np.int64)
        for k in range(m - 2, -1, -1):
            depth[k] = depth[parent[k]] + 1
        longest = 0
        for j in range(used):
            longest = max(longest, depth[j])
        if longest <= limit:
            for s in range(n):
                lengths[s] = 0
            for j in range(used):
                lengths[syms[j]] = depth[j]
            return
        for s in range(n):
            if f[s] > 0:
                f[s] = max(1, f[s] >> 1)


@_njit
def _canonical(lengths: Any, codes: Any) -> None:
    """Canonical codes for ``lengths`` (RFC 1951 §3.2.2), bit-reversed for LSB-first output."""
    count = np.zeros(MAX_BITS + 2, np.int64)
    for s in range(lengths.size):
        count[lengths[s]] += 1
    count[0] = 0
    nxt = np.zeros(MAX_BITS + 2, np.int64)
    code = 0
    for b in range(1, MAX_BITS + 1):
        code = (code + count[b - 1]) << 1
        nxt[b] = code
    for s in range(lengths.size):
        length = lengths[s]
        if length:
            c = nxt[length]
            nxt[length] += 1
            r = 0
            for _ in range(length):
                r = (r << 1) | (c & 1)
                c >>= 1
            codes[s] = r
        else:
            codes[s] = 0


@_njit
def _rle_lengths(lens: Any, syms: Any, extra: Any, start: int) -> int:
    """Code-length symbols (0-18) and their extra bits for ``lens`` (zlib's scan)."""
    k = start
    n = lens.size
    i = 0
    while i < n:
        v = lens[i]
        run = 1
        while i + run < n and lens[i + run] == v:
            run += 1
        i += run
        if v == 0:
            while run >= 11:
                r = min(run, 138)
                syms[k] = 18
                extra[k] = r - 11
                k += 1
                run -= r
            if run >= 3:
                syms[k] = 17
                extra[k] = run - 3
                k += 1
                run = 0
        else:
            syms[k] = v
            extra[k] = 0
            k += 1
            run -= 1
            while run >= 3:
                r = min(run, 6)
                syms[k] = 16
                extra[k] = r - 3
                k += 1
                run -= r
        for _ in range(run):
            syms[k] = v
            extra[k] = 0
            k += 1
    return k


@_njit
def _histogram(data: Any, freq: Any) -> None:
    """Byte counts of ``data`` into ``freq[:256]`` (four tables: repeated bytes do not
    wait for each other's increments)."""
    part = np.zeros((4, 256), np.int64)
    n = data.size
    whole = n - n % 4
    for i in range(0, whole, 4):
        part[0, data[i]] += 1
        part[1, data[i + 1]] += 1
        part[2, data[i + 2]] += 1
        part[3, data[i + 3]] += 1
    for i in range(whole, n):
        part[0, data[i]] += 1
    freq[:] = 0
    for v in range(256):
        freq[v] = part[0, v] + part[1, v] + part[2, v] + part[3, v]


@_njit
def _put(out: Any, pos: int, buf: Any, nbits: Any, value: int, n: int) -> tuple[int, Any, Any]:
    """Append the ``n`` (<= 32) low bits of ``value``; whole 32-bit words go to ``out``.

    Branch-free: the low word is stored every time and kept only when it is full.
    """
    buf |= np.uint64(value) << nbits
    nbits += np.uint64(n)
    out[pos] = np.uint32(buf & np.uint64(0xFFFFFFFF))
    full = nbits >> np.uint64(5)
    shift = full << np.uint64(5)
    return pos + np.int64(full), buf >> shift, nbits - shift


@_njit
def _header(out: Any, pos: int, buf: Any, nbits: Any, lit_len: Any, final: int) -> Any:
    """A dynamic block's header: literal lengths ``lit_len``, two 1-bit distance codes."""
    hlit = 286
    while hlit > 257 and lit_len[hlit - 1] == 0:
        hlit -= 1
    syms = np.zeros(320, np.int64)
    extra = np.zeros(320, np.int64)
    k = _rle_lengths(lit_len[:hlit], syms, extra, 0)
    k = _rle_lengths(np.ones(2, np.int64), syms, extra, k)
    clf = np.zeros(19, np.int64)
    for j in range(k):
        clf[syms[j]] += 1
    cl_len = np.zeros(19, np.int64)
    cl_code = np.zeros(19, np.int64)
    _huffman_lengths(clf, 7, cl_len)
    _canonical(cl_len, cl_code)
    hclen = 19
    while hclen > 4 and cl_len[_CL_ORDER[hclen - 1]] == 0:
        hclen -= 1
    # BFINAL, BTYPE = 2 (dynamic), HLIT, HDIST = 1 (two codes), HCLEN
    head = final | (2 << 1) | ((hlit - 257) << 3) | (1 << 8) | ((hclen - 4) << 13)
    pos, buf, nbits = _put(out, pos, buf, nbits, head, 17)
    for j in range(hclen):
        pos, buf, nbits = _put(out, pos, buf, nbits, cl_len[_CL_ORDER[j]], 3)
    for j in range(k):
        sym = syms[j]
        pos, buf, nbits = _put(out, pos, buf, nbits, cl_code[sym], cl_len[sym])
        if sym >= 16:
            width = 2 if sym == 16 else 3 if sym == 17 else 7
            pos, buf, nbits = _put(out, pos, buf, nbits, extra[j], width)
    return pos, buf, nbits


@_njit
def deflate(data: Any, out: Any, segment: int) -> int:
    """A zlib stream without its Adler-32 trailer for ``data`` (uint8) in ``out``
    (uint32 words, little-endian): literal-only dynamic-Huffman blocks of up to
    ``segment`` bytes each. Returns the stream's length in bytes."""
    n = data.size
    pos = 0
    buf = np.uint64(0x0178)  # the zlib header: 0x78 0x01 (deflate, 32 KB window, fastest)
    nbits = np.uint64(16)
    lit_len = np.zeros(286, np.int64)
    lit_code = np.zeros(286, np.int64)
    freq = np.zeros(286, np.int64)
    start = 0
    while True:
        stop = min(start + segment, n)
        final = 1 if stop >= n else 0
        _histogram(data[start:stop], freq)
        freq[256] = 1
        _huffman_lengths(freq, 15, lit_len)
        _canonical(lit_len, lit_code)
        pos, buf, nbits = _header(out, pos, buf, nbits, lit_len, final)
        # two literals (<= 30 bits) per step: the buffer holds < 32 bits before it
        i = start
        while i + 1 < stop:
            a = data[i]
            b = data[i + 1]
            buf |= np.uint64(lit_code[a] | (lit_code[b] << lit_len[a])) << nbits
            nbits += np.uint64(lit_len[a] + lit_len[b])
            out[pos] = np.uint32(buf & np.uint64(0xFFFFFFFF))
            full = nbits >> np.uint64(5)
            shift = full << np.uint64(5)
            pos += np.int64(full)
            buf >>= shift
            nbits -= shift
            i += 2
        if i < stop:
            pos, buf, nbits = _put(out, pos, buf, nbits, lit_code[data[i]], lit_len[data[i]])
        pos, buf, nbits = _put(out, pos, buf, nbits, lit_code[256], lit_len[256])
        start = stop
        if final:
            break
    out[pos] = np.uint32(buf & np.uint64(0xFFFFFFFF))
    size: int = 4 * pos + (np.int64(nbits) + 7) // 8
    return size
