"""The character-level constraint of one request, compiled from the format's `OutputSyntax`.

One generic description for every format (no per-version state machine):

* recipient-first formats (v2, v3.llama3) start by choosing a recipient; the others start in
  text, where the call opener leads to a recipient;
* a recipient is one of the names that exist (the tools, the text recipient `all` where text
  is allowed, `python` with the code interpreter) followed by the name end marker;
* a function's body is a JSON object following its schema (`json_args`); text and python
  bodies are free, up to the next marker;
* after a body: the call closer (v3-llama3.1), another opener where more calls (or text) may
  follow, or a stop marker where the turn may end;
* tool_choice: `none` no calls; `required` no text and no end before the first call; a named
  choice exactly one call of that function (the generation prefix opened it), no text; `auto`
  anything.
  `parallel_tool_calls: false` allows one call.

The generation prefix that ends the prompt is fed first, so the cursor starts where the model
continues. `compile_constraint` caches compiled grammars by the spec's digest.
"""
from __future__ import annotations

import json
import threading
from typing import Any, Mapping, Union

from ..parsing.syntax import OutputSyntax
from .cache import LRUCache
from .errors import GrammarError, GrammarViolation
from .json_args import ArgsCtx, ArgsState
from .markers import Marker
from .spec import ConstraintSpec, parse_spec
from .states import DONE, CharSet, NameCtx, NameState, TextCtx, TextState

# Whitespace a no-text region may hold before its marker (v1 writes "\n" before a call).
NO_TEXT_WHITESPACE = 2


