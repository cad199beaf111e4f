"""Function arguments: a JSON object that follows the function's JSON Schema.

Built on lm-format-enforcer's own `JsonSchemaParser` (character level), wrapped so that

* the arguments never contain a marker that would end them early in the stream parser (a
  `>>>` or `</function>` inside a JSON string, a stop string ...);
* the object ends the region as soon as it is complete (no trailing whitespace loop);
* free JSON strings count as free text for the token layer (any character but `"`, `\\`,
  control characters and marker starts), including non-ASCII characters, which
  lm-format-enforcer only knows from its alphabet;
* holes of lm-format-enforcer that let invalid JSON through are closed: a trailing comma
  before `}`, an exponent or a decimal point in an integer, an exponent right after a decimal
  point (`1.e5`), `maxLength: 0`, characters it would take by dropping parsers off its stack;
* a number ends after `MAX_NUMBER_CHARS` characters;
* keys follow the schema's `properties` order (optional ones may be left out), as in xgrammar.

Not enforced (lm-format-enforcer's limits): numeric bounds (`minimum`, `multipleOf` ...),
`uniqueItems`, string `format`s, enum values or keys that need JSON escapes; a `pattern` is
matched over ASCII only. Arrays without `maxItems` hold at most 20 items.
"""
from __future__ import annotations

import logging
from typing import Any, Hashable, Mapping, Optional, Sequence, Union

from .markers import EMPTY, Marker, MarkerSet, Partial
from .states import CharSet, Enter, FreeInfo

logger = logging.getLogger(__name__)

try:  # pragma: no cover - import guard
    from lmformatenforcer import CharacterLevelParserConfig, JsonSchemaParser
    from lmformatenforcer.characterlevelparser import ForceStopParser, SequenceParser, StringParser, UnionParser
    from lmformatenforcer.jsonschemaparser import ListParsingState
    from lmformatenforcer.regexparser import RegexParser
    from lmformatenforcer.consts import WHITESPACE_CHARACTERS
    from lmformatenforcer.jsonschemaparser import (
        NumberParsingState,
        ObjectParsingStage,
        ObjectParsingState,
        StringParsingState,
    )
except ImportError as exc:  # pragma: no cover
    raise ImportError(
        "functionary.grammar needs lm-format-enforcer: pip install 'lm-format-enforcer>=0.11'"
    ) from exc

ASCII = frozenset(chr(i) for i in range(128))
CONTROL = frozenset(chr(i) for i in range(32)) | {"\x7f"}
PRINTABLE_ASCII = "".join(chr(i) for i in range(32, 127))
PLACEHOLDER = "a"  # what lm-format-enforcer is fed for a character outside its alphabet in free strings
MAX_CONSECUTIVE_WHITESPACE = 12  # lm-format-enforcer's default
# A number ends after this many characters (small models otherwise write digits until max_tokens).
MAX_NUMBER_CHARS = 24

_CONFIG = CharacterLevelParserConfig(
    alphabet=PRINTABLE_ASCII,
    max_consecutive_whitespaces=MAX_CONSECUTIVE_WHITESPACE,
    force_json_field_order=False,
)

# Used when a schema is missing or lm-format-enforcer cannot compile it: any JSON object.
ANY_OBJECT = {"type": "object"}
NO_PARAMETERS = {"type": "object", "properties": {}}


_ANY: dict = {"anyOf": [{"type": t} for t in ("string", "number", "boolean", "null", "array", "object")]}
_SCHEMA_KEYS = ("type", "anyOf", "oneOf", "allOf", "enum", "const", "properties", "items", "additionalProperties")


def _literal(value: Any) -> dict:
    """A schema lm-format-enforcer can parse for one enum / const value (booleans and
    compound values only by their type)."""
    if isinstance(value, str):
        return {"type": "string", "enum": [value]}
    if value is None:
        return {"type": "null"}
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, (int, float)):
        return {"enum": [value]}
    return dict(_ANY)


