"""Deterministic pseudo-random numbers from integers (splitmix64), independent of Python's hash
randomisation and of call order: the same inputs give the same number in every process."""

from __future__ import annotations

MASK64 = (1 << 64) - 1
_UNIT = float(1 << 53)


def mix64(x: int) -> int:
    """The splitmix64 finaliser: a well-mixed 64-bit integer from any integer."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def hash_ints(*values: int) -> int:
    """A 64-bit hash of a sequence of integers."""
    h = 0x243F6A8885A308D3
    for v in values:
        h = mix64(h ^ (v & MASK64))
    return h


def unit(*values: int) -> float:
    """A float in [0, 1) from a sequence of integers."""
    return (hash_ints(*values) >> 11) / _UNIT
