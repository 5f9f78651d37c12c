"""The one masking of secrets (oncely.redaction), against a table of URL shapes and messages, and
the one validation of names, keys and args (oncely.validate)."""

from __future__ import annotations

import enum
import json
import re

import pytest

from oncely import readmodel, redaction
from oncely.errors import ArgsNotJSON, ConfigError
from oncely.validate import check_database_url, check_name, dump_args, encode_args

URLS = [
    # (shown as given, shown masked)
    ("sqlite:///oncely.db", "sqlite:///oncely.db"),
    ("sqlite:////tmp/a.db", "sqlite:////tmp/a.db"),
    ("sqlite://:memory:", "sqlite://:memory:"),
    ("postgresql://app@db/x", "postgresql://app@db/x"),
    ("postgresql://app:hunter2@db:5432/x?schema=s", "postgresql://app:***@db:5432/x?schema=s"),
    ("postgres://app:hunter2@db/x", "postgres://app:***@db/x"),
    ("postgresql://:hunter2@db/x", "postgresql://:***@db/x"),
    ("postgresql://app:hun%40ter2@db/x", "postgresql://app:***@db/x"),
    ("postgresql://app:hun@ter2@db/x", "postgresql://app:***@db/x"),
    ("postgresql://app:p:w@db/x", "postgresql://app:***@db/x"),
    ("postgresql://app@db/x?password=hunter2", "postgresql://app@db/x?password=***"),
    ("postgresql://app@db/x?schema=s&password=hunter2&sslmode=require",
     "postgresql://app@db/x?schema=s&password=***&sslmode=require"),
    ("postgresql://app@db/x?sslpassword=hunter2&sslkey=/k.pem",
     "postgresql://app@db/x?sslpassword=***&sslkey=/k.pem"),
    ("postgresql://app@db/x?options=-c%20a%3Db", "postgresql://app@db/x?options=-c%20a%3Db"),
    ("postgresql://h1:5432,h2:5433/x?password=hunter2", "postgresql://h1:5432,h2:5433/x?password=***"),
    ("postgresql://app:hunter2@[::1]:5432/x", "postgresql://app:***@[::1]:5432/x"),
    # a password holding an unencoded '/', '?' or '#': urlsplit would end the host there and
    # take the password's start for a host and a port; masked to the URL's last '@'
    ("postgresql://u:s3/cret@127.0.0.1:1/x", "postgresql://u:***@127.0.0.1:1/x"),
    ("postgresql://u:s3?cret@127.0.0.1:1/x", "postgresql://u:***@127.0.0.1:1/x"),
    ("postgresql://u:s3#cret@127.0.0.1:1/x", "postgresql://u:***@127.0.0.1:1/x"),
    ("postgresql://u:53/cret@db/x", "postgresql://u:***@db/x"),  # its start reads as a port
    ("postgresql://u:/s3cret@db/x", "postgresql://u:***@db/x"),
    ("postgresql://u:s3/c@ret@db/x?password=s3", "postgresql://u:***@db/x?password=***"),
    ("https://u:s3/cret@hooks.example.com/services/x", "https://u:***@hooks.example.com/***"),
    # masking too much beats too little: an '@' after a host with a port is taken for the end
    # of a password
    ("postgresql://db:5432/x?user=me@corp", "postgresql://db:***@corp"),
    # not parseable as a URL: masked by pattern, never raised
    ("postgresql://app:hunter2@[::1/x", "postgresql://app:***@[::1/x"),
    ("postgresql://app:hunter2@db:99999/x", "postgresql://app:***@db:99999/x"),
    ("mysql://root:hunter2@db/x", "mysql://root:***@db/x"),
    # webhooks: the path is the credential
    ("https://hooks.slack.com/services/T0/B0/hunter2", "https://hooks.slack.com/***"),
    ("https://example.com/hook?token=hunter2", "https://example.com/***"),
    ("https://example.com/?token=hunter2", "https://example.com/?token=***"),
    ("https://example.com/?key=hunter2&q=1", "https://example.com/?key=***&q=1"),
    ("postgresql://app@db/x?KEY=hunter2&api_key=hunter2", "postgresql://app@db/x?KEY=***&api_key=***"),
    ("http://user:hunter2@example.com", "http://user:***@example.com"),
    ("https://example.com", "https://example.com"),
    ("not a url", "not a url"),
    ("", ""),
]


@pytest.mark.parametrize("url, shown", URLS)
def test_every_url_shape_is_masked(url: str, shown: str) -> None:
    assert redaction.mask_url(url) == shown
    assert not re.search("hunter2|s3|cret", redaction.mask_url(url))
    assert not re.search("hunter2|s3|cret", redaction.mask_text(f"bad URL {url!r} given"))
    assert readmodel.mask_url is redaction.mask_url  # one function, wherever it is called from


