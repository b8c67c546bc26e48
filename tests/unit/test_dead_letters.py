"""A dead letter always fits its topic: processors/deadletter.DeadLetter.fitted."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from resultlog.processors.deadletter import KEY_BYTES_HEADER, VALUE_BYTES_HEADER, DeadLetter

records = st.one_of(st.none(), st.binary(max_size=300))


def letter(key: bytes | None, value: bytes | None) -> DeadLetter:
    return DeadLetter(key, value, "CodecError: bad framing", "t.events", 3, 41)


@given(records, records, st.integers(min_value=0, max_value=400))
def test_a_letter_is_cut_to_its_budget_only_when_larger(key: bytes | None, value: bytes | None,
                                                        budget: int) -> None:
    original = letter(key, value)
    fitted = original.fitted(budget)
    size = len(key or b"") + len(value or b"")
    if size <= budget:
        assert fitted is original
        assert KEY_BYTES_HEADER not in dict(fitted.headers())
        return
    kept_key, kept_value = fitted.key or b"", fitted.value or b""
    assert len(kept_key) + len(kept_value) == budget
    # Prefixes of the record, None kept None, the key kept first.
    assert (key or b"").startswith(kept_key) and (value or b"").startswith(kept_value)
    assert (fitted.key is None) == (key is None) and (fitted.value is None) == (value is None)
    assert kept_key == (key or b"") or not kept_value
    headers = dict(fitted.headers())
    assert headers[KEY_BYTES_HEADER] == str(len(key or b"")).encode()
    assert headers[VALUE_BYTES_HEADER] == str(len(value or b"")).encode()
    assert fitted.reason.startswith("CodecError: bad framing (the record, ")
    assert (fitted.topic, fitted.partition, fitted.offset) == ("t.events", 3, 41)
