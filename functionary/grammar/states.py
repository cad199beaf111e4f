"""Character-level states of the output grammar (pure: no tokenizer, no engine).

Every state is an immutable value with the same small protocol:

* ``allowed()`` -> `CharSet`: the characters that may come next;
* ``step(c)`` -> the next state, or None (the caller checks ``c in allowed()`` first);
* ``can_end()``: whether the output may end here (end-of-sequence token);
* ``key()``: a hashable value that determines everything the state accepts from here on (for
  mask caches), or None;
* ``free()``: a `FreeInfo` when the state is in free text: every character outside
  `FreeInfo.interesting` (a few ASCII characters) leaves it unchanged. The token layer uses it
  to allow most of the vocabulary at once instead of walking it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable, Optional, Sequence

from .markers import EMPTY, Marker, MarkerSet, Partial

WHITESPACE = frozenset(" \t\n\r")


class CharSet:
    """A set of characters, or (negated) every character except some."""

    __slots__ = ("chars", "negated")

    def __init__(self, chars: frozenset, negated: bool = False) -> None:
        self.chars = chars
        self.negated = negated

    def __contains__(self, c: str) -> bool:
        return (c in self.chars) != self.negated

    def __repr__(self) -> str:
        return f"CharSet({'all but ' if self.negated else ''}{''.join(sorted(self.chars))!r})"


ANY = CharSet(frozenset(), negated=True)
NOTHING = CharSet(frozenset())


@dataclass(frozen=True)
class FreeInfo:
    """See the module docstring. `pending`: characters continuing a pending partial marker
    (their tokens need a real walk); `base`: the state without that partial match;
    `max_len`: how many more characters a length-bounded JSON string takes (None: unbounded)."""

    interesting: frozenset
    pending: frozenset
    base: Any
    max_len: Optional[int] = None


# A transition target: called with `space_ok` (the marker ended with a token after which
# one optional space may follow), returns the next state.
Enter = Callable[[bool], Any]


class DoneState:
    """After a stop marker: the turn is over (the engine stops; nothing else is generated)."""

    __slots__ = ()

    def allowed(self) -> CharSet:
        return ANY

    def step(self, c: str) -> "DoneState":
        return self

    def can_end(self) -> bool:
        return True

    def key(self) -> Hashable:
        return ("done",)

    def free(self) -> None:
        return None

    def __repr__(self) -> str:
        return "DONE"


DONE = DoneState()


class TextCtx:
    """A region that ends at one of its terminal markers.

    `free`: any text may come (text, python code); otherwise only whitespace (at most
    `ws_limit` characters) and the markers. A terminal whose target is None is forbidden: in
    free text it must not be completed. Identity-hashed: one per compiled grammar and place.
    """

    __slots__ = ("name", "free", "ws_limit", "end_ok", "mset", "targets", "allowed_idx", "forbidden_idx",
                 "interesting", "_starts", "__weakref__")

    def __init__(self, name: str, free: bool, can_end: bool, terminals: Sequence[tuple[Marker, Optional[Enter]]],
                 ws_limit: int = 0) -> None:
        if not free:
            terminals = [t for t in terminals if t[1] is not None]
        self.name = name
        self.free = free
        self.ws_limit = ws_limit
        self.end_ok = can_end
        self.mset = MarkerSet([m for m, _ in terminals])
        self.targets = tuple(t for _, t in terminals)
        self.allowed_idx = frozenset(i for i, t in enumerate(self.targets) if t is not None)
        self.forbidden_idx = frozenset(i for i, t in enumerate(self.targets) if t is None)
        self.interesting = self.mset.first_chars
        self._starts = frozenset(m.text[0] for m, t in terminals if t is not None)

    def __repr__(self) -> str:
        return f"<TextCtx {self.name}>"


class TextState:
    __slots__ = ("ctx", "partial", "ws", "_allowed")

    def __init__(self, ctx: TextCtx, partial: Partial = EMPTY, ws: int = 0) -> None:
        self.ctx = ctx
        self.partial = partial
        self.ws = ws
        self._allowed: Optional[CharSet] = None

    def allowed(self) -> CharSet:
        a = self._allowed
        if a is None:
            ctx = self.ctx
            if ctx.free:
                a = CharSet(ctx.mset.completing(self.partial, ctx.forbidden_idx), negated=True)
            elif self.partial:
                a = CharSet(ctx.mset.continuations(self.partial))
            else:
                chars = ctx._starts
                if self.ws < ctx.ws_limit:
                    chars = chars | WHITESPACE
                a = CharSet(chars)
            self._allowed = a
        return a

    def step(self, c: str) -> Optional[Any]:
        ctx = self.ctx
        fresh = ctx.free or not self.partial
        new, done = ctx.mset.step(self.partial, c, fresh)
        if done >= 0:
            target = ctx.targets[done]
            if target is None:
                return None
            return target(ctx.mset.markers[done].ends_with_drop)
        if ctx.free:
            return TextState(ctx, new) if (new or self.partial) else self
        if self.partial:
            return TextState(ctx, new, self.ws) if new else None
        if new:
            return TextState(ctx, new, self.ws)
        if c in WHITESPACE and self.ws < ctx.ws_limit:
            return TextState(ctx, EMPTY, self.ws + 1)
        return None

    def can_end(self) -> bool:
        return self.ctx.end_ok and (self.ctx.free or not self.partial)

    def key(self) -> Hashable:
        return (self.ctx, self.partial, self.ws)

    def free(self) -> Optional[FreeInfo]:
        ctx = self.ctx
        if not ctx.free:
            return None
        if not self.partial:
            return FreeInfo(ctx.interesting, frozenset(), self)
        return FreeInfo(ctx.interesting, ctx.mset.continuations(self.partial), TextState(ctx))

    def __repr__(self) -> str:
        return f"Text({self.ctx.name}, {sorted(self.partial)}, ws={self.ws})"


class NameCtx:
    """Choosing a recipient: each candidate is `name + name_end`, then its body starts."""

    __slots__ = ("name", "mset", "targets", "lead_space", "names", "__weakref__")

    def __init__(self, name: str, candidates: Sequence[tuple[str, Marker, Enter]], lead_space: bool) -> None:
        self.name = name
        self.names = tuple(n for n, _, _ in candidates)
        self.mset = MarkerSet([m for _, m, _ in candidates])
        self.targets = tuple(t for _, _, t in candidates)
        self.lead_space = lead_space

    def __repr__(self) -> str:
        return f"<NameCtx {self.name} {list(self.names)}>"


class NameState:
    __slots__ = ("ctx", "partial", "lead", "_allowed")

    def __init__(self, ctx: NameCtx, partial: Optional[Partial] = None, lead: Optional[bool] = None) -> None:
        self.ctx = ctx
        self.partial = ctx.mset.start() if partial is None else partial
        self.lead = ctx.lead_space if lead is None else lead
        self._allowed: Optional[CharSet] = None

    def allowed(self) -> CharSet:
        a = self._allowed
        if a is None:
            chars = self.ctx.mset.continuations(self.partial)
            if self.lead:
                chars = chars | {" "}
            a = self._allowed = CharSet(chars)
        return a

    def step(self, c: str) -> Optional[Any]:
        ctx = self.ctx
        if self.lead and c == " ":
            return NameState(ctx, self.partial, False)
        new, done = ctx.mset.step(self.partial, c, False)
        if done >= 0:
            return ctx.targets[done](ctx.mset.markers[done].ends_with_drop)
        return NameState(ctx, new, False) if new else None

    def can_end(self) -> bool:
        return False

    def key(self) -> Hashable:
        return (self.ctx, self.partial, self.lead)

    def free(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"Name({self.ctx.name}, {sorted(self.partial)})"
