"""Iteration over blocks of consecutive slices, to keep temporary arrays small."""

from __future__ import annotations

from collections.abc import Iterator

# Slices per block along axis 0; temporaries are this many slices in size.
CHUNK_SLICES = 16


def chunks(length: int, size: int = CHUNK_SLICES) -> Iterator[tuple[int, int]]:
    """Yield (start, stop) pairs that cover range(length) in blocks of ``size``."""
    for start in range(0, length, size):
        yield start, min(start + size, length)
