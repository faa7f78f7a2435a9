from webapp.jsonutil import canonical, content_hash


def test_canonical_text_ignores_key_order():
    a = canonical({"b": 1, "a": {"y": [1, 2], "x": "é"}})
    b = canonical({"a": {"x": "é", "y": [1, 2]}, "b": 1})
    assert a == b == '{"a":{"x":"é","y":[1,2]},"b":1}'
    assert content_hash(a) == content_hash(b) and len(content_hash(a)) == 32


def test_integers_beyond_64_bits_are_kept_exactly():
    assert canonical({"id": 123456789012345678901234567890}) == '{"id":123456789012345678901234567890}'
