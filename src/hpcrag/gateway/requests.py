"""Typed OpenAI request bodies: every body and header the gateway reads is checked here, or refused.

`parse_body` turns raw bytes into a JSON object within the configured bounds (size, depth, finite
numbers); `validate` checks that object against the OpenAI API's types and the field bounds and returns
a model the router and the forwarder read (`model`, `text()`, `max_output_tokens()`, `stream`,
`wants_usage`, `wants_continuous_usage`). Fields
the API does not define are allowed and left untouched: the gateway forwards the original object.
Whatever goes wrong raises `InvalidRequest` (400 or 413) naming the field, the fault and the fix; no
input raises anything else, and no message quotes more than a few dozen characters of what was sent.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictStr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from hpcrag.config.schema import RequestLimits

QUOTE_CHARS = 40
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# A JSON string, or an unterminated one up to the end: every '"' starts a match, so the scan is linear.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\Z)', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_HEADER_NUMBER = re.compile(r"^\+?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_DEPTH_CHUNK = 1 << 20
_TOKEN_CHARS = 4  # a token id stands for about four characters in the router's estimates


class InvalidRequest(Exception):
    """A request the gateway refuses: `status` 400 or 413, an error `code`, the JSON path in `field`."""

    def __init__(self, message: str, *, status: int = 400, code: str = "invalid_request", field: str = ""):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.field = field


def quote(value: Any) -> str:
    """A short, escaped, UTF-8-safe rendering of what was sent, for error messages."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = repr(value)  # escapes control characters and lone surrogates
    if len(text) > QUOTE_CHARS:
        return f"{text[: QUOTE_CHARS - 1]}… ({len(value) if isinstance(value, str) else len(text)} chars)"
    return text


# ---------------------------------------------------------------------------------------------- bytes


def parse_body(raw: bytes, limits: RequestLimits) -> dict[str, Any]:
    """The JSON object in `raw`, within `limits`; InvalidRequest (413 or 400) otherwise."""
    if len(raw) > limits.max_body_bytes:
        raise InvalidRequest(
            f"the request body has {len(raw)} bytes, more than the {limits.max_body_bytes} allowed; "
            "send a smaller request (fewer or shorter messages or inputs)",
            status=413,
            code="body_too_large",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"the request body is not valid UTF-8 (byte {exc.start}); send JSON encoded as UTF-8",
            code="invalid_utf8",
        ) from None
    depth = _json_depth(raw)
    if depth > limits.max_json_depth:
        raise InvalidRequest(
            f"the request body nests arrays and objects {depth} deep, deeper than the "
            f"{limits.max_json_depth} allowed; send a flatter JSON object",
            code="too_deep",
        )
    try:
        body = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"the request body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "send an OpenAI request object",
            code="invalid_json",
        ) from None
    except ValueError:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise InvalidRequest(
            "an integer in the request body has thousands of digits; send integers of at most 20 digits",
            code="invalid_json",
        ) from None
    except RecursionError:  # only if max_json_depth is set beyond what the parser can nest
        raise InvalidRequest(
            "the request body nests too deep to parse; send a flatter JSON object", code="too_deep"
        ) from None
    if not isinstance(body, dict):
        kind = "an array" if isinstance(body, list) else "a string" if isinstance(body, str) else "a scalar"
        raise InvalidRequest(
            f"the request body is {kind} in JSON, not an object; send an OpenAI request object "
            'such as {"model": ..., "messages": [...]}',
            code="invalid_json",
        )
    return body


