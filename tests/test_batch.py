"""Batch inputs: @list files, stdin, recursive trees with globs, mirrored outputs, conflicts,
and bounded memory and open files for 100,000 paths."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from e2compress import batch
from e2compress.batch import Inputs, Item, matches, walk
from e2compress.errors import E2CompressError
from e2compress.outputs import output_path


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def items(inputs: Inputs) -> list[Item]:
    with inputs:
        return list(inputs)


def test_list_file_and_stdin_and_plain_paths_in_order(tmp_path: Path) -> None:
    lst = tmp_path / "list.txt"
    lst.write_text("# comment\n\n  a.mrc  \nsub/b.tif\r\n\n")
    stdin = io.StringIO("c.mrcs\n\n# not a path\nd.map\n")
    got = items(Inputs(["first.mrc", f"@{lst}", "-", "last.hdf"], stdin=stdin))
    assert [i.given for i in got] == [
        "first.mrc",
        "a.mrc",
        "sub/b.tif",
        "c.mrcs",
        "d.map",
        "last.hdf",
    ]
    assert [i.target for i in got] == [
        Path("first.hdf"),
        Path("a.hdf"),
        Path("sub/b.hdf"),
        Path("c.hdf"),
        Path("d.hdf"),
        Path("last.hdf"),
    ]
    assert not any(i.problem or i.skip or i.make_dirs for i in got)


def test_stdin_is_spooled_so_it_can_be_read_twice(tmp_path: Path) -> None:
    """The conflict scan reads the inputs before the run does: stdin must survive it."""
    inputs = Inputs(["-"], outpath=tmp_path, stdin=io.StringIO("x/a.mrc\ny/a.mrc\nz/b.mrc\n"))
    with inputs:
        first = list(inputs)
        second = list(inputs)
    assert (
        [i.given for i in first] == [i.given for i in second] == ["x/a.mrc", "y/a.mrc", "z/b.mrc"]
    )
    assert first[0].problem == (
        f"x/a.mrc: y/a.mrc would also be written to {tmp_path / 'a.hdf'}; neither is compressed"
    )
    assert first[1].problem.startswith("y/a.mrc: x/a.mrc would also be written")
    assert not first[2].problem


def test_outputs_claimed_twice_fail_and_repeats_are_skipped(tmp_path: Path) -> None:
    a_mrc, a_tif, a_bz2 = (touch(tmp_path / n) for n in ("a.mrc", "a.tif", "a.map.bz2"))
    b = touch(tmp_path / "b.mrc")
    given = [str(a_mrc), str(b), str(a_tif), str(b), str(a_bz2), str(tmp_path / "." / "b.mrc")]
    got = items(Inputs(given))
    assert [bool(i.problem) for i in got] == [True, False, True, False, True, False]
    assert [bool(i.skip) for i in got] == [False, False, False, True, False, True]
    assert got[3].skip == f"{b}: given more than once; compressed once"
    assert got[0].problem == (
        f"{a_mrc}: {a_tif} and {a_bz2} would also be written to {tmp_path / 'a.hdf'}; "
        "none of them is compressed"
    )


def test_hash_collisions_are_confirmed_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every path hashing alike must not make distinct outputs conflict."""
    monkeypatch.setattr(batch, "hash", lambda _obj: 7, raising=False)
    got = items(Inputs([str(tmp_path / n) for n in ("a.mrc", "b.mrc", "c.mrc")]))
    assert not any(i.problem or i.skip for i in got)


def test_globs() -> None:
    assert matches("x/y/movie.MRC", ["*.mrc"])
    assert matches("x/y/movie.mrc", ["x/*.mrc"])  # '*' crosses directories in a path glob
    assert not matches("x/y/movie.mrc", ["y/*.mrc"])
    assert not matches("gain.tif", ["*.mrc", "*gain*.mrc"])
    assert matches("Images-Disc1/GridSquare_1/Data", ["data"])


