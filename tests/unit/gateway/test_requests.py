"""Request bodies and headers: each defect of issue 12 (items 4 and 5) as a case, then generated inputs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcrag.config.schema import RequestLimits
from hpcrag.gateway.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    InvalidRequest,
    check_header,
    number_header,
    parse_body,
    validate,
)

LIMITS = RequestLimits()
USER = [{"role": "user", "content": "hello"}]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "tier:s", "messages": USER, **fields}


def refused(route: str, body: dict[str, Any] | bytes, limits: RequestLimits = LIMITS) -> InvalidRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(InvalidRequest) as caught:
        validate(route, parse_body(raw, limits), limits)
    return caught.value


def accepted(route: str, body: dict[str, Any]) -> Any:
    return validate(route, parse_body(json.dumps(body).encode(), LIMITS), LIMITS)


# ------------------------------------------------------------------------- issue 12 item 5, as found


def test_content_part_text_of_wrong_type_names_its_path() -> None:
    error = refused("chat", chat(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]))
    assert (error.status, error.field) == (400, "messages[0].content[0].text")
    assert "messages[0].content[0].text" in str(error) and "string" in str(error)


def test_stream_options_must_be_an_object() -> None:
    error = refused("chat", chat(stream=True, stream_options="x"))
    assert (error.status, error.field) == (400, "stream_options")
    assert "object" in str(error) and "StreamOptions" not in str(error)


def test_a_hundred_thousand_deep_body_is_a_400_before_any_parsing(monkeypatch) -> None:
    def no_parsing(*args: object, **kwargs: object) -> None:
        raise AssertionError("the depth check must refuse the body before json.loads sees it")

    monkeypatch.setattr("hpcrag.gateway.requests.json.loads", no_parsing)
    for raw in (b"[" * 100_000, b'{"a":' * 100_000, b"[" * 100_000 + b"]" * 100_000):
        with pytest.raises(InvalidRequest) as caught:
            parse_body(raw, LIMITS)
        assert (caught.value.status, caught.value.code) == (400, "too_deep")


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    body = chat(messages=[{"role": "user", "content": "[" * 1000 + '\\"{' * 100}])
    assert accepted("chat", body).text().startswith("[[[")


def test_escaped_quotes_cannot_hide_nesting() -> None:
    with pytest.raises(InvalidRequest, match="deep"):
        parse_body(b'{"a": "\\\\", "b": ' + b"[" * 100 + b"]" * 100 + b"}", LIMITS)


@pytest.mark.parametrize("value", [True, False, 2.5, "5", 0, -1, 2**40, [5], None])
def test_max_tokens_is_a_positive_integer(value: Any) -> None:
    if value is None:
        assert accepted("chat", chat(max_tokens=value)).max_output_tokens() is None
        return
    error = refused("chat", chat(max_tokens=value))
    assert (error.status, error.field) == (400, "max_tokens")


@pytest.mark.parametrize(
    "value", ["nan", "NaN", "inf", "-inf", "1e999", "0", "-5", "", "abc", "1_000", "0x10"]
)
def test_number_headers_are_finite_and_positive(value: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        number_header("X-Hpcrag-Max-Ttft-Ms", value, LIMITS)
    assert caught.value.status == 400 and "X-Hpcrag-Max-Ttft-Ms" in str(caught.value)


def test_number_headers_accept_plain_numbers() -> None:
    assert number_header("X-Hpcrag-Max-Cost-Usd", "0.002", LIMITS) == 0.002
    assert number_header("X-Hpcrag-Max-Ttft-Ms", "1e3", LIMITS) == 1000
    assert number_header("X-Hpcrag-Max-Ttft-Ms", None, LIMITS) is None


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "m", "messages": [], "temperature": NaN}',
        b'{"model": "m", "messages": [], "temperature": Infinity}',
        b'{"model": "m", "messages": [], "temperature": -Infinity}',
        b'{"model": "m", "messages": [], "temperature": 1e999}',
    ],
)
def test_non_finite_numbers_are_refused_while_parsing(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_body(body, LIMITS)
    assert (caught.value.status, caught.value.code) == (400, "invalid_json")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 1.0}, "n"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({"stop": [1]}, "stop[0]"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "picture"}]}]}, "messages[0].content[0]"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0].image_url",
        ),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": ""}, "model"),
        ({"model": 5}, "model"),
        ({"model": "a\x1bb"}, "model"),
    ],
)
def test_wrong_shapes_are_400_with_the_field_path(fields: dict[str, Any], field: str) -> None:
    error = refused("chat", chat(**fields))
    assert (error.status, error.field) == (400, field)
    assert f"'{field}'" in str(error)


def test_missing_model_says_what_to_send() -> None:
    error = refused("chat", {"messages": USER})
    assert (error.code, error.field) == ("missing_model", "model")
    assert "/v1/models" in str(error)


@pytest.mark.parametrize("where", ["model", "content", "extra", "key"])
def test_lone_surrogates_are_refused_anywhere(where: str) -> None:
    body = {
        "model": "\ud800" if where == "model" else "m",
        "messages": [{"role": "user", "content": "a\udc00b" if where == "content" else "x"}],
    }
    if where == "extra":
        body["chat_template_kwargs"] = {"x": ["\udfff"]}
    if where == "key":
        body["\ud83d"] = 1
    error = refused("chat", json.dumps(body).encode())  # json escapes them as \udXXX, as a client would
    assert error.status == 400 and "surrogate" in str(error)
    assert (
        error.field
        == {
            "model": "model",
            "content": "messages[0].content",
            "extra": "chat_template_kwargs.x[0]",
            "key": "",
        }[where]
    )
    str(error).encode("utf-8")


def test_surrogate_pairs_are_ordinary_text() -> None:
    body = chat(messages=[{"role": "user", "content": "\U0001f600"}])
    assert accepted("chat", body).text() == "\U0001f600"


# ------------------------------------------------------------------------- issue 12 item 4: bounds


def test_a_five_megabyte_model_name_is_400_and_not_echoed() -> None:
    error = refused("chat", chat(model="x" * 5_000_000))
    assert (error.status, error.code, error.field) == (400, "model_too_long", "model")
    assert "x" * 41 not in str(error) and len(str(error)) < 300


def test_long_values_are_quoted_short() -> None:
    error = refused("chat", chat(max_tokens="9" * 10_000))
    assert "9" * 41 not in str(error) and len(str(error)) < 300


def test_keys_in_an_error_path_are_escaped_and_cut() -> None:
    key = "\x1b[2J" + "k" * 100_000
    error = refused("chat", chat(logit_bias={key: "x"}))
    assert error.field.startswith("logit_bias[") and "\x1b" not in error.field and len(error.field) < 80
    assert "\x1b" not in str(error) and len(str(error)) < 300
    error = refused("chat", chat(extra={"a": ["\udc00"]}, **{"x" * 100_000: {"\ud800": 1}}))
    assert "surrogate" in str(error) and len(str(error)) < 300


def test_huge_integers_are_refused_while_parsing() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_body(b'{"model": "m", "seed": ' + b"9" * 5000 + b"}", LIMITS)
    assert caught.value.code == "invalid_json" and "9" * 41 not in str(caught.value)


def test_body_over_the_limit_is_413_before_parsing() -> None:
    limits = RequestLimits(max_body_bytes=1000)
    with pytest.raises(InvalidRequest) as caught:
        parse_body(b"{" * 2000, limits)
    assert (caught.value.status, caught.value.code) == (413, "body_too_large")


def test_total_text_over_the_limit_is_413() -> None:
    limits = RequestLimits(max_text_chars=100)
    error = refused("chat", chat(messages=[{"role": "system", "content": "s" * 60}, *USER * 10]), limits)
    assert (error.status, error.code) == (413, "text_too_long")
    error = refused("completions", {"model": "m", "prompt": list(range(30))}, limits)
    assert error.status == 413  # 30 token ids count as 120 characters


def test_message_and_item_counts_are_bounded() -> None:
    limits = RequestLimits(max_messages=3, max_input_items=2)
    error = refused("chat", chat(messages=USER * 4), limits)
    assert (error.code, error.field) == ("too_many_messages", "messages")
    error = refused("embeddings", {"model": "m", "input": ["a", "b", "c"]}, limits)
    assert (error.code, error.field) == ("too_many_items", "input")
    assert validate("embeddings", {"model": "m", "input": [1, 2, 3]}, limits).text() == " " * 12


def test_depth_limit_is_configurable() -> None:
    body = b'{"model": "m", "x": ' + b"[" * 5 + b"]" * 5 + b"}"
    assert parse_body(body, RequestLimits(max_json_depth=6))
    with pytest.raises(InvalidRequest, match="6 deep"):
        parse_body(body, RequestLimits(max_json_depth=5))


def test_headers_are_bounded_and_printable() -> None:
    assert check_header("X-Hpcrag-Tier", "m", LIMITS) == "m"
    assert check_header("X-Hpcrag-Tier", None, LIMITS) is None
    for value in ("m" * 2000, "a\x1bb", "\udcff"):  # aiohttp decodes bad bytes as surrogates
        with pytest.raises(InvalidRequest) as caught:
            check_header("X-Hpcrag-Tier", value, LIMITS)
        assert caught.value.field == "X-Hpcrag-Tier" and len(str(caught.value)) < 300


@pytest.mark.parametrize(
    ("raw", "code"),
    [(b"\xff{}", "invalid_utf8"), (b"{", "invalid_json"), (b"[]", "invalid_json"), (b"null", "invalid_json")],
)
def test_bodies_that_are_not_json_objects(raw: bytes, code: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_body(raw, LIMITS)
    assert (caught.value.status, caught.value.code) == (400, code)


# ------------------------------------------------------------------------- what the router reads


def test_chat_exposes_what_the_router_needs() -> None:
    request = accepted(
        "chat",
        chat(
            messages=[
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a"},
                        {"type": "image_url", "image_url": {"url": "u"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
                {"role": "tool", "content": "42", "tool_call_id": "1"},
                {"role": "user", "content": "b"},
            ],
            max_tokens=9,
            max_completion_tokens=7,
            stream=True,
            stream_options={"include_usage": True},
            chat_template_kwargs={"enable_thinking": False},
        ),
    )
    assert isinstance(request, ChatCompletionRequest)
    assert (request.model, request.text(), request.max_output_tokens()) == ("tier:s", "a\nb", 7)
    assert request.stream and request.wants_usage


def test_completions_and_embeddings_text() -> None:
    assert accepted("completions", {"model": "m", "prompt": ["a", "b"]}).text() == "a\nb"
    request = accepted("completions", {"model": "m", "prompt": [[1, 2], [3]], "max_tokens": 4})
    assert isinstance(request, CompletionRequest)
    assert (request.text(), request.max_output_tokens(), request.stream) == (" " * 12, 4, False)
    embedding = accepted("embeddings", {"model": "m", "input": "hi", "encoding_format": "float"})
    assert isinstance(embedding, EmbeddingRequest)
    assert (embedding.text(), embedding.max_output_tokens(), embedding.wants_usage) == ("hi", None, False)
    assert refused("embeddings", {"model": "m", "input": "hi", "stream": True}).field == "stream"


def test_stream_null_means_not_streamed_and_usage_needs_a_stream() -> None:
    assert accepted("chat", chat(stream=None)).stream is False
    assert accepted("chat", chat(stream_options={"include_usage": True})).wants_usage is False


def test_unknown_route_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="routes: chat, completions, embeddings"):
        validate("images", {}, LIMITS)


# ------------------------------------------------------------------------- generated inputs

# Lone surrogates and control characters too: hypothesis leaves them out of st.text() by default.
TEXT = st.text(max_size=20) | st.text(
    st.characters(codec=None, categories=["Cs", "Cc", "Zs", "Ll"]), max_size=10
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(TEXT, children, max_size=5),
    max_leaves=30,
)
KEYS = [
    "model",
    "messages",
    "prompt",
    "input",
    "max_tokens",
    "max_completion_tokens",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "n",
    "stop",
    "role",
    "content",
    "type",
    "text",
    "image_url",
    "include_usage",
    "tool_calls",
    "function",
]
# Bodies near the API's shape, so the generator reaches deep fields and not only "model is missing".
SHAPED = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT | st.sampled_from(["user", "text", "m"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(KEYS), children, max_size=6)
    ),
    max_leaves=40,
)
SMALL = RequestLimits(
    max_json_depth=6, max_text_chars=500, max_model_chars=16, max_messages=3, max_input_items=3
)


def _either_model_or_invalid(raw: bytes, limits: RequestLimits) -> None:
    for route in ("chat", "completions", "embeddings"):
        try:
            request = validate(route, parse_body(raw, limits), limits)
        except InvalidRequest as exc:
            message = str(exc)
            assert exc.status in (400, 413) and exc.code
            assert len(message) < 1000
            message.encode("utf-8")  # strict: no lone surrogate in what goes back to the client
            exc.field.encode("utf-8")
            continue
        assert isinstance(request.text(), str) and isinstance(request.model, str)
        assert isinstance(request.stream, bool) and isinstance(request.wants_usage, bool)
        tokens = request.max_output_tokens()
        assert tokens is None or (type(tokens) is int and tokens > 0)
        json.dumps(request.model).encode("utf-8")
        request.model.encode("utf-8")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=JSON | SHAPED)
def test_any_json_value_is_a_model_or_a_400(value: Any) -> None:
    raw = json.dumps(value, allow_nan=True).encode()
    _either_model_or_invalid(raw, LIMITS)
    _either_model_or_invalid(raw, SMALL)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300))
def test_any_bytes_are_a_model_or_a_400(raw: bytes) -> None:
    _either_model_or_invalid(raw, LIMITS)


@settings(max_examples=200, deadline=None)
@given(
    body=st.fixed_dictionaries(
        {
            "model": st.text(max_size=20),
            "messages": st.lists(
                st.fixed_dictionaries(
                    {
                        "role": st.sampled_from(["user", "system", "assistant"]),
                        "content": st.text()
                        | st.lists(
                            st.fixed_dictionaries({"type": st.just("text"), "text": st.text()}), max_size=3
                        ),
                    }
                ),
                max_size=4,
            ),
        },
        optional={
            "max_tokens": st.integers(-5, 10**6),
            "temperature": st.floats(-1, 3),
            "stream": st.booleans(),
        },
    )
)
def test_well_shaped_chat_bodies_are_a_model_or_a_400(body: dict[str, Any]) -> None:
    _either_model_or_invalid(json.dumps(body).encode(), LIMITS)


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=50))
def test_any_header_value_is_a_number_or_a_400(value: str) -> None:
    try:
        number = number_header("X-Hpcrag-Max-Cost-Usd", value, LIMITS)
    except InvalidRequest as exc:
        assert exc.status == 400 and len(str(exc)) < 1000
        str(exc).encode("utf-8")
        return
    assert number is not None and 0 < number < float("inf")


def test_continuous_usage_is_a_boolean_the_forwarder_can_trust() -> None:
    streamed = {"stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    assert accepted("chat", chat(**streamed)).wants_continuous_usage is True
    assert accepted("chat", chat(stream=True)).wants_continuous_usage is False
    with pytest.raises(InvalidRequest) as refused:
        validate("chat", chat(stream=True, stream_options={"continuous_usage_stats": "false"}), LIMITS)
    assert refused.value.field == "stream_options.continuous_usage_stats"
