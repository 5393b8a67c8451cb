"""Needle scanning across arbitrary read boundaries."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from builder.executor.refscan import NeedleScanner


def _scan(needles: list[str], pieces: list[bytes]) -> list[int]:
    scanner = NeedleScanner(needles)
    for piece in pieces:
        scanner.feed(piece)
    return scanner.result()


def test_needle_split_across_pieces() -> None:
    assert _scan(["abcdef", "zzz"], [b"xxabc", b"def", b"yy"]) == [0]


def test_overlapping_and_prefix_needles() -> None:
    assert _scan(["abc", "bcd", "ab", "q"], [b"abcd"]) == [0, 1, 2]


def test_duplicate_needles_report_every_index() -> None:
    assert _scan(["abc", "abc"], [b"--abc--"]) == [0, 1]


def test_no_needles() -> None:
    assert _scan([], [b"anything"]) == []


def test_files_do_not_join() -> None:
    scanner = NeedleScanner(["abcd"])
    scanner.feed(b"ab")
    scanner.reset_stream()
    scanner.feed(b"cd")
    assert scanner.result() == []


def test_symlink_target_scanned_alone() -> None:
    scanner = NeedleScanner(["store-hash"])
    scanner.feed(b"store-")
    scanner.scan_whole(b"/nix/store/store-hash-x")
    assert scanner.result() == [0]


@given(
    needles=st.lists(st.text(alphabet="abc", min_size=1, max_size=5), min_size=1, max_size=6),
    data=st.binary(max_size=200).map(lambda b: bytes(97 + x % 3 for x in b)),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=10),
)
def test_matches_naive_search(needles: list[str], data: bytes, cuts: list[int]) -> None:
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    expected = [i for i, n in enumerate(needles) if n.encode() in data]
    assert _scan(needles, pieces) == expected