def test_walk_selects_mirrors_and_prunes(tmp_path: Path) -> None:
    root = tmp_path / "session"
    for rel in (
        "a.mrc",
        "grid1/m1.tif",
        "grid1/m2.mrc.bz2",
        "grid1/gain_ref.tif",
        "grid1/notes.txt",
        "grid1/old.hdf",
        "grid1/.m3.mrc",  # hidden: an rsync partial
        "grid1/.m4.hdf.e2compress.tmp",
        ".hidden/x.mrc",
        "Atlas/atlas.mrc",
        "grid2/deep/m5.mrcs",
        "out/already.mrc",  # the output directory inside the tree is not walked
    ):
        touch(root / rel)
    out = root / "out"
    found = [p.relative_to(root).as_posix() for p, problem in walk(root, exclude=["*gain*"])]
    assert found == [
        "a.mrc",
        "Atlas/atlas.mrc",
        "grid1/m1.tif",
        "grid1/m2.mrc.bz2",
        "grid2/deep/m5.mrcs",
        "out/already.mrc",
    ]
    got = items(Inputs(recursive=[root], exclude=["*gain*", "atlas"], outpath=out))
    assert [(i.given, i.target, i.make_dirs) for i in got] == [
        (str(root / "a.mrc"), out / "a.hdf", False),
        (str(root / "grid1/m1.tif"), out / "grid1/m1.hdf", True),
        (str(root / "grid1/m2.mrc.bz2"), out / "grid1/m2.hdf", True),
        (str(root / "grid2/deep/m5.mrcs"), out / "grid2/deep/m5.hdf", True),
    ]
    beside = items(Inputs(recursive=[root], include=["*.hdf"]))
    assert [(i.source, i.target) for i in beside] == [
        (root / "grid1/old.hdf", root / "grid1/old.hdf")
    ]


