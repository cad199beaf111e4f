"""Incremental parsing of model output into text and tool-call events, for every format.

`StreamParser` is fed only the new text of each engine step. It keeps just the unconsumed tail
(at most a partial marker), so the work per chunk is proportional to the chunk. Parsing a whole
output is "feed everything, then finish", which makes streamed and non-streamed results equal by
construction.
"""
from __future__ import annotations

import re
import secrets
import string
from enum import Enum
from typing import Callable, Iterable, Optional

from .syntax import OutputSyntax
from .events import Event, TextDelta, ToolCallArgsDelta, ToolCallStart

_ID_ALPHABET = string.ascii_letters + string.digits
# A recipient written without grammar sampling: word characters, dots and dashes, surrounded by
# optional whitespace. Anything else after an opener is text that happened to contain the opener.
_NAME_SHAPE = re.compile(r"\s*[\w.\-]*\s*")
_MAX_NAME_LEN = 256


def new_tool_call_id() -> str:
    """A fresh OpenAI-style tool call id: `call_` and 24 random letters and digits."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


class _State(Enum):
    TEXT = "text"
    NAME = "name"
    ARGS = "args"
    CODE = "code"
    DONE = "done"


class _DropSpaceAfter:
    """Removes the one space SentencePiece decoding shows after some special tokens."""

    def __init__(self, tokens: tuple[str, ...]) -> None:
        self._tokens = tokens
        self._held = ""

    def feed(self, text: str) -> str:
        buf = self._held + text
        hold = 0
        for token in self._tokens:
            if buf.endswith(token):
                hold = max(hold, len(token))  # the space may arrive with the next chunk
            else:
                hold = max(hold, _partial_suffix(buf, token))
        self._held = buf[len(buf) - hold:] if hold else ""
        return self._drop(buf[: len(buf) - hold])

    def _drop(self, text: str) -> str:
        for token in self._tokens:
            text = text.replace(token + " ", token)
        return text

    def finish(self) -> str:
        held, self._held = self._held, ""
        return self._drop(held)


class _JsonExtent:
    """Finds where a JSON value ends, across chunks (strings and escapes tracked)."""

    __slots__ = ("depth", "in_string", "escape", "done")

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.done = False

    def scan(self, text: str) -> int:
        """Advance over `text`; the index just after the value's end, or -1 if it goes on.
        Text that does not start a JSON object or array ends the scan at once (index 0)."""
        for i, c in enumerate(text):
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif c == "\\":
                    self.escape = True
                elif c == '"':
                    self.in_string = False
            elif c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth <= 0:
                    self.done = True
                    return i + 1
            elif self.depth == 0 and not c.isspace():
                self.done = True
                return i
        return -1


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


class StreamParser:
    """Turns model output, chunk by chunk, into `TextDelta` / `ToolCallStart` / `ToolCallArgsDelta`.

    `prefix` is the tool_choice generation prefix that ends the prompt (the model continues from
    it); it is parsed first, so a named choice opens its call before any output arrives.
    `tool_names`, when given, are the only recipients accepted (plus text and code recipients);
    without them any name-shaped recipient is accepted.
    """

    def __init__(
        self,
        syntax: OutputSyntax,
        prefix: str = "",
        tool_names: Optional[Iterable[str]] = None,
        id_factory: Callable[[], str] = new_tool_call_id,
        json_arguments: bool = False,
    ) -> None:
        self.syntax = syntax
        self._json_arguments = json_arguments or syntax.json_arguments
        self._extent: Optional[_JsonExtent] = None  # the arguments being scanned, if any
        self._new_id = id_factory
        self._filter = _DropSpaceAfter(syntax.drop_space_after) if syntax.drop_space_after else None
        self._allowed: Optional[set[str]] = None
        if tool_names is not None:
            self._allowed = set(tool_names) | {syntax.code_recipient}
            if syntax.text_recipient:
                self._allowed.add(syntax.text_recipient)
        stops = list(syntax.stop_tokens)
        self._terminators = {
            _State.TEXT: [syntax.call_open] + ([syntax.code_open] if syntax.code_open else []) + stops,
            _State.NAME: [syntax.name_end] + stops,
            _State.ARGS: [syntax.call_open] + ([syntax.call_close] if syntax.call_close else []) + stops,
            _State.CODE: stops,
        }
        self._state = _State.NAME if syntax.recipient_first else _State.TEXT
        self._buf = ""
        self._name = ""  # raw text of the recipient being read
        # Where a recipient that turns out not to be one returns to (None: the start of the output).
        self._return_state: Optional[_State] = None
        self._call_index = -1
        self._call_name = ""
        self._body_started = False  # the current segment has emitted non-whitespace
        self._body_emitted = False  # the current call has emitted arguments
        # Trailing whitespace held until more non-whitespace follows (text survives a call in v3.1).
        self._text_ws = ""
        self._args_ws = ""
        self._text_emitted = False
        self._anything_emitted = False
        self._events: list[Event] = []
        self._finished = False
        if prefix:
            self._buf = prefix
            self._run(final=False)
            if self._state is _State.NAME and not self._anything_emitted:
                self._return_state = None  # the opener is the prompt's, not text the model wrote

    @property
    def has_tool_calls(self) -> bool:
        """Whether at least one tool call has started."""
        return self._call_index >= 0

    def feed(self, text: str) -> list[Event]:
        """Parse the next piece of output; returns the events it completes."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        if self._state is _State.DONE:  # after a stop token nothing more belongs to the turn
            return self._take()
        if self._filter is not None:
            text = self._filter.feed(text)
        self._buf += text
        self._run(final=False)
        return self._take()

    def finish(self) -> list[Event]:
        """The output ended: flush held text and close the open segment."""
        if self._finished:
            return []
        if self._filter is not None:
            self._buf += self._filter.finish()
        self._run(final=True)
        self._end_of_output()
        self._finished = True
        return self._take()

    # -- machinery -------------------------------------------------------------------------

    def _take(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _emit(self, event: Event) -> None:
        self._events.append(event)
        self._anything_emitted = True

    def _run(self, final: bool) -> None:
        while self._state is not _State.DONE:
            buf = self._buf
            extent = self._extent
            if self._state is _State.ARGS and extent is not None and not extent.done:
                end = extent.scan(buf)  # no marker can begin inside the object
                upto = len(buf) if end < 0 else end
                self._buf = buf[upto:]
                self._consume(buf[:upto])
                if end < 0:
                    return
                continue
            found = -1
            marker = ""
            for candidate in self._terminators[self._state]:
                i = buf.find(candidate)
                if i >= 0 and (found < 0 or i < found or (i == found and len(candidate) > len(marker))):
                    found, marker = i, candidate
            if found >= 0:
                self._buf = buf[found:]
                if self._consume(buf[:found]):
                    self._buf = buf[found + len(marker):]
                    self._on_marker(marker)
                continue
            hold = 0 if final else max(_partial_suffix(buf, m) for m in self._terminators[self._state])
            self._buf = buf[len(buf) - hold:] if hold else ""
            if not self._consume(buf[: len(buf) - hold]):
                continue  # a supposed recipient was text: re-scan it in the state we returned to
            return

    def _consume(self, chunk: str) -> bool:
        """Feed body characters to the current state; False if they sent it back to re-scan."""
        if not chunk:
            return True
        if self._state is _State.NAME:
            self._name += chunk
            if not self._name_possible(self._name):
                self._name_is_not_a_recipient()
                return False
        elif self._state is _State.TEXT:
            self._text(chunk)
        else:
            self._args(chunk)
        return True

    def _name_possible(self, raw: str) -> bool:
        if len(raw) > _MAX_NAME_LEN or not _NAME_SHAPE.fullmatch(raw):
            return False
        core = raw.strip()
        if self._allowed is not None and core:
            return any(name.startswith(core) for name in self._allowed)
        return True

    def _name_is_not_a_recipient(self) -> None:
        """An opener was not followed by a recipient: it and what followed belong to the body
        that was running before it (or, at the very start, to the text)."""
        raw, self._name = self._name, ""
        if self._return_state is None:
            self._state = _State.TEXT
            self._begin_segment()
        else:
            self._state = self._return_state
            (self._text if self._state is _State.TEXT else self._args)(self.syntax.call_open)
        self._buf = raw + self._buf

    def _on_marker(self, marker: str) -> None:
        s = self.syntax
        if marker in s.stop_tokens:
            if self._state is _State.NAME:
                self._buf = ""
                self._end_of_output()
                return
            self._close_segment()
            self._state = _State.DONE
            self._buf = ""
            return
        if self._state is _State.NAME:  # marker == name_end
            name = self._name.strip()
            if not name or (self._allowed is not None and name not in self._allowed):
                self._name += marker
                self._name_is_not_a_recipient()
                return
            self._name = ""
            self._open_segment(name)
            return
        if marker == s.call_open:
            # The running body stays open until the recipient after the opener is confirmed.
            self._return_state = self._state
            self._state = _State.NAME
            return
        self._close_segment()
        if marker == s.code_open:
            self._start_call(s.code_recipient)
            self._state = _State.CODE
        else:  # call_close: free text may follow
            self._state = _State.TEXT
            self._begin_segment()

    def _open_segment(self, name: str) -> None:
        if self._return_state is not None:
            self._state = self._return_state
            self._close_segment()
        self._return_state = _State.TEXT
        if name == self.syntax.text_recipient:
            self._state = _State.TEXT
            self._begin_segment()
        else:
            self._start_call(name)
            self._state = _State.ARGS

    def _start_call(self, name: str) -> None:
        self._call_index += 1
        self._call_name = name
        self._body_emitted = False
        self._state = _State.ARGS
        json_body = self._json_arguments and (
            name != self.syntax.code_recipient or self.syntax.code_parameters is not None)
        self._extent = _JsonExtent() if json_body else None
        self._begin_segment()
        self._emit(ToolCallStart(index=self._call_index, id=self._new_id(), name=name))

    def _begin_segment(self) -> None:
        self._body_started = False
        if self._state is not _State.TEXT:
            self._args_ws = ""
        elif self.syntax.strip_text_segments:
            self._text_ws = ""

    def _close_segment(self) -> None:
        if self._state in (_State.ARGS, _State.CODE):
            if not self._body_emitted and (self._call_name != self.syntax.code_recipient
                                           or self.syntax.code_parameters is not None):
                self._emit(ToolCallArgsDelta(index=self._call_index, arguments="{}"))
            self._args_ws = ""
        elif self._state is _State.TEXT and self.syntax.strip_text_segments:
            self._text_ws = ""

    def _end_of_output(self) -> None:
        if self._state is _State.NAME:
            name = self._name.strip()
            if name and (self._allowed is None or name in self._allowed):
                self._name = ""
                self._open_segment(name)
            else:
                self._name_is_not_a_recipient()
                self._run(final=True)
        if self._state is not _State.DONE:
            self._close_segment()
            self._state = _State.DONE

    def _text(self, chunk: str) -> None:
        s = self.syntax
        if not self._body_started and (s.strip_text_segments or not self._anything_emitted):
            chunk = chunk.lstrip()
            if not chunk:
                return
        core = chunk.rstrip()
        if not core:
            self._text_ws += chunk
            return
        lead = self._text_ws
        if not self._body_started and self._text_emitted and s.strip_text_segments:
            lead = s.text_joiner
        self._text_ws = chunk[len(core):]
        self._body_started = True
        self._text_emitted = True
        self._emit(TextDelta(lead + core))

    def _args(self, chunk: str) -> None:
        if not self._body_started:
            chunk = chunk.lstrip()
            if not chunk:
                return
        core = chunk.rstrip()
        if not core:
            self._args_ws += chunk
            return
        lead, self._args_ws = self._args_ws, chunk[len(core):]
        self._body_started = True
        self._body_emitted = True
        self._emit(ToolCallArgsDelta(index=self._call_index, arguments=lead + core))
