import pytest

from streams.identity import IdentityGraph, keyed_hash, normalize_email, normalize_phone


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("8 (912) 345-67-89", "79123456789"),
        ("+7 912 345 67 89", "79123456789"),
        ("+7(912)3456789", "79123456789"),
        ("9123456789", "79123456789"),
        ("7 912 345 67 89", "79123456789"),
        ("+7 727 123 45 67", "77271234567"),  # Almaty
        ("+998 90 123 45 67", "998901234567"),  # Tashkent
        ("+996 555 123 456", "996555123456"),  # Bishkek
        ("00998901234567", "998901234567"),
        ("+7 912 345 67", None),  # too short for +7
        ("12345", None),
        ("", None),
        (None, None),
        ("call me", None),
    ],
)
def test_normalize_phone(raw, expected):
    assert normalize_phone(raw) == expected


@pytest.mark.parametrize(
    "raw,expected",
    [(" Ivan@Mail.RU ", "ivan@mail.ru"), ("a@b.kz", "a@b.kz"), ("not-an-email", None), ("a@b", None), ("", None)],
)
def test_normalize_email(raw, expected):
    assert normalize_email(raw) == expected


def test_keyed_hash_is_keyed_and_kind_separated():
    assert keyed_hash(b"k", "phone", "7912") == keyed_hash(b"k", "phone", "7912")
    assert keyed_hash(b"k", "phone", "7912") != keyed_hash(b"other", "phone", "7912")
    assert keyed_hash(b"k", "phone", "x") != keyed_hash(b"k", "email", "x")


def test_person_is_the_smallest_client_whatever_the_order():
    for order in (["b", "c", "a"], ["a", "b", "c"], ["c", "a", "b"]):
        g = IdentityGraph()
        for client in order:
            g.link(client, "p:phone1")
        assert {g.person_of(c) for c in "abc"} == {"a"}
        assert sorted(g.clients_of("a")) == ["a", "b", "c"]


def test_link_reports_merges_only_when_persons_join():
    g = IdentityGraph()
    assert g.link("b", "p:1") is None  # a contact joins a client: no person merged
    assert g.link("b", "e:1") is None
    assert g.link("a", "e:1") == ("a", ["b"])
    assert g.link("z", "p:2") is None
    assert g.link("z", "p:1") == ("a", ["z"])
    assert g.person_of("unknown") == "unknown"