def test_unreadable_directory_is_one_problem_and_the_walk_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "t"
    touch(root / "bad/x.mrc")
    touch(root / "good/y.mrc")
    real = os.scandir

    def scandir(path: object) -> object:
        if str(path).endswith("bad"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    got = items(Inputs(recursive=[root], outpath=tmp_path))
    assert [i.problem for i in got] == [
        f"{root / 'bad'}: cannot read directory: Permission denied",
        "",
    ]
    assert got[1].source == root / "good/y.mrc"


def test_check_refuses_unreadable_lists_and_directories(tmp_path: Path) -> None:
    with pytest.raises(E2CompressError, match="cannot read the list file"):
        Inputs([f"@{tmp_path / 'missing.txt'}"]).check()
    with pytest.raises(E2CompressError, match="only once"):
        Inputs(["-", "-"]).check()
    with pytest.raises(E2CompressError, match="readable directory"):
        Inputs(recursive=[touch(tmp_path / "file.mrc")]).check()
    Inputs(["@"], recursive=[tmp_path]).check()  # a file named "@" is a path


STREAM_CHILD = """
import json, os, sys
from pathlib import Path
from e2compress.batch import Inputs
lst, out, keep = sys.argv[1], sys.argv[2], sys.argv[3] == "keep"
fds = lambda: len(os.listdir("/proc/self/fd"))
base_fds, most_fds, count, kept = fds(), 0, 0, []
with Inputs(["@" + lst], outpath=out) as inputs:
    for k, item in enumerate(inputs):
        if k % 10000 == 0:
            most_fds = max(most_fds, fds())
        count += 1 - bool(item.problem or item.skip)
        if keep:
            kept.append(item)
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0]
print(json.dumps(dict(count=count, scanned=inputs.count, last=str(item.target),
      base_fds=base_fds, most_fds=most_fds, peak_kb=int(hwm.split()[1]))))
"""


def stream_child(tmp_path: Path, n: int, keep: bool = False) -> dict[str, Any]:
    """Plan ``n`` list entries in a fresh process; its peak RSS and open files."""
    lst = tmp_path / f"list{n}.txt"
    with open(lst, "w") as fh:
        for k in range(n):
            fh.write(f"{tmp_path}/g{k % 97}/movie_{k:06d}.tif\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [
        sys.executable,
        "-c",
        STREAM_CHILD,
        str(lst),
        str(tmp_path / "out"),
        "keep" if keep else "-",
    ]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_100000_paths_stream_with_bounded_memory_and_files(tmp_path: Path) -> None:
    """100,000 list entries: every one comes out, no input is opened, and the peak memory
    is within a few MB of planning 1,000 (16 bytes a path for the conflict scan; no list
    of items is kept: keeping them costs far more, as the control shows)."""
    small = stream_child(tmp_path, 1_000)
    big = stream_child(tmp_path, 100_000)
    assert big["count"] == big["scanned"] == 100_000
    assert big["last"] == str(tmp_path / "out" / "movie_099999.hdf")
    assert big["most_fds"] <= big["base_fds"] + 2  # the list file (and the /proc listing)
    grown_mb = (big["peak_kb"] - small["peak_kb"]) / 1024
    assert grown_mb < 12, grown_mb
    kept = stream_child(tmp_path, 100_000, keep=True)  # the test can fail
    assert (kept["peak_kb"] - small["peak_kb"]) / 1024 > 24


def test_describe() -> None:
    item = Item("a.mrc", Path("a.mrc"), Path("o/a.hdf"))
    assert batch.describe(item) == "a.mrc -> o/a.hdf"
    assert batch.describe(Item("a", Path("a"), Path("a"), problem="a: bad")) == "ERROR: a: bad"


@pytest.mark.parametrize(
    "name",
    [
        "a.mrc",
        "a.MRC",
        "a.hdf",
        "a.map.bz2",
        "a.mrc.gz",
        ".hidden",
        "noext",
        "a.b.c.tif",
        "x.hdf.gz",
    ],
)
def test_output_name_is_output_path_s(name: str, tmp_path: Path) -> None:
    assert batch.output_name(name) == output_path(tmp_path / name).name


# one path component: no NUL, no '/', not empty
_NAME = st.text(
    st.characters(blacklist_characters="\0/", blacklist_categories=("Cs",)), min_size=1
).filter(lambda s: s not in (".", ".."))


@settings(max_examples=200, deadline=None)
@given(
    names=st.lists(_NAME, min_size=1, max_size=30),
    trailing=st.booleans(),
    chunk=st.integers(1, 64),
)
def test_nul_separated_lists_give_back_every_name_verbatim(
    names: list[str], trailing: bool, chunk: int
) -> None:
    """The rule behind ``find -print0 | e2compress -``: whatever the names hold (spaces,
    '#', newlines, leading blanks) and however the stream is cut into reads, a
    NUL-separated list gives back exactly its entries, in order. (One name with no NUL
    after it is no NUL-separated list: it is read as a line.)"""
    assume(trailing or len(names) > 1)
    text = "\0".join(names) + ("\0" if trailing else "")
    assert list(batch._entries(io.StringIO(text), chunk=chunk)) == names
    with Inputs(["-"], stdin=io.StringIO(text)) as inputs:
        assert [item.given for item in inputs] == names


@settings(max_examples=200, deadline=None)
@given(
    names=st.lists(_NAME.filter(lambda s: "\n" not in s and "\r" not in s), max_size=30),
    chunk=st.integers(1, 64),
)
def test_newline_lists_give_back_the_stripped_names(names: list[str], chunk: int) -> None:
    """One a line: each line stripped, blank lines and '#' lines left out, however the
    stream is cut into reads."""
    want = [n.strip() for n in names if n.strip() and not n.strip().startswith("#")]
    got = list(batch._entries(io.StringIO("\n".join(names) + "\n"), chunk=chunk))
    assert got == want
