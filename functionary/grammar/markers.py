"""Matching a format's markers character by character, several at once.

A partial match is a frozenset of ``(marker index, position, space)`` triples: the marker has
matched ``position`` characters; ``space`` is 1 right after an optional space was taken.
Formats whose decoder shows a space after some special tokens (v2, `OutputSyntax.drop_space_after`)
may have one optional space after each such token inside a marker, as the parser drops it.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

Partial = frozenset  # of (int, int, int)
EMPTY: Partial = frozenset()


class Marker:
    """A literal the model writes; `opt` are the positions where one optional space may come."""

    __slots__ = ("text", "opt", "ends_with_drop")

    def __init__(self, text: str, drop_space_after: Iterable[str] = ()) -> None:
        if not text:
            raise ValueError("empty marker")
        opt = set()
        drops = tuple(drop_space_after)
        for token in drops:
            start = text.find(token)
            while start >= 0:
                end = start + len(token)
                if end < len(text):
                    opt.add(end)
                start = text.find(token, start + 1)
        self.text = text
        self.opt = frozenset(opt)
        # The next segment may start with the optional space (v2: a name after "<|recipient|>").
        self.ends_with_drop = any(text.endswith(t) for t in drops)

    def __repr__(self) -> str:
        return f"Marker({self.text!r})"


class MarkerSet:
    """Several markers matched at once; transitions are memoised (they repeat a lot)."""

    __slots__ = ("markers", "_first", "_memo")

    def __init__(self, markers: Sequence[Marker]) -> None:
        self.markers = tuple(markers)
        first: dict[str, list[int]] = {}
        for i, m in enumerate(self.markers):
            first.setdefault(m.text[0], []).append(i)
        self._first = {c: tuple(v) for c, v in first.items()}
        self._memo: dict[tuple, tuple[Partial, int]] = {}

    @property
    def first_chars(self) -> frozenset:
        return frozenset(self._first)

    def start(self) -> Partial:
        """Every marker at position 0 (a choice among them has begun)."""
        return frozenset((i, 0, 0) for i in range(len(self.markers)))

    def step(self, partial: Partial, c: str, fresh: bool) -> tuple[Partial, int]:
        """(new partial, index of the marker completed by `c` or -1).

        `fresh`: `c` may also start a new match (free text); otherwise only continue.
        """
        key = (partial, c, fresh)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        new = []
        done = -1
        best = -1
        for i, p, s in sorted(partial):
            text = self.markers[i].text
            if text[p] == c:
                if p + 1 == len(text):
                    if p + 1 > best:  # the longest (earliest started) completion wins
                        done, best = i, p + 1
                else:
                    new.append((i, p + 1, 0))
            elif c == " " and not s and p in self.markers[i].opt:
                new.append((i, p, 1))
        if fresh:
            for i in self._first.get(c, ()):
                if len(self.markers[i].text) == 1:
                    if best < 1:
                        done, best = i, 1
                else:
                    new.append((i, 1, 0))
        result = (frozenset(new), done)
        if len(self._memo) < 100_000:
            self._memo[key] = result
        return result

    def continuations(self, partial: Partial) -> frozenset:
        """Characters that continue at least one partial match."""
        out = set()
        for i, p, s in partial:
            m = self.markers[i]
            out.add(m.text[p])
            if not s and p in m.opt:
                out.add(" ")
        return frozenset(out)

    def completing(self, partial: Partial, which: Optional[frozenset] = None) -> frozenset:
        """Characters that would complete a marker (among `which`, default all) from `partial`,
        counting fresh single-character markers."""
        out = set()
        for i, p, _ in partial:
            text = self.markers[i].text
            if p + 1 == len(text) and (which is None or i in which):
                out.add(text[p])
        for i, m in enumerate(self.markers):
            if len(m.text) == 1 and (which is None or i in which):
                out.add(m.text)
        return frozenset(out)
