"""Traffic-source classification of a landing: (type, source, medium, campaign, ...).

The lists are data: extend them here (or, for click ids, per project in ProjectRules).
Order of decision, as in Yandex Metrica: a referrer from the project's own sites is internal;
otherwise an ad click id or paid UTM medium makes it an ad; other UTM tags decide by medium;
then the referrer host decides (search engine, social network, webmail, any other site); no
referrer and no tags is direct.
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import parse_qsl, urlsplit

from .model import DIRECT, Source

SOURCE_TYPES = ("ad", "organic", "social", "email", "referral", "tagged", "internal", "direct")
# Types that never win last-significant-click.
INSIGNIFICANT = frozenset({"direct", "internal"})

PAID_MEDIUMS = frozenset(
    {
        "cpc", "ppc", "paid", "cpm", "cpa", "cpv", "cpi", "cpp", "cpl", "display", "banner",
        "retargeting", "remarketing", "paid_social", "paid-social", "paidsocial", "paidsearch",
        "paid_search", "paid-search", "ads", "ad", "context", "context-cpc", "smm_paid", "target",
    }
)
EMAIL_MEDIUMS = frozenset({"email", "e-mail", "e_mail", "mail", "newsletter", "mailing", "rassylka"})
SOCIAL_MEDIUMS = frozenset({"social", "sm", "smm", "social-network", "social_network", "social-media", "social_media"})
ORGANIC_MEDIUMS = frozenset({"organic", "seo"})
REFERRAL_MEDIUMS = frozenset({"referral", "ref", "link", "partner", "affiliate"})

# Click-id URL parameters of ad networks -> (source, medium).
CLICK_IDS: dict[str, tuple[str, str]] = {
    "yclid": ("yandex", "cpc"),
    "gclid": ("google", "cpc"),
    "gbraid": ("google", "cpc"),
    "wbraid": ("google", "cpc"),
    "msclkid": ("bing", "cpc"),
    "rb_clickid": ("vk", "cpc"),  # VK Ads / myTarget
    "vkclid": ("vk", "cpc"),
}

# Registrable-domain labels of search engines -> source name. Matched on any TLD
# (yandex.ru, yandex.kz, yandex.uz, google.com.tr, ...). Hosts are checked before labels.
SEARCH_HOSTS = {
    "ya.ru": "yandex",
    "go.mail.ru": "mail.ru",
    "search.yahoo.com": "yahoo",
    "nova.rambler.ru": "rambler",
    "search.brave.com": "brave",
    "duckduckgo.com": "duckduckgo",
    "bing.com": "bing",
    "ecosia.org": "ecosia",
    "yandex.com.tr": "yandex",
}
SEARCH_LABELS = {"yandex": "yandex", "google": "google", "bing": "bing", "yahoo": "yahoo", "rambler": "rambler", "baidu": "baidu", "sputnik": "sputnik"}

SOCIAL_HOSTS = {
    "vk.com": "vk", "vk.ru": "vk", "vk.me": "vk", "ok.ru": "ok", "odnoklassniki.ru": "ok",
    "t.me": "telegram", "telegram.org": "telegram", "telegram.me": "telegram",
    "dzen.ru": "dzen", "zen.yandex.ru": "dzen", "youtube.com": "youtube", "youtu.be": "youtube",
    "facebook.com": "facebook", "fb.com": "facebook", "instagram.com": "instagram",
    "x.com": "x", "twitter.com": "x", "t.co": "x", "tiktok.com": "tiktok",
    "linkedin.com": "linkedin", "lnkd.in": "linkedin", "pinterest.com": "pinterest",
    "reddit.com": "reddit", "wa.me": "whatsapp", "whatsapp.com": "whatsapp",
    "viber.com": "viber", "my.mail.ru": "mail.ru", "livejournal.com": "livejournal",
    "rutube.ru": "rutube", "threads.net": "threads",
}
# Names a UTM source may use for a social network (utm_source=vk with an unknown medium).
SOCIAL_NAMES = frozenset(SOCIAL_HOSTS.values()) | {"tg", "fb", "ig", "inst"}
WEBMAIL_HOSTS = {
    "mail.yandex.ru": "yandex.mail", "mail.yandex.kz": "yandex.mail", "e.mail.ru": "mail.ru",
    "mail.google.com": "gmail", "outlook.live.com": "outlook", "mail.rambler.ru": "rambler.mail",
}
_SEARCH_TERM_PARAMS = ("text", "q", "p", "query")


def host_of(url: str) -> str:
    """Lower-case host of a URL without ``www.`` and port; '' when there is none."""
    i = url.find("://")
    if i < 0:
        return ""
    start = i + 3
    end = len(url)
    for ch in "/?#":
        j = url.find(ch, start)
        if j != -1 and j < end:
            end = j
    host = url[start:end].rpartition("@")[2].lower()
    if host.startswith("["):  # IPv6 literal
        return host.partition("]")[0] + "]"
    host = host.partition(":")[0].rstrip(".")
    return host[4:] if host.startswith("www.") else host


@lru_cache(maxsize=65536)
def host_of_cached(url: str) -> str:
    return host_of(url)


def is_internal(host: str, domains: tuple[str, ...]) -> bool:
    return any(host == d or host.endswith("." + d) for d in domains)


@lru_cache(maxsize=65536)
def _internal_source(host: str, domains: tuple[str, ...]) -> Source | None:
    """The shared Source for a referrer host of the project's own sites, else None."""
    return Source("internal", host, "internal") if is_internal(host, domains) else None