def _json_depth(raw: bytes) -> int:
    """The deepest nesting of brackets outside JSON strings, without parsing (so without recursion)."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    level = deepest = 0
    for start in range(0, len(brackets), _DEPTH_CHUNK):  # chunks bound the memory of the sums
        size = min(_DEPTH_CHUNK, len(brackets) - start)
        codes = np.frombuffer(brackets, dtype=np.uint8, count=size, offset=start)
        # '[' 0x5B and '{' 0x7B have bit 2 clear; ']' 0x5D and '}' 0x7D have it set.
        levels = level + np.cumsum(1 - 2 * ((codes >> 2) & 1).astype(np.int32))
        deepest, level = max(deepest, int(levels.max())), int(levels[-1])
    return deepest


def _refuse_constant(name: str) -> Any:
    raise InvalidRequest(
        f"the request body contains {name}, which is not a JSON number; send finite numbers only",
        code="invalid_json",
    )


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise InvalidRequest(
            f"the number {quote(text)} in the request body is out of range; send finite numbers only",
            code="invalid_json",
        )
    return number


# --------------------------------------------------------------------------------------------- models


def _limits(info: ValidationInfo) -> RequestLimits:
    context = info.context or {}
    limits = context.get("limits")
    return limits if isinstance(limits, RequestLimits) else RequestLimits()


def _shape(value: Any) -> str | None:
    """Which member of a union a value is meant for (pydantic's tag), by its JSON kind."""
    if isinstance(value, str):
        return "<string>"
    if isinstance(value, list):
        return "<list>"
    if isinstance(value, dict):
        return "<object>"
    return None


def _prompt_shape(value: Any) -> str | None:
    if isinstance(value, str):
        return "<string>"
    if not isinstance(value, list):
        return None
    first = value[0] if value else ""
    if isinstance(first, str):
        return "<strings>"
    if isinstance(first, int) and not isinstance(first, bool):
        return "<token ids>"
    if isinstance(first, list):
        return "<token id lists>"
    return "<strings>"  # the list-of-strings member names the bad item


MEDIA_TYPES = ("input_audio", "video_url", "audio_url", "file")
CONTENT_TYPES = ("text", "image_url", "refusal", *MEDIA_TYPES)


def _part_type(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else None
    if not isinstance(kind, str) or kind not in CONTENT_TYPES:
        return None
    return "<media>" if kind in MEDIA_TYPES else f"<{kind}>"


_TAGS = frozenset(
    {"<string>", "<list>", "<object>", "<strings>", "<token ids>", "<token id lists>"}
    | {"<text>", "<image_url>", "<refusal>", "<media>"}
)

TokenId = Annotated[int, Field(strict=True, ge=0, lt=2**31)]
Count = Annotated[int, Field(strict=True, ge=1, lt=2**31)]
Penalty = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-2, le=2)]
Bias = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-100, le=100)]
Prompt = Annotated[
    Annotated[StrictStr, Tag("<string>")]
    | Annotated[list[StrictStr], Tag("<strings>"), Field(min_length=1)]
    | Annotated[list[TokenId], Tag("<token ids>"), Field(min_length=1)]
    | Annotated[
        list[Annotated[list[TokenId], Field(min_length=1)]], Tag("<token id lists>"), Field(min_length=1)
    ],
    Discriminator(
        _prompt_shape,
        custom_error_type="prompt_type",
        custom_error_message="should be a string, a list of strings, a list of token ids or a list of lists "
        "of token ids",
    ),
]
Stop = Annotated[
    Annotated[StrictStr, Tag("<string>")] | Annotated[list[StrictStr], Tag("<list>")],
    Discriminator(
        _shape, custom_error_type="stop_type", custom_error_message="should be a string or a list of strings"
    ),
]


class _Open(BaseModel):
    """An object of the API: its known fields typed, any others kept as sent (vLLM takes many)."""

    model_config = ConfigDict(extra="allow")


class TextPart(_Open):
    type: Literal["text"]
    text: StrictStr


class ImageUrl(_Open):
    url: StrictStr
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageUrl


class RefusalPart(_Open):
    type: Literal["refusal"]
    refusal: StrictStr


class MediaPart(_Open):
    """Audio, video and file parts: vLLM checks their payload; the router only needs their kind."""

    type: Literal["input_audio", "video_url", "audio_url", "file"]


ContentPart = Annotated[
    Annotated[TextPart, Tag("<text>")]
    | Annotated[ImagePart, Tag("<image_url>")]
    | Annotated[RefusalPart, Tag("<refusal>")]
    | Annotated[MediaPart, Tag("<media>")],
    Discriminator(
        _part_type,
        custom_error_type="content_part_type",
        custom_error_message=f"should be an object whose 'type' is one of {', '.join(CONTENT_TYPES)}",
    ),
]
Content = Annotated[
    Annotated[StrictStr, Tag("<string>")] | Annotated[list[ContentPart], Tag("<list>")],
    Discriminator(
        _shape,
        custom_error_type="content_type",
        custom_error_message="should be a string or a list of content parts",
    ),
]

