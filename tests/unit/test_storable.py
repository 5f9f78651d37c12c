"""What the store can hold, checked in the worker before the store is called: results,
checkpoints and error texts."""

from __future__ import annotations

import pytest

import oncely
from oncely.errors import ArgsNotJSON
from oncely.worker.storable import NotStorable, checked_checkpoint, clean_text, storable


@pytest.mark.parametrize("value", [None, True, 7, 2**63, "word", "été", [1, {"a": [2.5]}],
                                   {"k": "\\u0000 is six characters here"}])
def test_ordinary_values_are_stored_as_they_are(value):
    assert storable(value) == value


@pytest.mark.parametrize("make, reason", [
    (lambda: 10**5000, "an int of 16610 bits is beyond what JSON can convert"),
    (lambda: {"total": 7**6000}, "an int is beyond what JSON can convert"),
    (lambda: "a\x00b", "a string contains a NUL character (\\x00)"),
    (lambda: {"rows": ["x\x00y"]}, "a string contains a NUL character (\\x00)"),
    (lambda: "half: \ud800", "a string contains a lone surrogate (\\ud800), which is not valid"),
    (lambda: [{"x": "\udc80"}], "a string contains a lone surrogate (\\udc80)"),
], ids=["bigint", "nested_bigint", "nul", "nested_nul", "surrogate", "nested_surrogate"])
def test_what_no_store_can_hold_is_refused_with_the_reason(make, reason):
    with pytest.raises(NotStorable) as refused:
        storable(make())
    assert str(refused.value).startswith("result not storable: " + reason)


def test_what_json_cannot_hold_is_kept_as_its_repr():
    assert storable(float("nan")) == {"repr": "nan"}
    assert storable({1, 2}) == {"repr": "{1, 2}"}


def test_checkpoints_are_refused_rather_than_replaced():
    assert checked_checkpoint({"step": 3}, 9) == {"step": 3}
    for bad in ({1, 2}, {"x": "\x00"}, float("inf")):
        with pytest.raises(ArgsNotJSON, match="checkpoint of job 9 not storable"):
            checked_checkpoint(bad, 9)


def test_error_texts_are_cleaned_not_refused():
    assert clean_text("plain") == "plain"
    assert clean_text("nul \x00 and \udc80 and é") == "nul \\x00 and \\udc80 and é"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0, -1, True])
def test_a_task_timeout_must_be_positive_and_finite(bad):
    app = oncely.App("sqlite:///:memory:")
    with pytest.raises(oncely.ConfigError, match="timeout must be a positive, finite number"):
        app.task(name="t", timeout=bad)(lambda ctx: None)


def test_process_isolation_needs_an_importable_handler():
    app = oncely.App("sqlite:///:memory:")
    with pytest.raises(oncely.ConfigError, match="needs a handler defined at module level"):
        app.task(name="t", isolation="process")(lambda ctx: None)
    with pytest.raises(oncely.ConfigError, match="isolation must be one of thread, process"):
        app.task(name="u", isolation="fiber")(lambda ctx: None)