class Grammar:
    """A compiled constraint: build cursors with `cursor()` (cheap)."""

    def __init__(self, spec: ConstraintSpec) -> None:
        from ..prompt_template.formats import FORMATS

        fmt = FORMATS[spec.version]
        self.spec = spec
        self.syntax: OutputSyntax = fmt.syntax
        s = self.syntax
        self.prefix = fmt.prefix_for(spec.tool_choice_object)
        drop = s.drop_space_after
        self._mk = lambda text: Marker(text, drop)
        self.opener = self._mk(s.call_open)
        self.name_end = s.name_end_written
        self.closer = self._mk(s.call_close) if s.call_close else None
        self.code_opener = self._mk(s.code_open) if s.code_open else None
        self.stops = [self._mk(t) for t in s.stop_tokens]

        choice = spec.tool_choice
        self.mode = "named" if spec.named else choice
        self.functions = {name: spec.parameters(name) for name in spec.function_names}
        code = spec.code_interpreter and self.mode != "none"
        if code and s.code_parameters is not None and s.code_recipient not in self.functions:
            # The format calls the code interpreter like any function (hermes: {"code": ...}).
            self.functions[s.code_recipient] = json.loads(s.code_parameters)
            code = False
        self.code_via_opener = code and self.code_opener is not None
        self.call_names = list(self.functions) if self.mode != "none" else []
        if code and self.code_opener is None and s.code_recipient not in self.functions:
            self.call_names.append(s.code_recipient)
        self.code_as_name = code and self.code_opener is None
        if self.mode == "required" and not (self.call_names or self.code_via_opener):
            raise GrammarError("tool_choice 'required' with no tool to call")
        self._ctx: dict[Any, Any] = {}
        self._lock = threading.Lock()
        start = self._start_state()
        state = start
        for i, c in enumerate(self.prefix):
            if c not in state.allowed() or (state := state.step(c)) is None:
                raise GrammarError(f"the generation prefix {self.prefix!r} does not fit the grammar at {i}")
        self.initial_state = state

    # -- policy ---------------------------------------------------------------------------------

    def may_call(self, called: bool) -> bool:
        # A named tool_choice asks for that one call (as OpenAI and vLLM answer it).
        if self.mode == "none" or (called and (not self.spec.parallel or self.mode == "named")):
            return False
        return bool(self.call_names) or self.code_via_opener

    def may_text(self, called: bool) -> bool:
        return self.mode in ("auto", "none") if not called else self.mode in ("auto", "required")

    def may_end(self, called: bool) -> bool:
        return called or self.mode in ("auto", "none")

    # -- contexts (built once, on first use) ------------------------------------------------------

    def _memo(self, key: Any, build) -> Any:
        ctx = self._ctx.get(key)
        if ctx is None:
            with self._lock:
                ctx = self._ctx.get(key)
                if ctx is None:
                    ctx = self._ctx[key] = build()
        return ctx

    def _start_state(self) -> Any:
        if self.syntax.recipient_first:
            return self.name_state(False, True, self.opener.ends_with_drop)
        return TextState(self.text_ctx(False))

    def _stops(self, called: bool) -> list:
        target = (lambda _sp: DONE) if self.may_end(called) else None
        return [(m, target) for m in self.stops]

    def _name_options(self, called: bool, allow_text: bool) -> bool:
        text = allow_text and self.syntax.text_recipient is not None and self.may_text(called)
        return text or (self.may_call(called) and bool(self.call_names))

    def _to_name(self, called: bool, allow_text: bool):
        if not self._name_options(called, allow_text):
            return None
        return lambda space_ok: self.name_state(called, allow_text, space_ok)

    def name_state(self, called: bool, allow_text: bool, lead: bool) -> NameState:
        def build() -> NameCtx:
            s = self.syntax
            candidates = []
            if self.may_call(called):
                for name in self.call_names:
                    if self.code_as_name and name == s.code_recipient:
                        target = lambda _sp: TextState(self.code_named_ctx())
                    else:
                        target = (lambda n: lambda _sp: ArgsState(self.args_ctx(n)))(name)
                    candidates.append((name, self._mk(name + self.name_end), target))
            if allow_text and s.text_recipient is not None and self.may_text(called):
                candidates.append((s.text_recipient, self._mk(s.text_recipient + self.name_end),
                                   lambda _sp: TextState(self.segment_ctx(called))))
            return NameCtx(f"name(called={called}, text={allow_text})", candidates, lead_space=True)

        ctx = self._memo(("name", called, allow_text), build)
        return NameState(ctx, lead=lead)

    def text_ctx(self, called: bool) -> TextCtx:
        """Text where a call opener may begin a call (formats that start with text)."""

        def build() -> TextCtx:
            terminals = [(self.opener, self._to_name(called, False))]
            if self.code_opener is not None:
                ok = self.code_via_opener and self.may_call(called)
                terminals.append((self.code_opener, (lambda _sp: TextState(self.code_open_ctx())) if ok else None))
            terminals += self._stops(called)
            free = self.may_text(called)
            return TextCtx(f"text(called={called})", free, self.may_end(called), terminals,
                           ws_limit=0 if free else NO_TEXT_WHITESPACE)

        return self._memo(("text", called), build)

    def segment_ctx(self, called: bool) -> TextCtx:
        """A text segment after the text recipient (recipient-first formats)."""

        def build() -> TextCtx:
            terminals = [(self.opener, self._to_name(called, False))]
            if self.closer is not None:
                terminals.append((self.closer, None))
            terminals += self._stops(called)
            return TextCtx(f"segment(called={called})", True, self.may_end(called), terminals)

        return self._memo(("segment", called), build)

    def args_ctx(self, name: str) -> ArgsCtx:
        def build() -> ArgsCtx:
            # Whatever ends arguments in the stream parser must not occur inside them. Where the
            # parser always reads arguments by their JSON extent, only the stops (special tokens
            # that end the turn) are kept out: the markers are JSON text there (`}`, `{"name": "`).
            excluded = list(self.stops)
            if not self.syntax.json_arguments:
                excluded = [self.opener] + ([self.closer] if self.closer else []) + excluded
            return ArgsCtx(name, self.functions.get(name), excluded, lambda _sp: TextState(self.after_ctx()),
                           self.syntax.json_separators)

        return self._memo(("args", name), build)

    def after_ctx(self) -> TextCtx:
        """Right after a complete argument object: the closer, another call, or the end."""

        def build() -> TextCtx:
            if self.closer is not None:
                terminals = [(self.closer, lambda _sp: TextState(self.text_ctx(True)))]
                return TextCtx("after-args", False, False, terminals)
            terminals = [(self.opener, self._to_name(True, True))] + self._stops(True)
            return TextCtx("after-args", False, self.may_end(True), terminals)

        return self._memo(("after",), build)

    def code_named_ctx(self) -> TextCtx:
        """Python code sent to the `python` recipient: free up to the next marker."""

        def build() -> TextCtx:
            terminals = [(self.opener, self._to_name(True, True))]
            if self.closer is not None:
                terminals.append((self.closer, lambda _sp: TextState(self.text_ctx(True))))
            terminals += self._stops(True)
            return TextCtx("code", True, self.may_end(True), terminals)

        return self._memo(("code",), build)

    def code_open_ctx(self) -> TextCtx:
        """Python code after the code opener (v3-llama3.1): the rest of the turn."""
        return self._memo(("code-open",), lambda: TextCtx("code-open", True, True, self._stops(True)))

    # -- cursors --------------------------------------------------------------------------------

    def cursor(self) -> "Cursor":
        return Cursor(self.initial_state)

    def marker_texts(self) -> list[str]:
        """Every marker string of the format (for special tokens that spell one)."""
        s = self.syntax
        out = [s.call_open, s.name_end, s.name_end_written, *s.stop_tokens, *s.drop_space_after]
        out += [m for m in (s.call_close, s.code_open) if m]
        return out

    def __repr__(self) -> str:
        return f"Grammar({self.spec.version}, {self.mode}, {self.call_names})"


class Cursor:
    """Walks one output character by character (immutable states: `copy` is free)."""

    __slots__ = ("state", "text")

    def __init__(self, state: Any, text: str = "") -> None:
        self.state = state
        self.text = text

    def allowed(self) -> CharSet:
        return self.state.allowed()

    def allows(self, text: str) -> bool:
        state = self.state
        for c in text:
            if c not in state.allowed():
                return False
            state = state.step(c)
            if state is None:
                return False
        return True

    def feed(self, text: str) -> "Cursor":
        state = self.state
        for i, c in enumerate(text):
            nxt = state.step(c) if c in state.allowed() else None
            if nxt is None:
                raise GrammarViolation(
                    f"{c!r} is not allowed after {(self.text + text[:i])[-60:]!r} (state {state!r})"
                )
            state = nxt
        self.state = state
        self.text += text
        return self

    def can_end(self) -> bool:
        return self.state.can_end()

    @property
    def done(self) -> bool:
        return self.state is DONE

    def copy(self) -> "Cursor":
        return Cursor(self.state, self.text)


_CACHE: "LRUCache[Grammar]" = LRUCache(256)


def compile_constraint(spec: Union[ConstraintSpec, Mapping[str, Any]]) -> Grammar:
    """The compiled grammar for a spec (JSON or `ConstraintSpec`), cached by its digest."""
    spec = parse_spec(spec)
    return _CACHE.get(spec.digest, lambda: Grammar(spec))


def clear_cache() -> None:
    _CACHE.clear()