def _enum(values: list) -> dict:
    strings = [v for v in values if isinstance(v, str)]
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    options = ([{"type": "string", "enum": strings}] if strings else []) + ([{"enum": numbers}] if numbers else [])
    options += [_literal(v) for v in values if not isinstance(v, str) and (isinstance(v, bool) or not isinstance(v, (int, float)))]
    if not options:
        return dict(_ANY)
    return options[0] if len(options) == 1 else {"anyOf": options}


def _normalize(schema: Any) -> dict:
    """Rewrite what lm-format-enforcer cannot parse (it would dead-end on it, or write what
    the schema refuses) into what it can: untyped schemas, type lists next to other keywords,
    mixed or non-string enums and consts, `required` keys that are not properties, boolean
    schemas."""
    if schema is True or not isinstance(schema, Mapping):
        return dict(_ANY)
    out = dict(schema)
    if "const" in out:
        return _literal(out["const"])
    if isinstance(out.get("enum"), list):
        return _enum(out["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(out.get(key), list):
            out[key] = [_normalize(s) for s in out[key] if s is not False] or [dict(_ANY)]
    types = out.get("type")
    if isinstance(types, list):
        rest = {k: v for k, v in out.items() if k != "type"}
        return {"anyOf": [_normalize({**rest, "type": t}) for t in types]} if types else dict(_ANY)
    if types is None:
        if "properties" in out or "additionalProperties" in out:
            out["type"] = "object"
        elif "items" in out:
            out["type"] = "array"
        elif not any(k in out for k in ("anyOf", "oneOf", "allOf")):
            return dict(_ANY)
    extra = out.get("additionalProperties")
    if isinstance(extra, Mapping):
        extra = out["additionalProperties"] = _normalize(extra)
    if isinstance(out.get("properties"), Mapping):
        props = {k: _normalize(v) for k, v in out["properties"].items() if v is not False}
        if isinstance(out.get("required"), list):
            # lm-format-enforcer only writes declared keys: declare the required ones that
            # only `additionalProperties` allows; drop those nothing allows.
            for k in out["required"]:
                if k not in props and extra is not False:
                    props[k] = extra if isinstance(extra, Mapping) else dict(_ANY)
            out["required"] = [k for k in out["required"] if k in props]
        out["properties"] = props
    if "items" in out:
        out["items"] = _normalize(out["items"]) if isinstance(out["items"], Mapping) else dict(_ANY)
    return out


def normalize_parameters(schema: Optional[Mapping[str, Any]]) -> dict:
    """The schema lm-format-enforcer gets: `$ref`s inlined, an object at the top, and only
    constructs it can parse (`_normalize`)."""
    if schema is None:
        return dict(NO_PARAMETERS)
    from ..prompt_template.typescript import resolve_refs

    resolved = resolve_refs(schema)
    resolved.pop("$defs", None)
    resolved.pop("definitions", None)
    if not any(k in resolved for k in _SCHEMA_KEYS):
        resolved["type"] = "object"
    return _normalize(resolved)


def build_parser(schema: Mapping[str, Any]) -> Any:
    """lm-format-enforcer's parser for `schema` (falls back to any object if it cannot)."""
    try:
        return JsonSchemaParser(dict(schema), _CONFIG)
    except Exception as exc:  # noqa: BLE001 - lm-format-enforcer raises many kinds
        logger.warning("lm-format-enforcer cannot compile a tool schema (%s); any JSON object allowed", exc)
        return JsonSchemaParser(dict(ANY_OBJECT), _CONFIG)


class Separators:
    """JSON written as `json.dumps(..., separators=(item, key))` writes it: after a structural
    `,` / `:` exactly the separator's spaces, no whitespace anywhere else."""

    __slots__ = ("spaces",)

    def __init__(self, separators: tuple[str, str]) -> None:
        item, key = separators
        if item.strip() != "," or key.strip() != ":" or item.lstrip(",").strip(" ") or key.lstrip(":").strip(" "):
            raise ValueError(f"separators must be ',' and ':' each followed by spaces, got {separators!r}")
        self.spaces = {",": len(item) - 1, ":": len(key) - 1}

    def chars(self, parser: Any, chars: str) -> str:
        """`chars` (what may follow outside a string) with the whitespace the separators allow."""
        owed = self.spaces.get(parser.last_non_whitespace_character, 0) - parser.num_consecutive_whitespaces
        if parser.num_consecutive_whitespaces and parser.last_non_whitespace_character not in self.spaces:
            owed = 0
        if owed > 0:
            return " " if " " in chars else ""
        return "".join(c for c in chars if c not in WHITESPACE_CHARACTERS)


def _in_string(parser: Any) -> bool:
    stack = parser.object_stack
    return bool(stack) and isinstance(stack[-1], StringParsingState) and stack[-1].seen_opening_quote \
        and not stack[-1].seen_closing_quote


class ArgsCtx:
    """The arguments of one function in one compiled grammar (identity-hashed)."""

    __slots__ = ("name", "schema", "mset", "after", "interesting", "separators", "_root", "__weakref__")

    def __init__(self, name: str, schema: Mapping[str, Any], excluded: Sequence[Marker], after: Enter,
                 separators: Optional[tuple[str, str]] = None) -> None:
        self.separators = Separators(separators) if separators is not None else None
        self.name = name
        self.schema = normalize_parameters(schema) if schema is not None else dict(NO_PARAMETERS)
        self.mset = MarkerSet(excluded)
        self.after = after
        self.interesting = frozenset('"\\') | CONTROL | self.mset.first_chars
        self._root: Any = None

    def root(self) -> Any:
        if self._root is None:
            self._root = build_parser(self.schema)
        return self._root

    def __repr__(self) -> str:
        return f"<ArgsCtx {self.name}>"


def _branches(parser: Any) -> list:
    if isinstance(parser, UnionParser):
        return [b for p in parser.parsers for b in _branches(p)]
    return [parser]


def _freetext(parser: Any) -> Union[bool, int, None]:
    """False outside a free JSON string (no enum, no pattern; in every branch); inside, how
    many more characters it takes (None: unbounded). lm-format-enforcer's own shortcut key
    misreads `maxLength: 0`."""
    key = parser.shortcut_key()
    if not (isinstance(key, tuple) and key and key[0] == "json_freetext"):
        return False
    left = None
    for branch in _branches(parser):
        stack = getattr(branch, "object_stack", None)
        if not stack or not isinstance(stack[-1], StringParsingState):
            return False
        top = stack[-1]
        if top.max_length is not None:
            room = top.max_length - len(top.parsed_string)
            if room <= 0:
                return False
            left = room if left is None else min(left, room)
    return left if left is not None else None


def _ordered_keys(p: Any) -> Optional[list]:
    """The keys an object may write next when keys follow the schema's `properties` order (as
    xgrammar writes them): those after the last key written, up to and including the first
    required one still missing. None for a dictionary (no declared properties)."""
    if p.is_dictionary:
        return None
    names = list(p.schema_object.properties.keys())
    written = [names.index(k) for k in p.existing_keys if k in names]
    rest = names[max(written) + 1:] if written else names
    required = set(p.schema_object.required or ())
    out = []
    for name in rest:
        if name in p.existing_keys:
            continue
        out.append(name)
        if name in required:
            break
    return out


def _level_chars(p: Any) -> str:
    """Allowed characters of one level of lm-format-enforcer's object stack, with the holes
    that let invalid JSON through closed."""
    if isinstance(p, UnionParser):
        return "".join(_level_chars(q) for q in p.parsers)
    chars = p.get_allowed_characters()
    if isinstance(p, ObjectParsingState):
        # After a comma a key must follow: no trailing comma before "}".
        if p.current_stage == ObjectParsingStage.PARSING_KEY_OR_END and p.existing_keys:
            chars = chars.replace("}", "")
        if _ordered_keys(p) == []:  # every later property written or skipped: only the end
            chars = chars.replace('"' if p.current_stage == ObjectParsingStage.PARSING_KEY_OR_END else ",", "")
    elif isinstance(p, NumberParsingState):
        if len(p.parsed_string) >= MAX_NUMBER_CHARS and p.can_end():
            chars = "".join(c for c in chars if c not in "0123456789.eE+-")
        if not p.allow_floating_point:
            chars = chars.replace("e", "").replace("E", "").replace(".", "")
        elif p.parsed_string.endswith("."):
            chars = chars.replace("e", "").replace("E", "")
    return chars


def _chars(parser: Any, separators: Optional[Separators] = None) -> str:
    """`get_allowed_characters` of a (forked) JsonSchemaParser, level by level with `_level_chars`."""
    if isinstance(parser, UnionParser):
        return "".join(_chars(p, separators) for p in parser.parsers)
    if not isinstance(parser, JsonSchemaParser):
        return parser.get_allowed_characters()
    parser.context.active_parser = parser
    parts = []
    for p in reversed(parser.object_stack):
        parts.append(_level_chars(p))
        if not p.can_end():
            break
    chars = "".join(parts) if parts else WHITESPACE_CHARACTERS
    if parser.num_consecutive_whitespaces >= parser.config.max_consecutive_whitespaces:
        chars = "".join(c for c in chars if c not in WHITESPACE_CHARACTERS)
    if separators is not None and not _in_string(parser):
        chars = separators.chars(parser, chars)
    return chars


def _add(parser: Any, c: str, separators: Optional[Separators] = None) -> Any:
    """`add_character`, but a fork only goes on in the branches that (fixed) allow `c`."""
    if isinstance(parser, UnionParser):
        nexts = [q for q in (_add(p, c, separators) for p in parser.parsers if c in _chars(p, separators))
                 if q is not None]
        if not nexts:
            return None
        return nexts[0] if len(nexts) == 1 else UnionParser(nexts)
    top = parser.object_stack[-1] if isinstance(parser, JsonSchemaParser) and parser.object_stack else None
    new = parser.add_character(c)
    if (c == '"' and isinstance(top, ObjectParsingState) and top.current_stage == ObjectParsingStage.PARSING_KEY_OR_END
            and isinstance(new, JsonSchemaParser) and new.object_stack
            and isinstance(new.object_stack[-1], StringParsingState)):
        # Keys in the schema's property order (a tool's order is part of its meaning; the
        # xgrammar back end keeps it too). lm-format-enforcer itself allows any order.
        keys = _ordered_keys(top)
        if keys is not None:
            new.object_stack[-1].allowed_strings = keys
    return new


class _Id:
    """Identity-hashed reference (lm-format-enforcer's schema objects are not hashable); it
    keeps the object alive while a cache key holds it, so the identity stays unique."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, _Id) and other.obj is self.obj


class _NoSignature(Exception):
    pass


def _signature(p: Any, keys_pending: list) -> Hashable:
    """Everything of an lm-format-enforcer state that decides what it accepts next, as a
    hashable value, so that equal states share cached masks. The content of a free string
    is left out (only its length matters, and only when it is bounded)."""
    if isinstance(p, JsonSchemaParser):
        stack = tuple(_signature(q, keys_pending) for q in p.object_stack)
        return ("J", stack, min(p.num_consecutive_whitespaces, MAX_CONSECUTIVE_WHITESPACE),
                p.last_non_whitespace_character, p.last_parsed_string if keys_pending else None)
    if isinstance(p, UnionParser):
        return ("U",) + tuple(_signature(q, keys_pending) for q in p.parsers)
    if isinstance(p, ObjectParsingState):
        if p.current_stage == ObjectParsingStage.PARSING_KEY_VALUE_SEPARATOR:
            keys_pending.append(True)
        return ("O", _Id(p.schema_object), p.current_stage, tuple(p.existing_keys), p.is_dictionary)
    if isinstance(p, StringParsingState):
        flags = (p.seen_opening_quote, p.seen_closing_quote, p.require_opening_quote, p.require_closing_quote,
                 p.min_length, p.max_length)
        if not p.allowed_strings and p.regex_parser is None:
            bounded = p.min_length is not None or p.max_length is not None
            return ("S", flags, len(p.parsed_string) if bounded else bool(p.parsed_string))
        regex = None if p.regex_parser is None else _signature(p.regex_parser, keys_pending)
        return ("S", flags, tuple(sorted(p.allowed_strings or ())), p.parsed_string, regex)
    if isinstance(p, NumberParsingState):
        return ("N", p.parsed_string, p.allow_floating_point, p.seen_decimal_point, p.seen_whitespace_after_digits,
                p.seen_exponent, p.seen_digit)
    if isinstance(p, ListParsingState):
        return ("L", _Id(p.list_member_type), p.min_items, p.max_items, p.num_items_seen, p.seen_list_opener,
                p.seen_list_closer)
    if isinstance(p, RegexParser):
        return ("R", _Id(p.context), p.current_state)
    if isinstance(p, StringParser):
        return ("P", p.target_str)
    if isinstance(p, SequenceParser):
        return ("Q",) + tuple(_signature(q, keys_pending) for q in p.parsers)
    if isinstance(p, ForceStopParser):
        return ("F", p.allow_whitespace)
    raise _NoSignature(type(p).__name__)


def signature(parser: Any) -> Optional[Hashable]:
    try:
        return _signature(parser, [])
    except _NoSignature:
        return None


_UNSET = object()


class ArgsState:
    __slots__ = ("ctx", "parser", "partial", "_allowed", "_chars", "_ft", "_key")

    def __init__(self, ctx: ArgsCtx, parser: Any = None, partial: Partial = EMPTY) -> None:
        self.ctx = ctx
        self.parser = ctx.root() if parser is None else parser
        self.partial = partial
        self._allowed: Optional[CharSet] = None
        self._chars: Optional[str] = None
        self._ft: Any = _UNSET
        self._key: Any = _UNSET

    def _freetext(self) -> Any:
        """False outside a free string; inside, the room left (None: unbounded)."""
        if self._ft is _UNSET:
            self._ft = _freetext(self.parser)
        return self._ft

    def _lmfe_chars(self) -> str:
        if self._chars is None:
            self._chars = _chars(self.parser, self.ctx.separators)
        return self._chars

    def allowed(self) -> CharSet:
        a = self._allowed
        if a is None:
            chars = self._lmfe_chars()
            banned = self.ctx.mset.completing(self.partial)
            if self._freetext() is not False:
                # Inside a string a space is text: lm-format-enforcer's whitespace-run limit
                # (meant for the structure) does not apply.
                a = CharSet((ASCII - frozenset(chars) - {" "}) | banned, negated=True)
            else:
                a = CharSet(frozenset(chars) - banned)
            self._allowed = a
        return a

    def step(self, c: str) -> Optional[Any]:
        ctx = self.ctx
        new, done = ctx.mset.step(self.partial, c, True)
        if done >= 0:
            return None
        feed = c
        if (c == " " or ord(c) >= 128) and self._freetext() is not False:
            # Inside a free string only the length matters to lm-format-enforcer; it does not
            # know non-ASCII characters and does not count a string's leading spaces.
            feed = PLACEHOLDER
        if feed not in self._lmfe_chars():
            # lm-format-enforcer would take it by silently dropping parsers off its stack.
            return None
        try:
            parser = _add(self.parser, feed, ctx.separators)
        except Exception:  # noqa: BLE001 - lm-format-enforcer rejects by raising
            return None
        if parser is None:
            return None
        if parser.can_end():
            return ctx.after(False)
        return ArgsState(ctx, parser, new)

    def can_end(self) -> bool:
        return False

    def key(self) -> Optional[Hashable]:
        if self._key is _UNSET:
            sig = signature(self.parser)
            self._key = None if sig is None else (self.ctx, self.partial, sig)
        return self._key

    def free(self) -> Optional[FreeInfo]:
        bound = self._freetext()
        if bound is False:
            return None
        if not self.partial:
            return FreeInfo(self.ctx.interesting, frozenset(), self, bound)
        return FreeInfo(self.ctx.interesting, self.ctx.mset.continuations(self.partial),
                        ArgsState(self.ctx, self.parser), bound)

    def __repr__(self) -> str:
        return f"Args({self.ctx.name}, {sorted(self.partial)})"