@pytest.mark.parametrize("message", [
    "cannot open postgresql://app:hunter2@db/x: refused",
    "unsupported scheme in 'mysql://root:hunter2@db/x'",
    "Stripe said no to sk_live_hunter2 (rk_test_hunter2, whsec_hunter2)",
    "sent Authorization: Bearer hunter2",
    "webhook https://hooks.example.com/services/hunter2 answered 500",
    "dsn postgresql://app@db/x?password=hunter2&schema=s",
    "invalid port 'x' in 'postgresql://u:hunter2/x@127.0.0.1:1/x'",
    "see https://maps.example.com/api?key=hunter2 and postgresql://u:hun?ter2@db/x",
])
def test_messages_lose_every_secret(message: str) -> None:
    assert "hunter2" not in redaction.mask_text(message)


def test_a_named_secret_is_masked_even_where_no_pattern_finds_it() -> None:
    assert redaction.mask_text("token hunter2-long was wrong", "hunter2-long") == (
        "token *** was wrong")


def test_database_urls_are_checked_before_a_store_sees_them() -> None:
    for url, fragment in [
        ("", "is empty"),
        ("mysql://root:hunter2@db/x", "unsupported database URL scheme 'mysql'"),
        ("postgresql://u:hunter2@db:99999/x", "invalid port '99999'"),
        ("postgresql://u:hunter2@db:abc/x", "invalid port 'abc'"),
        ("postgresql://u:hunter2@db/x?port=0", "invalid port '0'"),
        ("postgresql://u:hunter2@db/x?sslmode=bogus", "invalid sslmode='bogus'"),
        ("postgresql://u:hunter2@db/x?connect_timeout=soon", "invalid connect_timeout"),
        ("postgresql://u:hunter2@[::1/x", "malformed database URL"),
        ("postgresql://u:hunter2/x@db:5432/x", "has an '@' after its host: percent-encode"),
        ("postgresql://u:hunter2?x@db:5432/x", "has an '@' after its host: percent-encode"),
        ("postgresql://u:hunter2#x@db:5432/x", "has an '@' after its host: percent-encode"),
    ]:
        with pytest.raises(ConfigError) as caught:
            check_database_url(url)
        assert fragment in str(caught.value) and "hunter2" not in str(caught.value), url
    assert check_database_url("postgresql://u@[::1]:5432/x?sslmode=require")
    assert check_database_url("postgresql://u:p%2Fw@db:5432/x?user=me@corp")  # '@' in a value
    assert check_database_url("postgresql://db/x?user=me@corp")  # no password to misread
    assert check_database_url("sqlite:///data/at@home.db")


@pytest.mark.parametrize("kind, value", [
    ("queue", "\x1b[31mred"), ("queue", "q" * 201), ("queue", ""), ("queue", "a b"),
    ("task", "t\x00"), ("schedule", "s\ud800"), ("queue", 7),
    ("unique key", "k\x00"), ("unique key", "k\ud800"), ("unique key", "k" * 1001),
    ("unique key", "é" * 501), ("unique key", ""), ("singleton key", "a\x1b[2J"),
])
def test_names_and_keys_are_refused_with_a_config_error(kind: str, value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        check_name(kind, value)
    assert "\x1b" not in str(caught.value) and "\x00" not in str(caught.value)


def test_keys_take_any_printable_text_names_a_small_alphabet() -> None:
    assert check_name("unique key", "org 42 / März") == "org 42 / März"
    assert check_name("queue", "billing.eu-1:hi") == "billing.eu-1:hi"


@pytest.mark.parametrize("args", [
    {"a": "\x00"}, {"a\x00": 1}, {"a": ["ok", {"b": "\ud800"}]}, {"\udcff": 1},
    {"n": float("nan")}, {"x": object()}, {"big": 10**5000},
])
def test_args_neither_store_can_keep_are_refused(args: dict) -> None:
    with pytest.raises(ArgsNotJSON):
        dump_args("t", args)


def test_args_that_merely_look_like_escapes_are_kept() -> None:
    assert dump_args("t", {"a": "\\u0000", "b": "😀"}) == {"a": "\\u0000", "b": "😀"}


@pytest.mark.parametrize("args", [
    {}, {"a": 1, "b": "é", "c": None, "d": True, "e": -0.0, "f": 2**70, "g": 1e300},
    {"t": (1, 2)}, {"n": {"k": [1.5]}}, {1: "int key"}, {"e": enum.IntEnum("E", "A").A},
    {"s": type("S", (str,), {})("sub")},
])
def test_encoded_args_are_their_json_round_trip(args: dict) -> None:
    stored, text = encode_args("t", args)
    assert stored == json.loads(json.dumps(args)) == json.loads(text)
    assert [type(v) for v in stored.values()] == [type(v) for v in json.loads(text).values()]
    assert stored is not args
