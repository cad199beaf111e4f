"""The output side of a format: the markers a model writes, as data.

One `OutputSyntax` drives the stream parser, the generation prefixes and (later) the grammar,
so a format's markers are written down exactly once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class OutputSyntax:
    """What an assistant turn looks like after the generation prompt.

    A turn is a sequence of segments. A segment opens with `call_open`, names its recipient up to
    `name_end`, then carries a body: text when the recipient is `text_recipient`, arguments
    otherwise. In `recipient_first` formats the generation prompt already ends with the opener,
    so the output starts with a recipient name; in the others it starts with free text.
    """

    call_open: str
    name_end: str
    stop_tokens: tuple[str, ...]
    recipient_first: bool = False
    # The same marker as `name_end` the way prompts write it (v1 writes ":\n", the parser accepts ":").
    name_end_render: Optional[str] = None
    call_close: Optional[str] = None  # v3-llama3.1: "</function>", then free text may follow
    text_recipient: Optional[str] = None  # "all" where text is a segment of its own
    code_open: Optional[str] = None  # v3-llama3.1: "<|python_tag|>" makes the rest python code
    code_recipient: str = "python"
    # True: each text segment is stripped and segments are joined by `text_joiner`.
    # False: text is kept verbatim, only the turn as a whole is stripped (v3-llama3.1).
    strip_text_segments: bool = True
    text_joiner: str = "\n"
    # SentencePiece decoding shows a space after these special tokens; it is not part of the format.
    drop_space_after: tuple[str, ...] = ()
    # True: arguments are always one JSON value, read by its extent (hermes, llama3-json write
    # the call as a JSON object whose closing brace is part of `call_close`). False: arguments
    # are the text up to the next marker unless grammar sampling guarantees JSON.
    json_arguments: bool = False
    # JSON Schema (as JSON text) of the code interpreter's arguments where the format calls it
    # like any other function (hermes: `{"code": "..."}`); None: code is a free-text body.
    code_parameters: Optional[str] = None
    # Arguments in the compact JSON the format's own prompts and training data show
    # (`json.dumps`: ", " and ": ", no other whitespace) under grammar sampling; None: any
    # whitespace between tokens, at most a bounded run.
    json_separators: Optional[tuple[str, str]] = None

    @property
    def name_end_written(self) -> str:
        return self.name_end if self.name_end_render is None else self.name_end_render
