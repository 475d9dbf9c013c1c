import pytest

from streams.sources import classify, host_of

DOMAINS = ("kursy.ru", "kursy.kz")

CASES = [
    # url, referrer, (type, source, medium, campaign)
    ("https://kursy.ru/?utm_source=yandex&utm_medium=cpc&utm_campaign=python", "https://yandex.ru/", ("ad", "yandex", "cpc", "python")),
    ("https://kursy.ru/?yclid=123", "", ("ad", "yandex", "cpc", "")),
    ("https://kursy.ru/?gclid=abc&utm_campaign=brand", "", ("ad", "google", "cpc", "brand")),
    ("https://kursy.ru/?rb_clickid=9", "", ("ad", "vk", "cpc", "")),
    ("https://kursy.ru/?utm_source=vk&utm_medium=paid_social", "https://vk.com/", ("ad", "vk", "paid_social", "")),
    ("https://kursy.ru/?utm_source=mytarget&utm_medium=cpm", "", ("ad", "mytarget", "cpm", "")),
    ("https://kursy.ru/?utm_source=sendpulse&utm_medium=email&utm_campaign=may", "", ("email", "sendpulse", "email", "may")),
    ("https://kursy.ru/?utm_source=vk&utm_medium=post", "", ("social", "vk", "post", "")),
    ("https://kursy.ru/?utm_source=partner&utm_medium=qr", "", ("tagged", "partner", "qr", "")),
    ("https://kursy.ru/", "https://yandex.ru/search/?text=python", ("organic", "yandex", "organic", "")),
    ("https://kursy.ru/", "https://yandex.kz/", ("organic", "yandex", "organic", "")),
    ("https://kursy.ru/", "https://ya.ru/", ("organic", "yandex", "organic", "")),
    ("https://kursy.ru/", "https://www.google.com/", ("organic", "google", "organic", "")),
    ("https://kursy.ru/", "https://www.google.co.uk/", ("organic", "google", "organic", "")),
    ("https://kursy.ru/", "https://www.bing.com/", ("organic", "bing", "organic", "")),
    ("https://kursy.ru/", "https://go.mail.ru/search?q=x", ("organic", "mail.ru", "organic", "")),
    ("https://kursy.ru/", "https://duckduckgo.com/", ("organic", "duckduckgo", "organic", "")),
    ("https://kursy.ru/", "https://nova.rambler.ru/search", ("organic", "rambler", "organic", "")),
    ("https://kursy.ru/", "https://search.yahoo.com/", ("organic", "yahoo", "organic", "")),
    ("https://kursy.ru/", "https://vk.com/wall-1", ("social", "vk", "social", "")),
    ("https://kursy.ru/", "https://m.vk.com/", ("social", "vk", "social", "")),
    ("https://kursy.ru/", "https://ok.ru/", ("social", "ok", "social", "")),
    ("https://kursy.ru/", "https://t.me/kursy", ("social", "telegram", "social", "")),
    ("https://kursy.ru/", "https://dzen.ru/a/x", ("social", "dzen", "social", "")),
    ("https://kursy.ru/", "https://www.youtube.com/watch", ("social", "youtube", "social", "")),
    ("https://kursy.ru/", "https://l.instagram.com/", ("social", "instagram", "social", "")),
    ("https://kursy.ru/", "https://e.mail.ru/inbox", ("email", "mail.ru", "email", "")),
    ("https://kursy.ru/", "https://mail.yandex.ru/", ("email", "yandex.mail", "email", "")),
    ("https://kursy.ru/", "https://habr.com/ru/articles/1", ("referral", "habr.com", "referral", "")),
    ("https://kursy.ru/", "android-app://org.telegram.messenger/", ("referral", "org.telegram.messenger", "referral", "")),
    ("https://kursy.ru/b", "https://kursy.ru/a", ("internal", "kursy.ru", "internal", "")),
    ("https://kursy.ru/b", "https://www.kursy.kz/a", ("internal", "kursy.kz", "internal", "")),
    ("https://kursy.ru/b", "https://shop.kursy.ru/a", ("internal", "shop.kursy.ru", "internal", "")),
    # tags on internal navigation do not make a new source
    ("https://kursy.ru/?utm_source=banner&utm_medium=cpc", "https://kursy.ru/", ("internal", "kursy.ru", "internal", "")),
    ("https://kursy.ru/", "", ("direct", "", "", "")),
]


@pytest.mark.parametrize("url,referrer,expected", CASES)
def test_classify(url, referrer, expected):
    s = classify(url, referrer, DOMAINS)
    assert (s.type, s.source, s.medium, s.campaign) == expected


def test_click_id_is_kept_and_extra_click_ids_are_configurable():
    assert classify("https://kursy.ru/?yclid=42", "", DOMAINS).click_id == "yclid:42"
    s = classify("https://kursy.ru/?ttclid=7", "", DOMAINS, {"ttclid": ("tiktok", "cpc")})
    assert (s.type, s.source, s.click_id) == ("ad", "tiktok", "ttclid:7")
    assert classify("https://kursy.ru/?ttclid=7", "", DOMAINS).type == "direct"


def test_search_term_from_referrer():
    assert classify("https://kursy.ru/", "https://yandex.ru/search/?text=курсы", DOMAINS).term == "курсы"


@pytest.mark.parametrize(
    "url,host",
    [("https://WWW.Kursy.ru:8443/x?y#z", "kursy.ru"), ("http://user@a.b/", "a.b"), ("nonsense", ""), ("https://[::1]:80/", "[::1]")],
)
def test_host_of(url, host):
    assert host_of(url) == host