ToolChoice = Annotated[
    Annotated[StrictStr, Tag("<string>")] | Annotated[dict[str, Any], Tag("<object>")],
    Discriminator(
        _shape, custom_error_type="tool_choice_type", custom_error_message="should be a string or an object"
    ),
]


class FunctionCall(_Open):
    name: StrictStr
    arguments: StrictStr


class ToolCall(_Open):
    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Open):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Content | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: StrictStr | None = None

    @model_validator(mode="after")
    def _has_content(self) -> Message:
        if self.content is None and not (
            self.role == "assistant" and (self.tool_calls or "function_call" in (self.model_extra or {}))
        ):
            raise PydanticCustomError(
                "missing_content",
                "has no 'content'; a {role} message needs content (a string or a list of content parts); "
                "only an assistant message with tool_calls may leave it out",
                {"role": self.role},
            )
        return self

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content or [] if isinstance(p, TextPart))


class StreamOptions(_Open):
    include_usage: StrictBool | None = None
    continuous_usage_stats: StrictBool | None = None  # vLLM's: usage on every chunk


class OpenAIRequest(_Open):
    """What every routed request has: a model name, text to score, and how the answer is delivered."""

    model: StrictStr
    stream: StrictBool = False
    stream_options: StreamOptions | None = None

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str, info: ValidationInfo) -> str:
        limit = _limits(info).max_model_chars
        if not value:
            raise PydanticCustomError("invalid_model", "is empty; " + _MODEL_FIX)
        if len(value) > limit:
            raise PydanticCustomError(
                "model_too_long",
                "has {length} characters, more than the {limit} allowed; send a served model name "
                "(GET /v1/models lists them)",
                {"length": len(value), "limit": limit},
            )
        if _CONTROL.search(value) or _SURROGATE.search(value):
            raise PydanticCustomError(
                "invalid_model",
                "contains control characters or lone surrogates; send a served model name "
                "(GET /v1/models lists them)",
            )
        return value

    @field_validator("stream", mode="before")
    @classmethod
    def _null_is_false(cls, value: Any) -> Any:
        return False if value is None else value

    @property
    def wants_usage(self) -> bool:
        """Whether a streamed answer must end with a usage chunk."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def wants_continuous_usage(self) -> bool:
        """Whether every chunk of a streamed answer must carry the usage so far (vLLM's option)."""
        return bool(self.wants_usage and self.stream_options and self.stream_options.continuous_usage_stats)

    def text(self) -> str:
        raise NotImplementedError

    def max_output_tokens(self) -> int | None:
        return None


class _Generative(OpenAIRequest):
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    temperature: Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0, le=1)] | None = None
    n: Annotated[int, Field(strict=True, ge=1, le=128)] | None = None
    stop: Stop | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    seed: Annotated[int, Field(strict=True, ge=-(2**63), lt=2**64)] | None = None
    user: StrictStr | None = None

    def max_output_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class ChatCompletionRequest(_Generative):
    """POST /v1/chat/completions."""

    messages: list[Message] = Field(min_length=1)
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[int, Field(strict=True, ge=0, le=20)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice | None = None
    response_format: dict[str, Any] | None = None
    logit_bias: dict[str, Bias] | None = None

    @field_validator("messages")
    @classmethod
    def _few_messages(cls, value: list[Message], info: ValidationInfo) -> list[Message]:
        limit = _limits(info).max_messages
        if len(value) > limit:
            raise PydanticCustomError(
                "too_many_messages",
                "has {count} messages, more than the {limit} allowed; send fewer (summarise older turns)",
                {"count": len(value), "limit": limit},
            )
        return value

    def text(self) -> str:
        """The user messages' text: what the router scores."""
        return "\n".join(m.text() for m in self.messages if m.role == "user")


def _few_items(value: Any, info: ValidationInfo) -> Any:
    """A list of prompts or inputs within max_input_items (one prompt's token ids are not items)."""
    limit = _limits(info).max_input_items
    if isinstance(value, list) and len(value) > limit and not isinstance(value[0], int):
        raise PydanticCustomError(
            "too_many_items",
            "has {count} items, more than the {limit} allowed; split it over several requests",
            {"count": len(value), "limit": limit},
        )
    return value


def _prompt_text(value: str | list[str] | list[int] | list[list[int]]) -> str:
    if isinstance(value, str):
        return value
    if all(isinstance(v, str) for v in value):
        return "\n".join(value)  # type: ignore[arg-type]
    return " " * (_TOKEN_CHARS * _token_count(value))  # token ids: only their count matters


def _token_count(value: Any) -> int:
    if isinstance(value, list) and value and not isinstance(value[0], str):
        return sum(len(v) if isinstance(v, list) else 1 for v in value)
    return 0


class CompletionRequest(_Generative):
    """POST /v1/completions."""

    prompt: Prompt
    echo: StrictBool | None = None
    logprobs: Annotated[int, Field(strict=True, ge=0, le=20)] | None = None
    best_of: Count | None = None
    suffix: StrictStr | None = None

    @field_validator("prompt")
    @classmethod
    def _few_prompts(cls, value: Any, info: ValidationInfo) -> Any:
        return _few_items(value, info)

    def text(self) -> str:
        return _prompt_text(self.prompt)


class EmbeddingRequest(OpenAIRequest):
    """POST /v1/embeddings."""

    input: Prompt
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Count | None = None
    user: StrictStr | None = None

    @field_validator("stream")
    @classmethod
    def _not_streamed(cls, value: bool) -> bool:
        if value:
            raise PydanticCustomError(
                "invalid_request", "cannot be true: embeddings are not streamed; leave 'stream' out"
            )
        return value

    @field_validator("input")
    @classmethod
    def _few_inputs(cls, value: Any, info: ValidationInfo) -> Any:
        return _few_items(value, info)

    def text(self) -> str:
        return _prompt_text(self.input)


MODELS: dict[str, type[OpenAIRequest]] = {
    "chat": ChatCompletionRequest,
    "completions": CompletionRequest,
    "embeddings": EmbeddingRequest,
}

# What to send instead, by pydantic's error type; our own errors carry their fix in the message.
_FIXES = {
    "missing": "add it",
    "string_type": "send a JSON string",
    "int_type": "send a JSON integer (not a string, a boolean or a fraction)",
    "bool_type": "send true or false",
    "float_type": "send a JSON number",
    "finite_number": "send a finite number",
    "list_type": "send a JSON array",
    "model_type": "send a JSON object",
    "dict_type": "send a JSON object",
    "model_attributes_type": "send a JSON object",
    "literal_error": "send one of the values listed",
    "too_short": "send at least one item",
    "greater_than": "send a value in range",
    "greater_than_equal": "send a value in range",
    "less_than": "send a value in range",
    "less_than_equal": "send a value in range",
}


def validate(route: str, body: dict[str, Any], limits: RequestLimits) -> OpenAIRequest:
    """`body` as the typed request of `route` ("chat", "completions", "embeddings"), within `limits`."""
    try:
        model_type = MODELS[route]
    except KeyError:
        raise ValueError(f"unknown route {route!r}; routes: {', '.join(MODELS)}") from None
    text_chars = _check_strings(body)
    try:
        request = model_type.model_validate(body, context={"limits": limits})
    except ValidationError as exc:
        raise _invalid(exc) from None
    text_chars += _TOKEN_CHARS * _token_count(getattr(request, "prompt", getattr(request, "input", None)))
    if text_chars > limits.max_text_chars:
        raise InvalidRequest(
            f"the request carries {text_chars} characters of text, more than the {limits.max_text_chars} "
            "allowed; send less text (fewer or shorter messages or inputs)",
            status=413,
            code="text_too_long",
        )
    return request


def _invalid(exc: ValidationError) -> InvalidRequest:
    error = exc.errors(include_url=False)[0]
    field = format_path(error["loc"])
    kind = error["type"]
    if kind == "missing":
        fix = _MODEL_FIX if field == "model" else "add it"
        code = "missing_model" if field == "model" else "missing_field"
        return InvalidRequest(f"'{field}' is required; {fix}", code=code, field=field)
    what = _WHAT.get(kind) or error["msg"].removeprefix("Input ")
    what, _, fix = what.partition("; ")
    fix = fix or _FIXES.get(kind, "")
    got = "" if kind in _UNQUOTED else f" (got {quote(error['input'])})"
    message = f"'{field}' {what[0].lower()}{what[1:]}{got}" + (f"; {fix}" if fix else "")
    return InvalidRequest(message, code=kind if kind in _OWN_CODES else "invalid_request", field=field)


_MODEL_FIX = "send a served model name, tier:<tier> or auto (GET /v1/models lists them)"
_COUNTED = frozenset({"model_too_long", "too_many_messages", "too_many_items"})  # the message has the size
_OWN_CODES = _COUNTED | {"invalid_model"}
_UNQUOTED = _COUNTED | {"missing_content", "too_short"}
_WHAT = {
    "model_type": "should be an object",
    "model_attributes_type": "should be an object",
    "dict_type": "should be an object",
    "list_type": "should be a list",
}


def format_path(loc: tuple[int | str, ...]) -> str:
    """pydantic's error location as a JSON path: ("messages", 0, "content") → "messages[0].content"."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in _TAGS:
            continue
        elif not part.isidentifier() or len(part) > QUOTE_CHARS:  # a key as sent: escaped and cut
            path += f"[{quote(part)}]"
        else:
            path += f".{part}" if path else part
    return path


def _check_strings(body: dict[str, Any]) -> int:
    """The characters of all strings in `body`; refuses a lone surrogate anywhere, keys included (it
    cannot reach the backend or the ledger as UTF-8). Iterative, so any depth is safe; only non-empty
    containers are stacked, each with a link to its parent, so a body of millions of items stays cheap."""
    total = 0
    stack: list[tuple[dict[str, Any] | list[Any], _Where]] = [(body, None)]
    while stack:
        value, where = stack.pop()
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str):
                total += len(key)
                if _SURROGATE.search(key):
                    _surrogate(where, in_key=True)
            if isinstance(item, str):
                total += len(item)
                if _SURROGATE.search(item):
                    _surrogate((where, key))
            elif item and isinstance(item, dict | list):
                stack.append((item, (where, key)))
    return total


_Where = tuple[Any, int | str] | None  # (parent, key): a JSON path built only when it is reported


def _loc(where: _Where) -> tuple[int | str, ...]:
    parts: list[int | str] = []
    while where is not None:
        where, key = where
        parts.append(key)
    return tuple(reversed(parts))


def _surrogate(where: _Where, in_key: bool = False) -> None:
    field = format_path(_loc(where))
    where = f"'{field}'" if field else "the request"
    if in_key:
        where = f"a key of {where if field else 'the request object'}"
    raise InvalidRequest(
        f"{where} contains a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text and cannot be "
        "encoded as UTF-8; send valid Unicode (a surrogate pair for characters beyond U+FFFF)",
        code="invalid_unicode",
        field=field,
    )


# -------------------------------------------------------------------------------------------- headers


def check_header(name: str, value: str | None, limits: RequestLimits) -> str | None:
    """A gateway header's value (None when absent), refused when too long or not printable text."""
    if value is None:
        return None
    size = len(value.encode("utf-8", "surrogateescape"))
    if size > limits.max_header_bytes:
        raise InvalidRequest(
            f"header {name} has {size} bytes, more than the {limits.max_header_bytes} allowed; "
            "send a short value",
            code="invalid_header",
            field=name,
        )
    if _CONTROL.search(value) or _SURROGATE.search(value):
        raise InvalidRequest(
            f"header {name} contains control characters or bytes that are not UTF-8 (got {quote(value)}); "
            "send printable text",
            code="invalid_header",
            field=name,
        )
    return value


def number_header(name: str, value: str | None, limits: RequestLimits) -> float | None:
    """A gateway header that holds a finite number above 0 (None when absent)."""
    text = check_header(name, value, limits)
    if text is None:
        return None
    number = float(text) if _HEADER_NUMBER.match(text.strip()) else math.nan
    if not math.isfinite(number) or number <= 0:
        raise InvalidRequest(
            f"header {name} must be a finite number above 0, got {quote(text)}; send e.g. {name}: 500",
            code="invalid_header",
            field=name,
        )
    return number