def _match_suffix(host: str, table: dict[str, str]) -> str | None:
    """Value for ``host`` or any parent domain of it in ``table``."""
    while host:
        if host in table:
            return table[host]
        _, dot, host = host.partition(".")
        if not dot:
            return None
    return None


def _registrable_label(host: str) -> str:
    """'yandex' for yandex.ru, google.com, google.co.uk, www.google.com.tr."""
    labels = host.split(".")
    if len(labels) < 2:
        return host
    if len(labels) >= 3 and labels[-2] in ("co", "com", "org", "net", "ac"):
        return labels[-3]
    return labels[-2]


def _search_engine(host: str) -> str | None:
    return _match_suffix(host, SEARCH_HOSTS) or SEARCH_LABELS.get(_registrable_label(host))


@lru_cache(maxsize=8192)
def _referrer_source(host: str) -> Source:
    webmail = _match_suffix(host, WEBMAIL_HOSTS)
    if webmail:
        return Source("email", webmail, "email")
    social = _match_suffix(host, SOCIAL_HOSTS)
    if social:
        return Source("social", social, "social")
    engine = _search_engine(host)
    if engine:
        return Source("organic", engine, "organic")
    return Source("referral", host, "referral")


def query_params(url: str) -> dict[str, str]:
    q = url.find("?")
    if q < 0:
        return {}
    query = url[q + 1 :].partition("#")[0]
    return {k.lower(): v for k, v in parse_qsl(query, keep_blank_values=False)}


def path_of(url: str) -> str:
    """The path of an absolute URL ('/' when empty); fast: no full URL parse."""
    i = url.find("://")
    if i < 0:
        try:
            return urlsplit(url).path
        except ValueError:
            return ""
    j = url.find("/", i + 3)
    if j < 0:
        return "/"
    end = len(url)
    for ch in "?#":
        k = url.find(ch, j)
        if k != -1 and k < end:
            end = k
    return url[j:end]


def _clean(value: str, limit: int = 256) -> str:
    return value.strip()[:limit]


def classify(
    url: str,
    referrer: str,
    domains: tuple[str, ...],
    extra_click_ids: dict[str, tuple[str, str]] | None = None,
    params: dict[str, str] | None = None,
) -> Source:
    """The traffic source of an event, as if it were the landing of a visit. ``params`` are
    the URL's query parameters when the caller has parsed them already."""
    ref_host = host_of_cached(referrer) if referrer else ""
    if ref_host:
        internal = _internal_source(ref_host, domains)
        if internal is not None:
            return internal
    if params is None:
        params = query_params(url) if "?" in url else {}
    if params:
        click_ids = CLICK_IDS if not extra_click_ids else {**CLICK_IDS, **extra_click_ids}
        utm_source = params.get("utm_source", "").strip().lower()[:128]
        utm_medium = params.get("utm_medium", "").strip().lower()[:128]
        campaign = _clean(params.get("utm_campaign", ""))
        content = _clean(params.get("utm_content", ""))
        term = _clean(params.get("utm_term", ""))
        for param, (src, medium) in click_ids.items():
            value = params.get(param)
            if value:
                return Source("ad", utm_source or src, utm_medium or medium, campaign, content, term, f"{param}:{value[:200]}")
        if utm_source or utm_medium or campaign:
            if utm_medium in PAID_MEDIUMS:
                kind = "ad"
            elif utm_medium in EMAIL_MEDIUMS:
                kind = "email"
            elif utm_medium in SOCIAL_MEDIUMS:
                kind = "social"
            elif utm_medium in ORGANIC_MEDIUMS:
                kind = "organic"
            elif utm_medium in REFERRAL_MEDIUMS:
                kind = "referral"
            elif utm_source in SOCIAL_NAMES:
                kind = "social"
            else:
                kind = "tagged"
            return Source(kind, utm_source or (ref_host or "(not set)"), utm_medium or "(not set)", campaign, content, term)
    if ref_host:
        src = _referrer_source(ref_host)
        if src.type == "organic":
            term = next((v for k in _SEARCH_TERM_PARAMS if (v := query_params(referrer).get(k))), "")
            if term:
                return src._replace(term=_clean(term))
        return src
    if referrer.startswith("android-app://"):
        app = referrer[len("android-app://") :].split("/")[0].lower()
        return _referrer_source(app) if app else DIRECT
    return DIRECT


def is_significant(source: Source) -> bool:
    return source.type not in INSIGNIFICANT
