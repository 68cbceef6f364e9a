"""A deterministic, realistic e-commerce clickstream in every input format journeymap reads.

`write_sample` simulates shoppers, service visitors and robots on a fictional web shop and writes
what such a shop would hand an analyst: an Apache/Nginx combined access log (gzip, two members),
a smaller common-format log, an NDJSON event stream, and a vendor export as CSV and Parquet with
its own column names, plus the `journeymap.toml` that maps those columns. The data carries the
mess real logs carry (static assets, health checks, bots, duplicates, out-of-order and malformed
lines, personal data in URLs, two time zones) and, on request, planted conversion blockers whose
location is known, so the pipeline's findings can be checked against the truth.

Sessions are simulated in lockstep: every array holds one entry per session and one loop
iteration advances all sessions by one step, so the cost is a few dozen numpy operations per
step whatever the volume. Lines are built with Polars string expressions. Large volumes are made
in consecutive time windows ("chunks", a million events each) appended to the files, which keeps
memory flat; at the seams a few lines of sessions that run past a window's end come minutes out
of order, as in logs merged from several servers.

What counts as what:

- an *event* is a distinct well-formed line or row: page views, tracker events, asset requests,
  health checks and robot hits alike;
- a *malformed* line must be rejected by a reader (truncated, garbage, impossible date, invalid
  UTF-8, a target without a leading slash, invalid JSON or a required field of the wrong type,
  a CSV row with the wrong number of fields or a non-numeric time; in Parquet a null visitor or
  a time far outside the period);
- a *duplicate* is an extra verbatim copy of an event line.

A few NDJSON events send ``"status": "abc"``: an optional field of the wrong type, which a
reader nulls rather than rejects, so those lines count as events. Two simulated requests can
by chance give the same line (same address, second and URL); that copy counts as a duplicate,
so at very large sizes `n_events` can fall a handful short of the number asked for.

The same arguments always give byte-identical files: all randomness comes from
`numpy.random.default_rng` seeded with `seed`, gzip headers carry no time or name, and no wall
clock is read.

>>> import tempfile
>>> manifest = write_sample(Path(tempfile.mkdtemp()), 2_000, formats=("ndjson",))
>>> manifest.n_events
2000
>>> sorted(p.name for p in manifest.files)
['events.ndjson', 'journeymap.toml']
"""

from __future__ import annotations

import io
import math
import os
import struct
import zlib
import zoneinfo
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.random import Generator

ALL_PROBLEMS = ("payment_5xx", "cart_loop", "search_dead_end")
URL_SCHEMES = ("en", "nl")
ALL_FORMATS = ("combined", "common", "ndjson", "csv", "parquet")
CONVERSIONS = ("url", "event")

FILE_NAMES = {
    "combined": "access.log.gz",
    "common": "access_common.log",
    "ndjson": "events.ndjson",
    "csv": "export.csv",
    "parquet": "export.parquet",
}
CONFIG_NAME = "journeymap.toml"

# The vendor export's own column names, mapped back by the written journeymap.toml.
EXPORT_COLUMNS = {
    "anonymous_id": "visitor",
    "user_id": "uid",
    "ts": "when",
    "event_type": "action",
    "url": "page",
    "referrer": "ref",
    "user_agent": "ua",
    "status": "http_status",
    "revenue": "amount",
}

HOST = "shop.example.com"
SERVER_TIMEZONE = "Europe/Amsterdam"

# Share of sessions per format. Access logs dominate, as they do in real shops; the plain-text
# event formats get smaller shares so the committed demo sample stays small.
_FORMAT_SHARES = {"combined": 0.6, "common": 0.07, "ndjson": 0.1, "csv": 0.07, "parquet": 0.16}
_ACCESS_FORMATS = ("combined", "common")

_CHUNK_EVENTS = 1_000_000  # events per time window: bounds memory at the 100M benchmark
_MAX_STEPS = 30  # a human session never has more page views than this
_BOT_SHARE = 0.05  # of sessions
_DUPLICATE_SHARE = 0.01  # of lines, repeated verbatim a little later
_DISORDER_SHARE = 0.02  # of lines, moved a few lines away from their time order
_MALFORMED_SHARE = 0.003  # of lines, per file
_HEALTH_CHECK_SHARE = 0.004  # of events, in the combined log only
_LONG_PAUSE_PROBABILITY = 0.004  # per step: a pause > 30 min that splits the visit in two
_FOLLOW_UP_PROBABILITY = 0.6  # a buyer comes back for service (orders, returns, contact)
_CART_LOOP_SHARE = 0.3  # of sessions, looping between cart and shipping if they reach the cart
_DEAD_SEARCH_SHARE = 0.12  # of searches, for a term the shop has no results for
_PAYMENT_RETRY_PROBABILITY = 0.3  # an iPhone Safari shopper who sees the 500 tries once more
_FOLLOW_UP_MAX_DAYS = 6
_REGULAR_SESSION_SHARE = 0.3  # of shopper sessions, by people who come back
_VISITS_PER_REGULAR = 4.0  # in the whole period, on average
# Small samples get committed, so they are squeezed; large ones feed benchmarks, where the
# fastest deflate level saves a third of the run time.
_GZIP_LEVEL_SMALL, _GZIP_LEVEL_LARGE, _SMALL_SAMPLE_EVENTS = 6, 1, 200_000
_US_CLIENT_OFFSET_S = -5 * 3600  # a tracker relay that stamps events in US Eastern time
_GZIP_PIECE_BYTES = 4 << 20

# Page types, the states of the journey process.
(
    HOME,
    CATEGORY,
    PRODUCT,
    SEARCH,
    NO_RESULTS,
    CART,
    SHIPPING,
    PAYMENT,
    CONFIRM,
    LOGIN,
    ACCOUNT,
    ORDERS,
    HELP,
    RETURNS,
    CONTACT,
) = range(15)
_N_PAGES = 15
_EXIT = _N_PAGES

# Session kinds.
_SHOPPER, _SERVICE, _BOT, _SCRAPER = range(4)

# Record (line/row) kinds; the first seven are the event types of the event formats.
_EVENT_TYPES = (
    "page_view",
    "search",
    "add_to_cart",
    "login",
    "begin_checkout",
    "add_payment_info",
    "purchase",
)
_PAGE_VIEW, _SEARCH_EVENT, _ADD_TO_CART, _LOGIN_EVENT, _BEGIN_CHECKOUT, _PAYMENT_INFO, _PURCHASE = (
    range(7)
)
_ASSET = 7

_PATHS = {
    "en": {
        HOME: "/",
        CART: "/cart",
        SHIPPING: "/checkout/shipping",
        PAYMENT: "/checkout/payment",
        LOGIN: "/login",
        ACCOUNT: "/account",
        ORDERS: "/account/orders",
        HELP: "/help",
        RETURNS: "/help/returns",
        CONTACT: "/contact",
        "confirm_url": "/checkout/success",
        # Where the order is placed when conversion is an event: deliberately not matching the
        # default conversion url_pattern, so only the purchase event can mark the conversion.
        "confirm_event": "/checkout/place-order",
        "category": "/c/",
        "product": "/p/",
        "search": "/search?q=",
        "no_results": "/search/no-results?q=",
    },
    "nl": {
        HOME: "/nl/",
        CART: "/nl/winkelwagen",
        SHIPPING: "/nl/afrekenen/bezorging",
        PAYMENT: "/nl/afrekenen/betalen",
        LOGIN: "/nl/inloggen",
        ACCOUNT: "/nl/account",
        ORDERS: "/nl/account/bestellingen",
        HELP: "/nl/klantenservice",
        RETURNS: "/nl/klantenservice/retourneren",
        CONTACT: "/nl/klantenservice/contact",
        "confirm_url": "/nl/afrekenen/bevestiging",
        "confirm_event": "/nl/afrekenen/bestellen",
        "category": "/nl/c/",
        "product": "/nl/p/",
        "search": "/nl/zoeken?q=",
        "no_results": "/nl/zoeken/geen-resultaten?q=",
    },
}

# The shop's vocabulary and the traffic mix are data, kept compact on purpose.
# fmt: off
_CATEGORIES = {
    "en": ("women", "men", "kids", "shoes", "accessories", "sale", "new-in", "sports",
           "home-living", "beauty"),
    "nl": ("dames", "heren", "kinderen", "schoenen", "accessoires", "sale", "nieuw", "sport",
           "wonen", "beauty"),
}
_CATEGORY_WEIGHTS = (0.2, 0.15, 0.08, 0.14, 0.07, 0.16, 0.08, 0.05, 0.04, 0.03)

_ADJECTIVES = {
    "en": ("classic", "slim-fit", "oversized", "organic-cotton", "wool", "leather", "linen",
           "quilted", "recycled", "vintage"),
    "nl": ("klassieke", "slim-fit", "oversized", "biokatoenen", "wollen", "leren", "linnen",
           "gewatteerde", "gerecyclede", "vintage"),
}
_NOUNS = {
    "en": ("denim-jacket", "sneaker", "t-shirt", "hoodie", "chino", "dress", "boots", "scarf",
           "backpack", "raincoat", "sweater", "parka", "blazer", "shorts", "cap"),
    "nl": ("spijkerjas", "sneaker", "t-shirt", "hoodie", "chino", "jurk", "laarzen", "sjaal",
           "rugzak", "regenjas", "trui", "parka", "blazer", "short", "pet"),
}
_N_PRODUCTS = 8000

_SEARCH_TERMS = {
    "en": ("winter+coat", "sneakers", "jeans", "rain+jacket", "black+dress", "hoodie",
           "running+shoes", "wool+scarf", "leather+boots", "backpack", "t-shirt", "linen+shirt",
           "puffer+jacket", "chelsea+boots", "gift", "socks", "swimwear", "cap", "belt",
           "pyjamas"),
    "nl": ("winterjas", "sneakers", "spijkerbroek", "regenjas", "zwarte+jurk", "hoodie",
           "hardloopschoenen", "wollen+sjaal", "leren+laarzen", "rugzak", "t-shirt",
           "linnen+overhemd", "pufferjas", "chelsea+boots", "cadeau", "sokken", "badmode", "pet",
           "riem", "pyjama"),
}
# Terms the shop has no results for: the search_dead_end problem.
_DEAD_TERMS = {
    "en": ("gift+card+balance", "ps5", "iphone+16+case", "lego", "size+guide"),
    "nl": ("cadeaubon+saldo", "ps5", "iphone+16+hoesje", "lego", "maattabel"),
}

# Browser families: key, device class, share of people, full user-agent strings (versions).
_BROWSERS = (
    ("windows_chrome", "desktop", 0.25, (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/129.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/130.0.0.0 Safari/537.36",
    )),
    ("windows_edge", "desktop", 0.07, (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/130.0.0.0 Safari/537.36 Edg/130.0.0.0",
    )),
    ("windows_firefox", "desktop", 0.04, (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:131.0) Gecko/20100101 Firefox/131.0",
    )),
    ("linux_firefox", "desktop", 0.01, (
        "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:131.0) Gecko/20100101 Firefox/131.0",
    )),
    ("mac_safari", "desktop", 0.08, (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/18.0 Safari/605.1.15",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.6 Safari/605.1.15",
    )),
    ("mac_chrome", "desktop", 0.05, (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/130.0.0.0 Safari/537.36",
    )),
    ("iphone_safari", "mobile", 0.22, (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0_1 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/18.0.1 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6_1 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
    )),
    # Chrome on iPhone: same device, other browser, not hit by the Safari payment bug.
    ("iphone_chrome", "mobile", 0.03, (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0_1 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) CriOS/130.0.6723.90 Mobile/15E148 Safari/604.1",
    )),
    ("android_chrome", "mobile", 0.17, (
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/130.0.0.0 Mobile Safari/537.36",
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/129.0.0.0 Mobile Safari/537.36",
    )),
    ("android_samsung", "mobile", 0.04, (
        "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
    )),
    ("ipad_safari", "tablet", 0.04, (
        "Mozilla/5.0 (iPad; CPU OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.6 Mobile/15E148 Safari/604.1",
    )),
)
# Crawlers: user agent, the first two octets of the network they crawl from, share of crawls.
_CRAWLERS = (
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", (66, 249), 0.3),
    ("Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 "
     "(KHTML, like Gecko) Chrome/130.0.6723.69 Mobile Safari/537.36 (compatible; Googlebot/2.1; "
     "+http://www.google.com/bot.html)", (66, 249), 0.15),
    ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", (157, 55), 0.2),
    ("Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)", (54, 36), 0.2),
    ("python-requests/2.32.3", (18, 185), 0.15),
)
# A robot in an event stream is a headless browser: crawlers do not run the tracking script.
_HEADLESS_UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                "HeadlessChrome/130.0.0.0 Safari/537.36")
_SCRAPER_IP = "94.102.49.190"
_HEALTH_UA = "kube-probe/1.29"
_HEALTH_IPS = ("10.42.0.1", "10.42.1.1")
# First octets of consumer (broadband and mobile) networks for human visitors.
_PUBLIC_FIRST_OCTETS = (31, 37, 62, 77, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 94, 95, 145, 178,
                        188, 212, 213, 217)

# Acquisition channels: name, share, referrer, landing page weights.
_CHANNELS = (
    ("direct", 0.27, None,
     {HOME: 0.66, PRODUCT: 0.12, CATEGORY: 0.1, ACCOUNT: 0.04, CART: 0.05, HELP: 0.01}),
    ("google", 0.22, "https://www.google.com/",
     {PRODUCT: 0.45, CATEGORY: 0.3, HOME: 0.24, HELP: 0.01}),
    ("google_nl", 0.04, "https://www.google.nl/", {PRODUCT: 0.45, CATEGORY: 0.3, HOME: 0.25}),
    ("bing", 0.04, "https://www.bing.com/", {PRODUCT: 0.4, CATEGORY: 0.3, HOME: 0.3}),
    ("duckduckgo", 0.02, "https://duckduckgo.com/", {PRODUCT: 0.5, HOME: 0.5}),
    ("google_cpc", 0.07, "https://www.google.com/", {PRODUCT: 0.6, CATEGORY: 0.4}),
    ("facebook", 0.05, "https://m.facebook.com/", {PRODUCT: 0.5, CATEGORY: 0.3, HOME: 0.2}),
    ("instagram", 0.04, "https://l.instagram.com/", {PRODUCT: 0.7, CATEGORY: 0.3}),
    ("newsletter", 0.1, None, {CATEGORY: 0.6, HOME: 0.25, PRODUCT: 0.15}),
    ("partner", 0.04, "https://deals.partner.example/black-friday", {PRODUCT: 0.7, CATEGORY: 0.3}),
    # A password-reset mail: the token sits in the landing URL.
    ("reset_link", 0.01, None, {LOGIN: 1.0}),
)
_SERVICE_LANDING = {LOGIN: 0.4, ORDERS: 0.2, RETURNS: 0.2, HELP: 0.1, CONTACT: 0.1}
_FIRST_NAMES = ("jan", "sanne", "pieter", "emma", "daan", "lotte", "sem", "julia", "lucas", "anna",
                "thomas", "fleur", "bram", "noor", "ruben", "eva")
_SURNAMES = ("jansen", "devries", "bakker", "visser", "smit", "meijer", "mulder", "bos")

# Where shoppers go next from each page. Tuned for ~3 % conversion and 3-15 steps.
_SHOPPER_MOVES = {
    HOME: {CATEGORY: 0.42, SEARCH: 0.2, PRODUCT: 0.2, LOGIN: 0.03, ACCOUNT: 0.005, HELP: 0.002,
           CART: 0.025, _EXIT: 0.118},
    CATEGORY: {PRODUCT: 0.62, CATEGORY: 0.14, SEARCH: 0.06, HOME: 0.03, CART: 0.01, _EXIT: 0.14},
    PRODUCT: {PRODUCT: 0.37, CATEGORY: 0.19, SEARCH: 0.09, CART: 0.08, HOME: 0.03, _EXIT: 0.24},
    SEARCH: {PRODUCT: 0.6, SEARCH: 0.13, CATEGORY: 0.05, HOME: 0.02, _EXIT: 0.2},
    NO_RESULTS: {SEARCH: 0.08, HOME: 0.04, CATEGORY: 0.03, _EXIT: 0.85},
    CART: {SHIPPING: 0.45, PRODUCT: 0.15, CATEGORY: 0.06, HOME: 0.02, LOGIN: 0.05, _EXIT: 0.27},
    SHIPPING: {PAYMENT: 0.62, CART: 0.06, LOGIN: 0.04, _EXIT: 0.28},
    PAYMENT: {CONFIRM: 0.78, SHIPPING: 0.04, _EXIT: 0.18},
    CONFIRM: {ORDERS: 0.08, HELP: 0.04, HOME: 0.04, _EXIT: 0.84},
    LOGIN: {HOME: 0.35, ACCOUNT: 0.08, CART: 0.15, CATEGORY: 0.22, _EXIT: 0.2},
    ACCOUNT: {ORDERS: 0.25, HOME: 0.35, HELP: 0.02, _EXIT: 0.38},
    ORDERS: {RETURNS: 0.15, HELP: 0.1, HOME: 0.15, _EXIT: 0.6},
    HELP: {RETURNS: 0.3, CONTACT: 0.2, HOME: 0.1, _EXIT: 0.4},
    RETURNS: {CONTACT: 0.2, ORDERS: 0.1, _EXIT: 0.7},
    CONTACT: {HELP: 0.1, HOME: 0.1, _EXIT: 0.8},
}
# fmt: on
# Service visitors (mostly buyers coming back) head for their orders, returns and contact.
_SERVICE_MOVES = {
    **_SHOPPER_MOVES,
    HOME: {ACCOUNT: 0.3, HELP: 0.3, CATEGORY: 0.1, _EXIT: 0.3},
    LOGIN: {ORDERS: 0.55, ACCOUNT: 0.25, RETURNS: 0.1, _EXIT: 0.1},
    ACCOUNT: {ORDERS: 0.6, HELP: 0.1, _EXIT: 0.3},
    ORDERS: {RETURNS: 0.35, HELP: 0.15, CONTACT: 0.1, _EXIT: 0.4},
}

# A C1 control character no real line holds; its two UTF-8 bytes are overwritten by ff fe.
_BAD_UTF8_MARK = "\u0080"
_BAD_UTF8_BYTES = b"\xff\xfe"
_STEP_GAP_MEDIAN_S = 32.0


@dataclass(frozen=True)
class PlantedProblem:
    """A conversion blocker planted in the sample, so findings can be checked against the truth.

    Attributes
    ----------
    kind : str
        One of `ALL_PROBLEMS`.
    touchpoint_url : str
        URL path of the step where it happens, e.g. ``"/checkout/payment"``.
    segment : dict of str to str
        The traffic it hits, e.g. ``{"device": "mobile", "browser": "Mobile Safari"}``;
        ``{}`` when it hits all traffic.
    description : str
        What happens, in one sentence.
    """

    kind: str
    touchpoint_url: str
    segment: dict[str, str]
    description: str


@dataclass(frozen=True)
class SampleManifest:
    """What `write_sample` wrote.

    The counts add up per file: lines (rows) = events + malformed + duplicates, not counting the
    CSV header.

    Attributes
    ----------
    files : tuple of Path
        Every file written: the data files and ``journeymap.toml``.
    n_events : int
        Distinct well-formed records (page views, other events, asset requests, health checks,
        robot hits), before malformed and duplicate lines are added.
    n_malformed : int
        Lines (or Parquet rows) that a reader must reject.
    n_duplicates : int
        Extra verbatim copies of well-formed lines (or rows).
    problems : tuple of PlantedProblem
        The planted conversion blockers.
    """

    files: tuple[Path, ...]
    n_events: int
    n_malformed: int
    n_duplicates: int
    problems: tuple[PlantedProblem, ...]


def write_sample(
    out_dir: Path,
    n_events: int,
    *,
    seed: int = 7,
    url_scheme: str = "en",
    problems: tuple[str, ...] = ALL_PROBLEMS,
    conversion: str = "url",
    formats: tuple[str, ...] = ALL_FORMATS,
    start: datetime = datetime(2026, 10, 5, tzinfo=UTC),
    days: int = 14,
) -> SampleManifest:
    """Write a simulated shop's clickstream into `out_dir`, one file per requested format.

    Each session goes to exactly one format; a person may have sessions in several.

    Parameters
    ----------
    out_dir : Path
        Created if missing; existing sample files in it are overwritten.
    n_events : int
        Well-formed records to write across all files (see `SampleManifest.n_events`).
    seed : int
        Same seed and arguments give byte-identical files.
    url_scheme : str
        ``"en"`` (``/checkout/payment``) or ``"nl"`` (``/nl/afrekenen/betalen``).
    problems : tuple of str
        Which of `ALL_PROBLEMS` to plant.
    conversion : str
        ``"url"``: buyers end on an order-confirmation page (and event formats also carry a
        ``purchase`` event there). ``"event"``: the order is placed on a page whose URL does not
        look like a confirmation, so only the ``purchase`` event marks it.
    formats : tuple of str
        Any of ``combined``, ``common``, ``ndjson``, ``csv``, ``parquet``.
    start : datetime
        First instant of the simulated period (naive means UTC).
    days : int
        Length of the period.

    Returns
    -------
    SampleManifest
        The files written, the counts in them and the planted problems.

    Raises
    ------
    ValueError
        For an unknown scheme, problem, format or conversion, or a non-positive size.

    Examples
    --------
    >>> import tempfile
    >>> m = write_sample(Path(tempfile.mkdtemp()), 3_000, formats=("combined", "csv"))
    >>> [p.name for p in m.files]
    ['access.log.gz', 'export.csv', 'journeymap.toml']
    >>> m.n_malformed > 0 and m.n_duplicates > 0
    True
    """
    plan = _Plan.build(n_events, seed, url_scheme, problems, conversion, formats, start, days)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pending = _Sessions.empty()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        writers = {f: _FormatWriter(f, out_dir / FILE_NAMES[f], plan, pool) for f in plan.formats}
        try:
            for chunk in range(plan.n_chunks):
                rng = np.random.default_rng([seed, chunk])
                records, sessions, pending = _simulate_chunk(plan, chunk, rng, pending)
                _write_chunk(plan, chunk, rng, records, sessions, writers)
        finally:
            for writer in writers.values():
                writer.close()
    config_path = out_dir / CONFIG_NAME
    config_path.write_text(_config_text(), encoding="utf-8")
    return SampleManifest(
        files=tuple(w.path for w in writers.values()) + (config_path,),
        n_events=sum(w.n_events for w in writers.values()),
        n_malformed=sum(w.n_malformed for w in writers.values()),
        n_duplicates=sum(w.n_duplicates for w in writers.values()),
        problems=_describe_problems(plan),
    )


def _describe_problems(plan: _Plan) -> tuple[PlantedProblem, ...]:
    paths = _PATHS[plan.url_scheme]
    described = {
        "payment_5xx": PlantedProblem(
            "payment_5xx",
            paths[PAYMENT],
            {"device": "mobile", "browser": "Mobile Safari"},
            "The payment step answers HTTP 500 to Safari on iPhone; most of those shoppers leave "
            "at once, some retry once, get another 500 and leave.",
        ),
        "cart_loop": PlantedProblem(
            "cart_loop",
            paths[CART],
            {},
            "A share of shoppers who reach the cart bounce between the cart and the shipping step "
            "at least twice and then abandon.",
        ),
        "search_dead_end": PlantedProblem(
            "search_dead_end",
            paths["no_results"].split("?")[0],
            {},
            "Searches for some terms give no results; most of those visitors leave right there.",
        ),
    }
    return tuple(described[p] for p in ALL_PROBLEMS if p in plan.problems)


def _config_text() -> str:
    columns = "\n".join(f'{canonical} = "{vendor}"' for canonical, vendor in EXPORT_COLUMNS.items())
    return (
        "# Reads the sample written by `journeymap sample`: the CSV/Parquet vendor export keeps\n"
        "# epoch milliseconds and its own column names.\n"
        '[input]\nts_unit = "ms"\n\n[input.columns]\n' + columns + "\n"
    )


# ---------------------------------------------------------------------------------------------
# The plan: everything fixed by the arguments, shared by all chunks.


@dataclass(frozen=True)
class _Site:
    """Every URL path the shop serves, as one table; pages and assets refer to it by index."""

    urls: pl.Series
    has_query: np.ndarray
    page_url: np.ndarray  # page type -> url index, for pages without an item
    category_base: int
    product_base: int
    search_base: int
    no_results_base: int
    asset_js: int
    asset_css: int
    asset_favicon: int
    image_base: int
    n_terms: int
    n_dead_terms: int
    product_cdf: np.ndarray
    product_rank_by_id: np.ndarray  # product id - 1000 -> popularity rank
    category_cdf: np.ndarray
    term_cdf: np.ndarray

    @classmethod
    def build(cls, scheme: str, conversion: str) -> _Site:
        paths = _PATHS[scheme]
        # The catalogue is the same for every seed: a product keeps its URL across samples.
        catalogue = np.random.default_rng(20261005)
        product_ids = 1000 + catalogue.permutation(_N_PRODUCTS)  # by popularity rank
        adjectives = np.array(_ADJECTIVES[scheme], dtype=object)
        nouns = np.array(_NOUNS[scheme], dtype=object)
        slugs = (
            pl.Series(adjectives[product_ids % len(adjectives)].tolist())
            + "-"
            + pl.Series(nouns[(product_ids // 7) % len(nouns)].tolist())
            + "-"
            + pl.Series(product_ids).cast(pl.String)
        )
        fixed = [HOME, CART, SHIPPING, PAYMENT, LOGIN, ACCOUNT, ORDERS, HELP, RETURNS, CONTACT]
        confirm = paths["confirm_url"] if conversion == "url" else paths["confirm_event"]
        urls = [paths[p] for p in fixed] + [confirm]
        page_url = np.full(_N_PAGES, -1, dtype=np.int32)
        page_url[fixed] = np.arange(len(fixed))
        page_url[CONFIRM] = len(fixed)
        category_base = len(urls)
        urls += [paths["category"] + c for c in _CATEGORIES[scheme]]
        terms = _SEARCH_TERMS[scheme]
        dead = _DEAD_TERMS[scheme]
        search_base = len(urls)
        urls += [paths["search"] + t for t in terms]
        no_results_base = len(urls)
        urls += [paths["no_results"] + t for t in dead]
        asset_js = len(urls)
        urls += ["/static/app.js", "/static/site.css", "/favicon.ico"]
        product_base = len(urls)
        image_base = product_base + _N_PRODUCTS
        table = pl.concat(
            [
                pl.Series(urls),
                paths["product"] + slugs,
                "/img/p" + pl.Series(product_ids).cast(pl.String) + ".webp",
            ]
        )
        rank = np.arange(_N_PRODUCTS)
        return cls(
            urls=table,
            has_query=table.str.contains("?", literal=True).to_numpy(),
            page_url=page_url,
            category_base=category_base,
            product_base=product_base,
            search_base=search_base,
            no_results_base=no_results_base,
            asset_js=asset_js,
            asset_css=asset_js + 1,
            asset_favicon=asset_js + 2,
            image_base=image_base,
            n_terms=len(terms),
            n_dead_terms=len(dead),
            product_cdf=_cdf(1.0 / (rank + 8.0) ** 1.05),
            product_rank_by_id=np.argsort(product_ids - 1000),
            category_cdf=_cdf(np.array(_CATEGORY_WEIGHTS)),
            term_cdf=_cdf(1.0 / (np.arange(len(terms)) + 2.0)),
        )


@dataclass(frozen=True)
class _Plan:
    n_events: int
    seed: int
    url_scheme: str
    problems: frozenset[str]
    conversion: str
    formats: tuple[str, ...]
    format_cdf: np.ndarray  # over `formats`
    start_us: int
    end_us: int
    n_chunks: int
    n_people: int
    n_one_off_people: int  # ids above the regulars'; drawn uniformly, so a few come twice
    hour_cdf: np.ndarray  # cumulative share of visits per hour of the period
    offset_start_us: int  # first hour of `hour_offset_s`
    hour_offset_s: np.ndarray  # server UTC offset per hour, from a day before to days after
    site: _Site
    moves_cdf: np.ndarray  # [session kind, page] -> cumulative next-page probabilities
    channel_cdf: np.ndarray
    landing_cdf: np.ndarray  # [channel] -> cumulative landing page probabilities
    service_landing_cdf: np.ndarray
    browser_cdf: np.ndarray
    desktop_cdf: np.ndarray
    handheld_cdf: np.ndarray
    ua_table: pl.Series
    browser_ua_base: np.ndarray  # browser family -> first index in ua_table
    browser_ua_count: np.ndarray
    browser_is_handheld: np.ndarray
    iphone_safari: int  # browser family index
    crawler_cdf: np.ndarray
    crawler_ua_base: int
    headless_ua: int
    scraper_ua: int

    @classmethod
    def build(cls, n_events, seed, url_scheme, problems, conversion, formats, start, days):
        if url_scheme not in URL_SCHEMES:
            raise ValueError(f"unknown url_scheme {url_scheme!r}: use one of {URL_SCHEMES}")
        unknown = [p for p in problems if p not in ALL_PROBLEMS]
        if isinstance(problems, str) or unknown:
            raise ValueError(
                f"unknown problem(s) {unknown or problems!r}: use any of {ALL_PROBLEMS}"
            )
        if conversion not in CONVERSIONS:
            raise ValueError(f"unknown conversion {conversion!r}: use one of {CONVERSIONS}")
        unknown = [f for f in formats if f not in ALL_FORMATS]
        if isinstance(formats, str) or unknown or not formats:
            raise ValueError(
                f"unknown or no format(s) {unknown or formats!r}: use any of {ALL_FORMATS}"
            )
        if isinstance(n_events, bool) or not isinstance(n_events, int) or n_events < 1:
            raise ValueError(f"n_events must be a positive integer, got {n_events!r}")
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise ValueError(f"days must be a positive integer, got {days!r}")
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        formats = tuple(f for f in ALL_FORMATS if f in formats)  # fixed order: stable output
        start_us = _epoch_us(start)
        end_us = start_us + days * 86_400_000_000
        offset_start = start - timedelta(days=1)
        server_tz = zoneinfo.ZoneInfo(SERVER_TIMEZONE)
        hour_offset_s = np.array(
            [
                (offset_start + timedelta(hours=h))
                .astimezone(server_tz)
                .utcoffset()
                .total_seconds()
                for h in range((days + 3) * 24)
            ],
            dtype=np.int64,
        )
        hour_cdf = _cdf(_visit_intensity(start, days, server_tz))

        families = _BROWSERS
        ua_strings = [ua for fam in families for ua in fam[3]]
        counts = np.array([len(fam[3]) for fam in families])
        handheld = np.array([fam[1] != "desktop" for fam in families])
        shares = np.array([fam[2] for fam in families])
        crawler_ua_base = len(ua_strings)
        ua_strings += [c[0] for c in _CRAWLERS] + [_HEADLESS_UA]
        moves = np.stack([_moves_cdf(_SHOPPER_MOVES), _moves_cdf(_SERVICE_MOVES)])
        landing = np.stack([_page_cdf(c[3]) for c in _CHANNELS])
        n_sessions = n_events / _expected_records_per_session(formats)
        return cls(
            n_events=n_events,
            seed=seed,
            url_scheme=url_scheme,
            problems=frozenset(problems),
            conversion=conversion,
            formats=formats,
            format_cdf=_cdf(np.array([_FORMAT_SHARES[f] for f in formats])),
            start_us=start_us,
            end_us=end_us,
            n_chunks=max(1, math.ceil(n_events / _CHUNK_EVENTS)),
            n_people=max(1, round(_REGULAR_SESSION_SHARE * n_sessions / _VISITS_PER_REGULAR))
            + max(1, round(n_sessions)),
            n_one_off_people=max(1, round(n_sessions)),
            hour_cdf=hour_cdf,
            offset_start_us=_epoch_us(offset_start),
            hour_offset_s=hour_offset_s,
            site=_Site.build(url_scheme, conversion),
            moves_cdf=moves,
            channel_cdf=_cdf(np.array([c[1] for c in _CHANNELS])),
            landing_cdf=landing,
            service_landing_cdf=_page_cdf(_SERVICE_LANDING),
            browser_cdf=_cdf(shares),
            desktop_cdf=_cdf(np.where(handheld, 0.0, shares)),
            handheld_cdf=_cdf(np.where(handheld, shares, 0.0)),
            ua_table=pl.Series(ua_strings),
            browser_ua_base=np.concatenate([[0], np.cumsum(counts)[:-1]]),
            browser_ua_count=counts,
            browser_is_handheld=handheld,
            iphone_safari=[fam[0] for fam in families].index("iphone_safari"),
            crawler_cdf=_cdf(np.array([c[2] for c in _CRAWLERS])),
            crawler_ua_base=crawler_ua_base,
            headless_ua=crawler_ua_base + len(_CRAWLERS),
            scraper_ua=0,  # plain desktop Chrome: the scraper hides among people
        )

    @property
    def is_access_format(self) -> np.ndarray:
        """Per format index: does it hold web-server log lines (with assets, without events)?"""
        return np.array([f in _ACCESS_FORMATS for f in self.formats])

    def window(self, chunk: int) -> tuple[float, float]:
        """The chunk's share of all visits, as a range of the visit-intensity CDF."""
        return chunk / self.n_chunks, (chunk + 1) / self.n_chunks

    def times_at(self, quantiles: np.ndarray) -> np.ndarray:
        """Epoch microseconds at which the visit CDF reaches `quantiles` (inverse sampling)."""
        hour = np.searchsorted(self.hour_cdf, quantiles, side="right")
        hour = np.minimum(hour, len(self.hour_cdf) - 1)
        below = np.where(hour > 0, self.hour_cdf[np.maximum(hour - 1, 0)], 0.0)
        width = self.hour_cdf[hour] - below
        within = np.clip((quantiles - below) / np.where(width > 0, width, 1.0), 0.0, 1.0)
        return self.start_us + ((hour + within) * 3_600_000_000).astype(np.int64)

    def offset_s(self, ts_us: np.ndarray) -> np.ndarray:
        """The server's UTC offset in seconds at each instant (DST-aware)."""
        hour = (ts_us - self.offset_start_us) // 3_600_000_000
        return self.hour_offset_s[np.clip(hour, 0, len(self.hour_offset_s) - 1)]


def _visit_intensity(start: datetime, days: int, tz: zoneinfo.ZoneInfo) -> np.ndarray:
    """Relative visits per hour: quiet nights, a lunch bump, busy evenings, lively Sundays."""
    by_hour = (
        0.35,
        0.2,
        0.12,
        0.08,
        0.07,
        0.1,
        0.25,
        0.5,
        0.7,
        0.85,
        0.95,
        1.0,
        1.05,
        1.0,
        0.95,
        0.95,
        1.0,
        1.1,
        1.25,
        1.45,
        1.6,
        1.55,
        1.2,
        0.7,
    )
    by_weekday = (1.1, 1.0, 1.0, 1.0, 0.95, 0.85, 1.15)
    # One value per hour of the period (a few hundred), not per event.
    local = [(start + timedelta(hours=h)).astimezone(tz) for h in range(days * 24)]
    return np.array([by_hour[t.hour] * by_weekday[t.weekday()] for t in local])


def _expected_records_per_session(formats: tuple[str, ...]) -> float:
    # Measured on the simulation: access-log sessions carry their asset requests.
    per_format = {"combined": 13.5, "common": 13.5, "ndjson": 7.0, "csv": 7.0, "parquet": 7.0}
    shares = np.array([_FORMAT_SHARES[f] for f in formats])
    return float(np.dot(shares / shares.sum(), [per_format[f] for f in formats]))


def _cdf(weights: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
    cdf /= cdf[-1]
    cdf[-1] = 1.0
    return cdf


def _page_cdf(weights: dict[int, float]) -> np.ndarray:
    dense = np.zeros(_N_PAGES + 1)
    for page, w in weights.items():
        dense[page] = w
    return _cdf(dense)


def _moves_cdf(moves: dict[int, dict[int, float]]) -> np.ndarray:
    return np.stack([_page_cdf(moves[page]) for page in range(_N_PAGES)])


def _draw(rng: Generator, cdf: np.ndarray, n: int) -> np.ndarray:
    """`n` draws from the categorical distribution with cumulative probabilities `cdf`."""
    return np.searchsorted(cdf, rng.random(n), side="right").astype(np.int32)


def _draw_rows(rng: Generator, cdfs: np.ndarray) -> np.ndarray:
    """One draw per row of `cdfs` (each row cumulative probabilities)."""
    u = rng.random(len(cdfs))
    return (u[:, None] >= cdfs).sum(axis=1).astype(np.int32)


def _epoch_us(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _mix(x: np.ndarray, salt: int) -> np.ndarray:
    """SplitMix64: a stateless hash, so a person's device looks the same in every chunk."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(salt & 0xFFFFFFFFFFFFFFFF) * np.uint64(
            0x9E3779B97F4A7C15
        )
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


_HEX = np.array([f"{i:02x}" for i in range(256)], dtype="S2")


def _hex(x: np.ndarray) -> pl.Series:
    """16 lowercase hex digits per uint64, vectorised."""
    pairs = _HEX[x.astype(">u8").view(np.uint8).reshape(-1, 8)]
    return pl.Series(np.ascontiguousarray(pairs).view("S16").ravel().astype(str))


# ---------------------------------------------------------------------------------------------
# Sessions and their simulation.


@dataclass
class _Sessions:
    """One entry per session of a chunk; `group` orders sessions for trimming to size."""

    person: np.ndarray  # -1 for robots
    slot: np.ndarray  # 0: the person's usual device, 1: their other one
    kind: np.ndarray
    fmt: np.ndarray  # index into plan.formats
    start: np.ndarray
    channel: np.ndarray
    group: np.ndarray
    wants_login: np.ndarray
    loops: np.ndarray  # would bounce between cart and shipping (cart_loop)
    end: np.ndarray  # set by _walk
    converted: np.ndarray  # set by _walk

    @classmethod
    def new(cls, **columns: np.ndarray) -> _Sessions:
        """Sessions not walked yet."""
        n = len(columns["start"])
        return cls(**columns, end=np.zeros(n, np.int64), converted=np.zeros(n, bool))

    @classmethod
    def empty(cls) -> _Sessions:
        flags = ("wants_login", "loops")
        return cls.new(
            **{
                k: np.zeros(0, bool if k in flags else np.int64)
                for k in cls.__dataclass_fields__
                if k not in ("end", "converted")
            }
        )

    def __len__(self) -> int:
        return len(self.start)

    def take(self, idx: np.ndarray) -> _Sessions:
        return _Sessions(**{k: getattr(self, k)[idx] for k in _Sessions.__dataclass_fields__})

    @staticmethod
    def concat(parts: list[_Sessions]) -> _Sessions:
        return _Sessions(
            **{
                k: np.concatenate([getattr(p, k) for p in parts])
                for k in _Sessions.__dataclass_fields__
            }
        )


@dataclass
class _Pages:
    """One entry per page request of a human or robot session."""

    sess: np.ndarray
    step: np.ndarray
    page: np.ndarray
    url: np.ndarray
    ref_url: np.ndarray  # -1: external referrer of the session, -2: none
    status: np.ndarray
    ts: np.ndarray
    gap: np.ndarray  # microseconds until the next page (0 after the last)
    next_page: np.ndarray
    prev_page: np.ndarray
    logged_in: np.ndarray
    revenue: np.ndarray

    @classmethod
    def empty(cls) -> _Pages:
        """No pages, with the dtypes real pages have (so concatenation keeps them)."""
        dtypes = {"logged_in": bool, "revenue": np.float64, "status": np.int16}
        return cls(**{k: np.zeros(0, dtypes.get(k, np.int64)) for k in cls.__dataclass_fields__})

    @staticmethod
    def concat(parts: list[_Pages]) -> _Pages:
        return _Pages(
            **{
                k: np.concatenate([getattr(p, k) for p in parts])
                for k in _Pages.__dataclass_fields__
            }
        )


def _simulate_chunk(plan: _Plan, chunk: int, rng: Generator, pending: _Sessions):
    """Simulate one time window, trimmed to exactly its share of `n_events`.

    Returns the chunk's records, its sessions, and the follow-up visits that fall after the
    window (carried into later chunks).
    """
    base, extra = divmod(plan.n_events, plan.n_chunks)
    n_target = base + (chunk < extra)
    n_health = 0
    if "combined" in plan.formats:
        n_health = min(n_target - 1, max(2, round(n_target * _HEALTH_CHECK_SHARE)))
    budget = n_target - n_health
    q0, q1 = plan.window(chunk)
    window_end = int(plan.times_at(np.array([q1]))[0]) if q1 < 1 else plan.end_us
    # Follow-ups of earlier chunks that fall in this window, and those still later.
    in_window = pending.start < window_end
    carried, pending = (
        pending.take(np.flatnonzero(in_window)),
        pending.take(np.flatnonzero(~in_window)),
    )
    carried.group[:] = -1  # kept first: they were promised by earlier chunks
    n_sessions = int(budget / _expected_records_per_session(plan.formats) * 1.15) + 30
    while True:
        fresh = _new_sessions(plan, chunk, rng, n_sessions, q0, q1)
        sessions = _Sessions.concat([carried, fresh])
        pages = _walk(plan, rng, sessions)
        follow = _follow_ups(plan, rng, sessions)
        here = follow.start < window_end
        sessions = _Sessions.concat([sessions, follow.take(np.flatnonzero(here))])
        later = follow.take(np.flatnonzero(~here))
        n_before = len(sessions) - int(here.sum())
        pages = _Pages.concat([pages, _walk(plan, rng, sessions, first=n_before)])
        pages = _Pages.concat([pages, _crawl(plan, rng, sessions)])
        records = _records(plan, rng, sessions, pages)
        if len(records["ts"]) >= budget:
            break
        n_sessions = int(n_sessions * 1.5) + 30  # rare: an unlucky draw of short sessions
    records, kept_groups = _trim(records, sessions, budget)
    # Promise follow-ups only for buyers whose whole session (and so the purchase) was kept.
    later_keep = np.isin(later.group, kept_groups)
    pending = _Sessions.concat([pending, later.take(np.flatnonzero(later_keep))])
    records["health"] = _health_checks(plan, rng, chunk, n_health)
    return records, sessions, pending


def _new_sessions(
    plan: _Plan, chunk: int, rng: Generator, n: int, q0: float, q1: float
) -> _Sessions:
    """Fresh visits in the window: shoppers and robots, plus one stealth scraper in chunk 0."""
    kind = np.where(rng.random(n) < _BOT_SHARE, _BOT, _SHOPPER)
    if chunk == 0:
        kind[0] = _SCRAPER
    # Most visitors come once; regulars come back every few days (never many times a day, which
    # would make their visits overlap). Regulars have the low person ids.
    regular = rng.random(n) < _REGULAR_SESSION_SHARE
    n_regulars = plan.n_people - plan.n_one_off_people
    person = np.where(
        regular,
        rng.integers(0, n_regulars, n),
        n_regulars + rng.integers(0, plan.n_one_off_people, n),
    )
    slot = (rng.random(n) < 0.22).astype(np.int64)
    # Loyal customers log in right away, on whichever device: cross-device identities.
    loyal = person < max(1, n_regulars // 3)
    wants_login = rng.random(n) < np.where(loyal, 0.6, 0.04)
    loops = rng.random(n) < (_CART_LOOP_SHARE if "cart_loop" in plan.problems else 0.0)
    fmt = _draw(rng, plan.format_cdf, n)
    if chunk == 0:
        fmt[0] = 0  # the scraper shows in the first requested format (combined if asked)
    start = plan.times_at(q0 + (q1 - q0) * rng.random(n))
    return _Sessions.new(
        person=np.where(kind == _SHOPPER, person, -1),
        slot=slot,
        kind=kind.astype(np.int64),
        fmt=fmt.astype(np.int64),
        start=start,
        channel=_draw(rng, plan.channel_cdf, n).astype(np.int64),
        group=np.arange(n, dtype=np.int64),
        wants_login=wants_login,
        loops=loops,
    )


def _follow_ups(plan: _Plan, rng: Generator, sessions: _Sessions) -> _Sessions:
    """Buyers who come back within days for their order, a return or a question."""
    buyers = np.flatnonzero(
        sessions.converted & (rng.random(len(sessions)) < _FOLLOW_UP_PROBABILITY)
    )
    n = len(buyers)
    delay = rng.uniform(2 / 24, _FOLLOW_UP_MAX_DAYS, n) * 86_400_000_000
    start = sessions.end[buyers] + delay.astype(np.int64)
    keep = start < plan.end_us
    buyers, start, n = buyers[keep], start[keep], int(keep.sum())
    return _Sessions.new(
        person=sessions.person[buyers],
        # A third come back on their other device: the same user id on a second anonymous id.
        slot=np.where(rng.random(n) < 0.35, 1 - sessions.slot[buyers], sessions.slot[buyers]),
        kind=np.full(n, _SERVICE, np.int64),
        fmt=_draw(rng, plan.format_cdf, n).astype(np.int64),
        start=start,
        channel=np.zeros(n, np.int64),  # typed in or from a mail without tags: direct
        group=sessions.group[buyers],
        wants_login=np.ones(n, bool),
        loops=np.zeros(n, bool),
    )


def _walk(plan: _Plan, rng: Generator, sessions: _Sessions, first: int = 0) -> _Pages:
    """Walk every human session from `first` on through the shop, all sessions in lockstep.

    Sets `sessions.end` and `sessions.converted` for the sessions walked.
    """
    site = plan.site
    ids = first + np.flatnonzero(np.isin(sessions.kind[first:], (_SHOPPER, _SERVICE)))
    n = len(ids)
    kind = sessions.kind[ids]
    person, slot = sessions.person[ids], sessions.slot[ids]
    browser = _browser_family(plan, person, slot)
    hit_by_500 = (browser == plan.iphone_safari) & ("payment_5xx" in plan.problems)
    dead_share = _DEAD_SEARCH_SHARE if "search_dead_end" in plan.problems else 0.0
    page = np.where(
        kind == _SERVICE,
        _draw(rng, plan.service_landing_cdf, n),
        _draw_rows(rng, plan.landing_cdf[sessions.channel[ids]]),
    )
    ts = sessions.start[ids].copy()
    wants_login = sessions.wants_login[ids]
    loops = sessions.loops[ids]
    logged_in = np.zeros(n, bool)
    prev_page = np.full(n, -1, np.int32)
    prev_url = np.full(n, -1, np.int32)
    loop_left = np.zeros(n, np.int32)
    loop_started = np.zeros(n, bool)
    retried = np.zeros(n, bool)
    converted = np.zeros(n, bool)
    alive = np.arange(n)
    steps: list[_Pages] = []
    for step in range(_MAX_STEPS):
        if len(alive) == 0:
            break
        pg = page[alive]
        url = site.page_url[pg].copy()
        is_cat = pg == CATEGORY
        url[is_cat] = site.category_base + _draw(rng, site.category_cdf, int(is_cat.sum()))
        is_product = pg == PRODUCT
        url[is_product] = site.product_base + _draw(rng, site.product_cdf, int(is_product.sum()))
        is_search = pg == SEARCH
        n_search = int(is_search.sum())
        dead = rng.random(n_search) < dead_share
        term = np.where(
            dead,
            rng.integers(0, site.n_dead_terms, n_search),
            _draw(rng, site.term_cdf, n_search),
        )
        url[is_search] = np.where(dead, site.no_results_base, site.search_base) + term
        pg[np.flatnonzero(is_search)[dead]] = NO_RESULTS
        status = np.full(len(alive), 200, np.int16)
        status[is_product & (rng.random(len(alive)) < 0.004)] = 404  # a discontinued product
        at_payment = pg == PAYMENT
        status[at_payment & hit_by_500[alive]] = 500
        revenue = np.where(
            pg == CONFIRM, np.round(rng.lognormal(np.log(65), 0.6, len(alive)), 2), np.nan
        )
        converted[alive] |= pg == CONFIRM

        nxt = _draw_rows(rng, plan.moves_cdf[kind[alive], pg])
        nxt[(status == 404) & (nxt == CART)] = _EXIT  # nothing to put in the cart
        first_step = step == 0
        to_login = wants_login[alive] & (pg != LOGIN) & (nxt != _EXIT) & first_step
        nxt[to_login] = LOGIN
        from_checkout = (pg == LOGIN) & np.isin(prev_page[alive], (CART, SHIPPING))
        nxt[from_checkout & (rng.random(len(alive)) < 0.85)] = SHIPPING
        # cart_loop: cart -> shipping -> cart -> shipping -> cart ..., then gone.
        start_loop = (pg == CART) & loops[alive] & ~loop_started[alive]
        loop_left[alive[start_loop]] = 2 * rng.integers(2, 4, int(start_loop.sum()))
        loop_started[alive[start_loop]] = True
        left = loop_left[alive]
        in_loop = loop_started[alive] & (left > 0)
        nxt[in_loop] = np.where(pg[in_loop] == CART, SHIPPING, CART)
        loop_left[alive[in_loop]] -= 1
        nxt[loop_started[alive] & (left == 0)] = _EXIT
        # payment_5xx: after the 500 most leave; some retry once and then leave.
        failed = at_payment & (status == 500)
        retry = failed & ~retried[alive] & (rng.random(len(alive)) < _PAYMENT_RETRY_PROBABILITY)
        nxt[failed] = _EXIT
        nxt[retry] = PAYMENT
        retried[alive[retry]] = True
        if step == _MAX_STEPS - 1:
            nxt[:] = _EXIT

        gap = np.clip(rng.lognormal(np.log(_STEP_GAP_MEDIAN_S), 0.75, len(alive)), 4.0, 900.0)
        pause = (rng.random(len(alive)) < _LONG_PAUSE_PROBABILITY) & (step > 0)
        gap[pause] = rng.uniform(31 * 60, 150 * 60, int(pause.sum()))
        gap_us = (gap * 1e6).astype(np.int64) + rng.integers(0, 1000, len(alive))
        ends = nxt == _EXIT
        gap_us[ends] = 0
        steps.append(
            _Pages(
                sess=ids[alive],
                step=np.full(len(alive), step, np.int32),
                page=pg,
                url=url,
                ref_url=np.full(len(alive), -1, np.int32) if first_step else prev_url[alive],
                status=status,
                ts=ts[alive],
                gap=gap_us,
                next_page=nxt,
                prev_page=prev_page[alive],
                logged_in=logged_in[alive],
                revenue=revenue,
            )
        )
        logged_in[alive[pg == LOGIN]] = True
        sessions.end[ids[alive[ends]]] = ts[alive[ends]]
        ts[alive] += gap_us
        prev_page[alive] = pg
        prev_url[alive] = url
        page[alive] = nxt
        alive = alive[~ends]
    sessions.converted[ids] = converted
    return _Pages.concat(steps) if steps else _Pages.empty()


def _browser_family(plan: _Plan, person: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """A person's browser on their usual device (slot 0) and on their other one (slot 1)."""
    h = _mix(person, plan.seed * 3 + 1)
    u = (h >> np.uint64(11)).astype(np.float64) / 2.0**53
    usual = np.searchsorted(plan.browser_cdf, u, side="right")
    other_cdf = np.where(
        plan.browser_is_handheld[usual][:, None], plan.desktop_cdf, plan.handheld_cdf
    )
    u2 = (_mix(person, plan.seed * 3 + 2) >> np.uint64(11)).astype(np.float64) / 2.0**53
    other = (u2[:, None] >= other_cdf).sum(axis=1)
    return np.where(slot == 0, usual, other).astype(np.int32)


def _crawl(plan: _Plan, rng: Generator, sessions: _Sessions) -> _Pages:
    """Robots: crawlers fetch many product pages fast; the scraper fetches > 100 a minute."""
    site = plan.site
    ids = np.flatnonzero(np.isin(sessions.kind, (_BOT, _SCRAPER)))
    scraper = sessions.kind[ids] == _SCRAPER
    n_pages = np.where(scraper, rng.integers(160, 221, len(ids)), rng.integers(12, 70, len(ids)))
    sess = np.repeat(ids, n_pages)
    first = np.repeat(np.cumsum(n_pages) - n_pages, n_pages)
    step = (np.arange(len(sess)) - first).astype(np.int32)
    is_scraper = np.repeat(scraper, n_pages)
    gap_s = np.where(
        is_scraper, rng.uniform(0.25, 0.55, len(sess)), rng.uniform(0.6, 5.0, len(sess))
    )
    gap_us = (gap_s * 1e6).astype(np.int64)
    # Time since the crawl began: a running sum restarted at each session's first page.
    total = np.cumsum(gap_us)
    starts = np.cumsum(n_pages) - n_pages
    before = np.repeat(total[starts] - gap_us[starts], n_pages) if len(sess) else total
    ts = sessions.start[sess] + total - gap_us - before
    # Crawlers mostly want product pages; the scraper walks the catalogue in order.
    u = rng.random(len(sess))
    url = np.where(
        u < 0.8,
        site.product_base + _draw(rng, site.product_cdf, len(sess)),
        np.where(
            u < 0.95,
            site.category_base + _draw(rng, site.category_cdf, len(sess)),
            site.page_url[HOME],
        ),
    ).astype(np.int32)
    walk_start = rng.integers(0, _N_PRODUCTS, len(ids))
    product_id = (np.repeat(walk_start, n_pages) + step) % _N_PRODUCTS
    scraped = site.product_base + site.product_rank_by_id[product_id]
    url = np.where(is_scraper, scraped, url).astype(np.int32)
    status = np.where(rng.random(len(sess)) < 0.03, 404, 200).astype(np.int16)
    gap_us = np.append(gap_us[1:], 0)
    gap_us[np.cumsum(n_pages) - 1] = 0
    page = np.where(url >= site.product_base, PRODUCT, CATEGORY)
    page = np.where(url == site.page_url[HOME], HOME, page).astype(np.int32)
    z = np.zeros(len(sess), np.int32)
    return _Pages(
        sess=sess,
        step=step,
        page=page,
        url=url,
        ref_url=z - 2,
        status=status,
        ts=ts,
        gap=gap_us,
        next_page=z,
        prev_page=z,
        logged_in=z.astype(bool),
        revenue=np.full(len(sess), np.nan),
    )


def _records(
    plan: _Plan, rng: Generator, sessions: _Sessions, pages: _Pages
) -> dict[str, np.ndarray]:
    """Expand page requests into lines: assets for access logs, extra events for event formats."""
    site = plan.site
    access = plan.is_access_format[sessions.fmt[pages.sess]]
    human = np.isin(sessions.kind[pages.sess], (_SHOPPER, _SERVICE))
    n = len(pages.sess)
    cols = {
        "sess": pages.sess,
        "ts": pages.ts,
        "etype": np.zeros(n, np.int8),
        "url": pages.url,
        "landing": (pages.step == 0) & human,
        "ref_url": pages.ref_url,
        "ref_landing": (pages.step == 1) & human,
        "status": pages.status,
        "bytes": rng.integers(14_000, 96_000, n).astype(np.int32),
        "logged_in": pages.logged_in,
        "revenue": np.full(n, np.nan),
        "order": pages.step.astype(np.int32) * 8,
    }
    parts = [cols]

    # Static assets after each human page view in the access logs: everything on the first
    # page, later only what the browser revalidates (304) and the product image.
    a = np.flatnonzero(access & human)
    first = pages.step[a] == 0
    product = pages.page[a] == PRODUCT
    wants = np.stack(
        [
            first | (rng.random(len(a)) < 0.35),
            first | (rng.random(len(a)) < 0.35),
            first,
            product,
        ],
        axis=1,
    )
    row, which = np.nonzero(wants)
    src = a[row]
    asset_url = np.array([site.asset_js, site.asset_css, site.asset_favicon, 0])[which]
    asset_url = np.where(
        which == 3, site.image_base + pages.url[src] - site.product_base, asset_url
    ).astype(np.int32)
    revalidated = (which < 2) & (pages.step[src] > 0)
    size = np.array([84_211, 23_114, 1_150, 0])[which]
    size = np.where(which == 3, rng.integers(18_000, 90_000, len(src)), size)
    parts.append(
        {
            "sess": pages.sess[src],
            "ts": pages.ts[src] + (which + 1) * rng.integers(40_000, 300_000, len(src)),
            "etype": np.full(len(src), _ASSET, np.int8),
            "url": asset_url,
            "landing": np.zeros(len(src), bool),
            "ref_url": pages.url[src],
            "ref_landing": (pages.step[src] == 0),
            "status": np.where(revalidated, 304, 200).astype(np.int16),
            "bytes": np.where(revalidated, -1, size).astype(np.int32),
            "logged_in": pages.logged_in[src],
            "revenue": np.full(len(src), np.nan),
            "order": pages.step[src] * 8 + 1 + which,
        }
    )

    # The tracker's events besides page views.
    e = np.flatnonzero(~access & human)
    pg, nxt = pages.page[e], pages.next_page[e]
    specs = (
        (_SEARCH_EVENT, np.isin(pg, (SEARCH, NO_RESULTS)), 0.05),
        (_ADD_TO_CART, (pg == PRODUCT) & (nxt == CART), 0.6),
        (_LOGIN_EVENT, (pg == LOGIN) & (nxt != _EXIT), 0.5),
        (_BEGIN_CHECKOUT, (pg == SHIPPING) & (pages.prev_page[e] == CART), 0.05),
        (_PAYMENT_INFO, (pg == PAYMENT) & (nxt == CONFIRM), 0.7),
        (_PURCHASE, pg == CONFIRM, 0.02),
    )
    for etype, mask, at in specs:
        src = e[mask]
        # Events with no next page are placed a moment after their page view.
        delay = np.where(pages.gap[src] > 0, (pages.gap[src] * at).astype(np.int64), 0)
        delay = np.maximum(delay, rng.integers(150_000, 900_000, len(src)))
        parts.append(
            {
                "sess": pages.sess[src],
                "ts": pages.ts[src] + delay,
                "etype": np.full(len(src), etype, np.int8),
                "url": pages.url[src],
                "landing": (pages.step[src] == 0),
                "ref_url": pages.ref_url[src],
                "ref_landing": pages.step[src] == 1,
                "status": pages.status[src],
                "bytes": np.zeros(len(src), np.int32),
                "logged_in": pages.logged_in[src] | (etype == _LOGIN_EVENT),
                "revenue": pages.revenue[src] if etype == _PURCHASE else np.full(len(src), np.nan),
                "order": pages.step[src] * 8 + 1 + etype,
            }
        )
    return {k: np.concatenate([p[k] for p in parts]) for k in cols}


def _trim(records: dict[str, np.ndarray], sessions: _Sessions, budget: int):
    """Keep exactly `budget` records: whole sessions in group order, the last one cut short."""
    group = sessions.group[records["sess"]]
    order = np.lexsort((records["order"], records["sess"], group))
    keep = order[:budget]
    keep.sort()
    last_group = group[order[budget - 1]]
    whole = np.unique(group[order[:budget]])
    if budget < len(order) and group[order[budget]] == last_group:
        whole = whole[whole != last_group]
    return {k: v[keep] for k, v in records.items()}, whole


def _health_checks(plan: _Plan, rng: Generator, chunk: int, n: int) -> np.ndarray:
    """Timestamps of the load balancer's probes: evenly spread, at most one per second."""
    if n == 0:
        return np.zeros(0, np.int64)
    q0, q1 = plan.window(chunk)
    t0, t1 = plan.times_at(np.array([q0, q1]))
    if q1 >= 1:
        t1 = plan.end_us
    spacing = max(2_000_000, (t1 - t0) // n)
    return t0 + np.arange(n) * spacing + rng.integers(0, spacing // 4, n)


# ---------------------------------------------------------------------------------------------
# Turning records into lines and files.


class _GzipMember:
    """One gzip member, deflated in parallel pieces (the pigz layout) to keep 100M runs fast.

    Each piece is deflated on its own and ends on a byte boundary (sync flush), the member's last
    piece with the final block; readers see one ordinary deflate stream. The header carries no
    name and mtime 0, so the bytes depend on the data alone.
    """

    def __init__(self, file, pool: ThreadPoolExecutor, level: int):
        self._file, self._pool, self._level = file, pool, level
        self._crc = self._size = 0
        self._file.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")

    def write(self, data: bytes, *, last: bool) -> None:
        pieces = [data[i : i + _GZIP_PIECE_BYTES] for i in range(0, len(data), _GZIP_PIECE_BYTES)]
        pieces = pieces or [b""]
        finals = [last and i == len(pieces) - 1 for i in range(len(pieces))]
        # zlib releases the GIL while deflating, so the pieces compress on all cores.
        for deflated in self._pool.map(_deflate, pieces, finals, [self._level] * len(pieces)):
            self._file.write(deflated)
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        if last:
            self._file.write(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))


def _deflate(piece: bytes, final: bool, level: int) -> bytes:
    deflater = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return deflater.compress(piece) + deflater.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)


class _FormatWriter:
    """Appends one format's chunks to its file and counts what went in."""

    def __init__(self, fmt: str, path: Path, plan: _Plan, pool: ThreadPoolExecutor):
        self.fmt, self.path, self.n_chunks, self._pool = fmt, path, plan.n_chunks, pool
        small = plan.n_events <= _SMALL_SAMPLE_EVENTS
        self._gzip_level = _GZIP_LEVEL_SMALL if small else _GZIP_LEVEL_LARGE
        self.n_events = self.n_malformed = self.n_duplicates = 0
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._gzip: _GzipMember | None = None
        self._parquet: pq.ParquetWriter | None = None
        if fmt == "csv":
            self._file.write((",".join(EXPORT_COLUMNS.values()) + "\n").encode())

    def write_lines(self, chunk: int, lines: pl.Series) -> None:
        data = _encode_lines(lines)
        if self.fmt != "combined":
            self._file.write(data)
            return
        # Two gzip members, like a log rotated by `cat old.gz new.gz`: readers must not stop
        # after the first. A single chunk is split at its middle line.
        if self.n_chunks == 1:
            half = len(data) // 2
            newline = bytes(data[half : half + 65536]).find(b"\n")
            middle = len(data) if newline < 0 else half + newline + 1
            self._member().write(data[:middle], last=True)
            self._gzip = None
            self._member().write(data[middle:], last=True)
            return
        last = chunk in (self.n_chunks // 2 - 1, self.n_chunks - 1)
        self._member().write(data, last=last)
        if last:
            self._gzip = None

    def _member(self) -> _GzipMember:
        if self._gzip is None:
            self._gzip = _GzipMember(self._file, self._pool, self._gzip_level)
        return self._gzip

    def write_table(self, table: pa.Table) -> None:
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self._file, table.schema, compression="zstd")
        self._parquet.write_table(table)

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        self._file.close()


def _write_chunk(
    plan: _Plan,
    chunk: int,
    rng: Generator,
    records: dict[str, np.ndarray],
    sessions: _Sessions,
    writers: dict[str, _FormatWriter],
) -> None:
    """Format one chunk's records for every requested format and append them to the files."""
    frame = _record_frame(plan, rng, records, sessions)
    for f, writer in writers.items():
        part = frame.filter(pl.col("fmt") == plan.formats.index(f))
        if f == "parquet":
            valid = _export_frame(part)
            bad = _malformed_export_rows(rng, valid)
            table, n_distinct, n_dup = _arrange(rng, valid, bad)
            writer.write_table(table.to_arrow())
            n_bad = len(bad)
        else:
            if f == "combined":
                valid = _access_lines(plan, part, with_agent=True)
                valid = _with_health_checks(plan, valid, records["health"])
                bad = _malformed_access_lines(rng, valid)
            elif f == "common":
                valid = _access_lines(plan, part, with_agent=False)
                bad = _malformed_access_lines(rng, valid)
            elif f == "ndjson":
                valid = _ndjson_lines(plan, rng, part)
                bad = _malformed_ndjson_lines(rng, valid)
            else:
                valid = _csv_lines(_export_frame(part))
                bad = _malformed_csv_lines(rng, valid)
            lines, n_distinct, n_dup = _arrange(rng, valid, bad)
            writer.write_lines(chunk, lines)
            n_bad = len(bad)
        writer.n_events += n_distinct
        writer.n_duplicates += n_dup
        writer.n_malformed += n_bad


def _planted_duplicates(n_valid: int) -> int:
    return round(n_valid * _DUPLICATE_SHARE)


def _record_frame(
    plan: _Plan, rng: Generator, records: dict[str, np.ndarray], sessions: _Sessions
) -> pl.DataFrame:
    """All records of a chunk in time order, with the session columns every format needs."""
    order = np.lexsort((records["order"], records["sess"], records["ts"]))
    rec = {k: v[order] for k, v in records.items() if k != "health"}
    sess = rec["sess"]
    ident = _identities(plan, rng, sessions)
    site = plan.site
    path = site.urls.gather(rec["url"])
    query = ident["landing_query"].gather(sess)
    ref_url = rec["ref_url"]
    internal = ref_url >= 0
    ref_path = site.urls.gather(np.where(internal, ref_url, 0))
    channel_ref = ident["channel_referrer"].gather(sess)
    frame = pl.DataFrame(
        {
            "ts": rec["ts"],
            "fmt": sessions.fmt[sess].astype(np.int8),
            "etype": rec["etype"],
            "path": path,
            "query": query,
            "has_query": site.has_query[rec["url"]],
            "landing": rec["landing"],
            "internal": internal,
            "no_ref": ref_url == -2,
            "ref_path": ref_path,
            "ref_has_query": site.has_query[np.where(internal, ref_url, 0)],
            "ref_landing": rec["ref_landing"],
            "channel_ref": channel_ref,
            "status": rec["status"],
            "bytes": rec["bytes"],
            "revenue": rec["revenue"],
            "ua": ident["ua"].gather(sess),
            "ip": ident["ip"].gather(sess),
            "anonymous_id": ident["anonymous_id"].gather(sess),
            "user_id": ident["user_id"].gather(sess),
            "logged_in": rec["logged_in"],
            "protocol": ident["protocol"].gather(sess),
            "ts_style": ident["ts_style"][sess],
            "offset_s": plan.offset_s(rec["ts"]),
        }
    )
    return frame.with_columns(
        # The user id shows from the login on, never before it.
        user_id=pl.when(pl.col("logged_in")).then("user_id"),
        url=pl.when(pl.col("landing") & pl.col("query").is_not_null())
        .then(pl.concat_str("path", _query_separator("has_query"), "query"))
        .otherwise("path"),
        referrer=pl.when(pl.col("internal"))
        .then(
            pl.concat_str(
                pl.lit(f"https://{HOST}"),
                "ref_path",
                pl.when(pl.col("ref_landing") & pl.col("query").is_not_null())
                .then(pl.concat_str(_query_separator("ref_has_query"), "query"))
                .otherwise(pl.lit("")),
            )
        )
        .when(pl.col("no_ref"))
        .then(pl.lit(None, pl.String))
        .otherwise("channel_ref"),
    ).drop(
        "path",
        "query",
        "has_query",
        "ref_path",
        "ref_has_query",
        "channel_ref",
        "internal",
        "no_ref",
        "logged_in",
    )


def _query_separator(has_query: str) -> pl.Expr:
    return pl.when(pl.col(has_query)).then(pl.lit("&")).otherwise(pl.lit("?"))


def _identities(plan: _Plan, rng: Generator, sessions: _Sessions) -> dict:
    """Per session: user agent, IP, anonymous id, user id, landing query, referrer, habits."""
    n = len(sessions)
    kind = sessions.kind
    human = np.isin(kind, (_SHOPPER, _SERVICE))
    person = np.maximum(sessions.person, 0)
    device = person * 2 + sessions.slot
    salt = plan.seed * 1000
    # Humans: everything about a device is a hash of (person, device), stable across chunks.
    browser = _browser_family(plan, person, sessions.slot)
    h_dev = _mix(device, salt + 1)
    variant = (h_dev % plan.browser_ua_count[browser].astype(np.uint64)).astype(np.int64)
    ua = plan.browser_ua_base[browser] + variant
    h_ip = _mix(device, salt + 2)
    octets = [
        np.array(_PUBLIC_FIRST_OCTETS)[(h_ip % np.uint64(len(_PUBLIC_FIRST_OCTETS))).astype(int)],
        ((h_ip >> np.uint64(8)) & np.uint64(255)).astype(np.int64),
        ((h_ip >> np.uint64(16)) & np.uint64(255)).astype(np.int64),
        1 + ((h_ip >> np.uint64(24)) % np.uint64(254)).astype(np.int64),
    ]
    # Robots: a fresh network address per crawl, from the crawler's own network.
    robot = ~human
    session_key = sessions.start.astype(np.uint64) ^ _mix(np.arange(n), salt + 3)
    h_bot = _mix(session_key, salt + 4)
    crawler = np.searchsorted(plan.crawler_cdf, rng.random(n), side="right")
    in_event_stream = ~plan.is_access_format[sessions.fmt]
    ua = np.where(robot, plan.crawler_ua_base + crawler, ua)
    ua = np.where(robot & in_event_stream, plan.headless_ua, ua)
    ua = np.where(kind == _SCRAPER, plan.scraper_ua, ua)
    nets = np.array([c[1] for c in _CRAWLERS])[crawler]
    octets[0] = np.where(robot, nets[:, 0], octets[0])
    octets[1] = np.where(robot, nets[:, 1], octets[1])
    octets[2] = np.where(robot, (h_bot & np.uint64(63)).astype(np.int64), octets[2])
    octets[3] = np.where(
        robot, 1 + ((h_bot >> np.uint64(8)) % np.uint64(254)).astype(np.int64), octets[3]
    )
    ip = (
        pl.DataFrame({f"o{i}": o.astype(np.int64) for i, o in enumerate(octets)})
        .with_columns(scraper=kind == _SCRAPER)
        .select(
            pl.when("scraper")
            .then(pl.lit(_SCRAPER_IP))
            .otherwise(pl.concat_str(pl.col("o0", "o1", "o2", "o3"), separator="."))
        )
        .to_series()
    )
    anon_key = np.where(human, _mix(device, salt + 5), h_bot)
    hexes = _hex(anon_key)
    hexes2 = _hex(_mix(anon_key, salt + 6))
    anonymous_id = pl.select(
        pl.concat_str(
            hexes.str.slice(0, 8),
            pl.lit("-"),
            hexes.str.slice(8, 4),
            pl.lit("-4"),
            hexes.str.slice(12, 3),
            pl.lit("-a"),
            hexes2.str.slice(0, 3),
            pl.lit("-"),
            hexes2.str.slice(3, 12),
        )
    ).to_series()
    user_id = pl.select(
        pl.when(pl.Series(human))
        .then(pl.lit("u") + pl.Series(100_000 + person).cast(pl.String))
        .otherwise(pl.lit(None, pl.String))
    ).to_series()
    return {
        "ua": plan.ua_table.gather(ua),
        "ip": ip,
        "anonymous_id": anonymous_id,
        "user_id": user_id,
        "protocol": pl.Series(["HTTP/1.1", "HTTP/2.0"]).gather(
            ((h_dev >> np.uint64(40)) % np.uint64(5) < 2).astype(np.int64)
        ),
        # How the client writes timestamps: Z with or without millis, local, US server, +00:00.
        "ts_style": ((h_dev >> np.uint64(44)) % np.uint64(5)).astype(np.int8),
        "landing_query": _landing_queries(plan, rng, sessions),
        "channel_referrer": pl.Series([c[2] for c in _CHANNELS], dtype=pl.String).gather(
            sessions.channel
        ),
    }


def _landing_queries(plan: _Plan, rng: Generator, sessions: _Sessions) -> pl.Series:
    """Campaign tags on landing URLs, sometimes with personal data the pipeline must scrub."""
    n = len(sessions)
    names = [c[0] for c in _CHANNELS]
    channel = pl.Series([names[i] for i in range(len(names))]).gather(sessions.channel)
    token = _hex(_mix(sessions.start.astype(np.uint64), plan.seed + 77))
    first = pl.Series(_FIRST_NAMES).gather(rng.integers(0, len(_FIRST_NAMES), n))
    last = pl.Series(_SURNAMES).gather(rng.integers(0, len(_SURNAMES), n))
    with_email = pl.Series(rng.random(n) < 0.35)
    campaign = pl.Series(["black-friday", "brand", "autumn-sale"]).gather(rng.integers(0, 3, n))
    paid = pl.Series(rng.random(n) < 0.5)
    df = pl.DataFrame(
        {
            "channel": channel,
            "token": token,
            "first": first,
            "last": last,
            "with_email": with_email,
            "campaign": campaign,
            "paid": paid,
        }
    )
    c = pl.col("channel")
    newsletter = "utm_source=newsletter&utm_medium=email&utm_campaign=black-friday"
    return df.select(
        pl.when(c == "google_cpc")
        .then(
            pl.concat_str(
                pl.lit("utm_source=google&utm_medium=cpc&utm_campaign="),
                "campaign",
                pl.lit("&gclid=Cj0KCQjw"),
                "token",
            )
        )
        .when((c == "facebook") & pl.col("paid"))
        .then(
            pl.concat_str(
                pl.lit("utm_source=facebook&utm_medium=paid_social&utm_campaign="),
                "campaign",
                pl.lit("&fbclid=IwAR"),
                "token",
            )
        )
        .when((c == "newsletter") & pl.col("with_email"))
        .then(
            pl.concat_str(
                pl.lit("email="),
                "first",
                pl.lit("."),
                "last",
                pl.lit("%40example.com&" + newsletter),
            )
        )
        .when(c == "newsletter")
        .then(pl.lit(newsletter))
        .when(c == "partner")
        .then(pl.lit("utm_source=partner&utm_medium=affiliate&utm_campaign=deals"))
        .when(c == "reset_link")
        .then(pl.concat_str(pl.lit("token="), pl.col("token").str.slice(0, 12)))
        .otherwise(pl.lit(None, pl.String))
    ).to_series()


def _offset_text(offset_s: pl.Expr, plan: _Plan, *, colon: bool) -> pl.Expr:
    """`+0200` (or `+02:00`) from an offset in seconds: a lookup, as there are only a few."""
    text = {}
    for offset in {*plan.hour_offset_s.tolist(), 0, _US_CLIENT_OFFSET_S}:
        hours, minutes = divmod(abs(offset) // 60, 60)
        sign = "-" if offset < 0 else "+"
        text[offset] = f"{sign}{hours:02d}{':' if colon else ''}{minutes:02d}"
    return offset_s.replace_strict(text, return_dtype=pl.String)


def _access_lines(plan: _Plan, part: pl.DataFrame, *, with_agent: bool) -> pl.DataFrame:
    """Apache/Nginx log lines (combined, or common without referrer and agent) with their ts."""
    local = pl.from_epoch(pl.col("ts") + pl.col("offset_s") * 1_000_000, time_unit="us")
    fields = [
        pl.col("ip"),
        pl.lit(" - "),
        pl.col("user_id").fill_null("-"),
        pl.lit(" ["),
        local.dt.strftime("%d/%b/%Y:%H:%M:%S"),
        pl.lit(" "),
        _offset_text(pl.col("offset_s"), plan, colon=False),
        pl.lit('] "GET '),
        pl.col("url"),
        pl.lit(" "),
        pl.col("protocol"),
        pl.lit('" '),
        pl.col("status").cast(pl.String),
        pl.lit(" "),
        pl.when(pl.col("bytes") < 0).then(pl.lit("-")).otherwise(pl.col("bytes").cast(pl.String)),
    ]
    if with_agent:
        fields += [
            pl.lit(' "'),
            pl.col("referrer").fill_null("-"),
            pl.lit('" "'),
            pl.col("ua"),
            pl.lit('"'),
        ]
    return part.select("ts", line=pl.concat_str(fields))


def _with_health_checks(plan: _Plan, lines: pl.DataFrame, ts: np.ndarray) -> pl.DataFrame:
    """The load balancer's probes, merged into the log lines in time order."""
    if len(ts) == 0:
        return lines
    offset = plan.offset_s(ts)
    probes = pl.DataFrame(
        {"ts": ts, "offset_s": offset, "ip": pl.Series(_HEALTH_IPS).gather(np.arange(len(ts)) % 2)}
    )
    local = pl.from_epoch(pl.col("ts") + pl.col("offset_s") * 1_000_000, time_unit="us")
    probes = probes.select(
        "ts",
        line=pl.concat_str(
            pl.col("ip"),
            pl.lit(" - - ["),
            local.dt.strftime("%d/%b/%Y:%H:%M:%S"),
            pl.lit(" "),
            _offset_text(pl.col("offset_s"), plan, colon=False),
            pl.lit(f'] "GET /healthz HTTP/1.1" 200 2 "-" "{_HEALTH_UA}"'),
        ),
    )
    return pl.concat([lines, probes]).sort("ts", maintain_order=True)


def _ndjson_lines(plan: _Plan, rng: Generator, part: pl.DataFrame) -> pl.DataFrame:
    """Tracker events, one JSON object per line, with client-chosen timestamp styles."""
    n = len(part)
    # Browsers report the full URL, some with mixed-case host and a fragment; others a path.
    host = pl.Series(
        ["https://shop.example.com", "https://Shop.Example.com", "https://SHOP.example.com"]
    ).gather(rng.integers(0, 3, n))
    full = pl.Series(rng.random(n) < 0.3)
    fragment = pl.Series(["", "#reviews"]).gather((rng.random(n) < 0.15).astype(np.int64))
    status_text = pl.Series(rng.random(n) < 0.002)  # a client that sends status as text
    style = pl.col("ts_style")
    # 0: Z with millis, 1: Z, 2: server local with millis, 3: -05:00, 4: +00:00 with micros
    offset_s = (
        pl.when(style == 2)
        .then(pl.col("offset_s"))
        .when(style == 3)
        .then(pl.lit(_US_CLIENT_OFFSET_S))
        .otherwise(pl.lit(0))
    )
    local = pl.from_epoch(pl.col("ts") + offset_s * 1_000_000, time_unit="us")
    millis = (pl.col("ts") // 1000 % 1000).cast(pl.String).str.zfill(3)
    micros = (pl.col("ts") % 1_000_000).cast(pl.String).str.zfill(6)
    ts_text = pl.concat_str(
        local.dt.strftime("%Y-%m-%dT%H:%M:%S"),
        pl.when(style.is_in([0, 2]))
        .then(pl.lit(".") + millis)
        .when(style == 4)
        .then(pl.lit(".") + micros)
        .otherwise(pl.lit("")),
        pl.when(style < 2)
        .then(pl.lit("Z"))
        .when(style == 4)
        .then(pl.lit("+00:00"))
        .otherwise(_offset_text(offset_s, plan, colon=True)),
    )
    locale = "nl-NL" if plan.url_scheme == "nl" else "en-GB"
    event = pl.struct(
        pl.col("anonymous_id"),
        pl.col("user_id"),
        ts_text.alias("ts"),
        _event_type().alias("event_type"),
        pl.when(pl.col("full"))
        .then(pl.concat_str("host", "url", "fragment"))
        .otherwise("url")
        .alias("url"),
        pl.col("referrer"),
        pl.col("ua").alias("user_agent"),
        pl.col("status"),
        pl.col("revenue").fill_nan(None),
        pl.struct(pl.lit(locale).alias("locale")).alias("context"),
        pl.lit(2).alias("schema_version"),
    ).struct.json_encode()
    lines = part.with_columns(host=host, full=full, fragment=fragment, status_text=status_text)
    return lines.select(
        "ts",
        line=pl.when(pl.col("status_text"))
        .then(event.str.replace(r'"status":\d+', '"status":"abc"'))
        .otherwise(event),
    )


def _event_type() -> pl.Expr:
    return pl.col("etype").replace_strict(dict(enumerate(_EVENT_TYPES)), return_dtype=pl.String)


def _export_frame(part: pl.DataFrame) -> pl.DataFrame:
    """The vendor export's rows: its own column names, epoch milliseconds, full URLs."""
    return part.select(
        pl.col("ts"),
        pl.col("anonymous_id").alias("visitor"),
        pl.col("user_id").alias("uid"),
        (pl.col("ts") // 1000).alias("when"),
        _event_type().alias("action"),
        (pl.lit(f"https://{HOST}") + pl.col("url")).alias("page"),
        pl.col("referrer").alias("ref"),
        pl.col("ua"),
        pl.col("status").cast(pl.Int32).alias("http_status"),
        pl.col("revenue").fill_nan(None).alias("amount"),
    )


def _csv_field(name: str) -> pl.Expr:
    text = pl.col(name).cast(pl.String)
    needs_quotes = text.str.contains(r'[,"\n]')
    quoted = pl.concat_str(pl.lit('"'), text.str.replace_all('"', '""', literal=True), pl.lit('"'))
    return pl.when(needs_quotes).then(quoted).otherwise(text).fill_null("")


def _csv_lines(export: pl.DataFrame) -> pl.DataFrame:
    return export.select(
        "ts", line=pl.concat_str([_csv_field(c) for c in EXPORT_COLUMNS.values()], separator=",")
    )


# ---------------------------------------------------------------------------------------------
# Disorder, duplicates and malformed lines.


def _pick(rng: Generator, n_valid: int, n_kinds: int) -> tuple[np.ndarray, np.ndarray]:
    """Source rows and a kind for each malformed line: every kind at least once."""
    if n_valid == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    n = max(n_kinds, round(n_valid * _MALFORMED_SHARE))
    src = rng.choice(n_valid, size=min(n, n_valid), replace=False)
    kind = rng.permutation(np.arange(len(src)) % n_kinds)
    return src, kind


def _by_kind(variants: list[pl.Expr]) -> pl.Expr:
    """The k-th variant for rows whose `kind` column is k."""
    expr = variants[-1]
    for k in range(len(variants) - 2, -1, -1):
        expr = pl.when(pl.col("kind") == k).then(variants[k]).otherwise(expr)
    return expr


def _garbage(rng: Generator, n: int) -> pl.Series:
    """Text that is no record at all, each line different."""
    token = _hex(rng.integers(0, 2**64, n, dtype=np.uint64))
    prefix = pl.Series(
        [
            "nginx: [warn] 1024 worker_connections exceed open file resource limit: 1024 #",
            "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            "<html><head><title>502 Bad Gateway</title></head> ",
            "Killed process 4242 (php-fpm) total-vm:812340kB ",
        ]
    ).gather(rng.integers(0, 4, n))
    return prefix + token


_LINE = pl.col("line")
_GARBAGE = pl.col("garbage")


def _broken_lines(rng: Generator, valid: pl.DataFrame, variants: list[pl.Expr]) -> pl.Series:
    """One broken line per picked valid one (so none repeats), spread over `variants`, which
    rewrite `line` or use `garbage` (text that is no record at all)."""
    src, kind = _pick(rng, len(valid), len(variants))
    picked = valid[src].with_columns(kind=pl.Series(kind), garbage=_garbage(rng, len(src)))
    return picked.select(_by_kind(variants)).to_series()


def _malformed_access_lines(rng: Generator, valid: pl.DataFrame) -> pl.Series:
    """Broken access-log lines."""
    return _broken_lines(
        rng,
        valid,
        [
            # cut off mid-request, as when the disk filled up
            _LINE.str.slice(0, _LINE.str.find(" HTTP/") - 3),
            _GARBAGE,
            _LINE.str.replace(r"\[\d{2}/[A-Za-z]{3}/\d{4}", "[31/Feb/2026"),
            _LINE.str.replace('"GET /', f'"GET /{_BAD_UTF8_MARK}', literal=True),
            _LINE.str.replace('"GET /', '"GET ', literal=True),
        ],
    )


def _malformed_ndjson_lines(rng: Generator, valid: pl.DataFrame) -> pl.Series:
    """Broken NDJSON lines."""
    return _broken_lines(
        rng,
        valid,
        [
            _LINE.str.slice(0, _LINE.str.len_chars() * 2 // 3),  # invalid JSON
            _GARBAGE,
            _LINE.str.replace(r'"ts":"\d{4}-\d{2}-\d{2}', '"ts":"2026-02-30'),
            _LINE.str.replace('"url":"', f'"url":"{_BAD_UTF8_MARK}', literal=True),
            # a required field with the wrong JSON type
            _LINE.str.replace(r'"url":"[^"]*"', '"url":123'),
        ],
    )


def _malformed_csv_lines(rng: Generator, valid: pl.DataFrame) -> pl.Series:
    """Broken CSV rows."""
    return _broken_lines(
        rng,
        valid,
        [
            _LINE.str.replace(r",[^,]*$", ""),  # a field short
            _LINE.str.replace_all('"', "", literal=True) + ",extra",  # unquoted commas: too many
            _GARBAGE,
            _LINE.str.replace(r"^([^,]*,[^,]*,)\d+", "${1}2026-02-30 10:00:00"),
            _LINE.str.replace("https://", f"https://{_BAD_UTF8_MARK}", literal=True),
        ],
    )


def _malformed_export_rows(rng: Generator, valid: pl.DataFrame) -> pl.DataFrame:
    """Parquet holds no broken lines: rows with a null visitor or an impossible `when`."""
    src, kind = _pick(rng, len(valid), 3)
    picked = valid[src].with_columns(kind=pl.Series(kind))
    far_future = 7_258_118_400_000  # the year 2200
    return picked.with_columns(
        visitor=pl.when(pl.col("kind") == 0).then(pl.lit(None, pl.String)).otherwise("visitor"),
        when=pl.when(pl.col("kind") == 1)
        .then(-pl.col("when"))
        .when(pl.col("kind") == 2)
        .then(pl.lit(far_future) + pl.col("when") % 1000)
        .otherwise("when"),
    ).drop("kind")


def _arrange(rng: Generator, valid: pl.DataFrame, bad: pl.Series | pl.DataFrame):
    """Valid rows in time order with a few moved, duplicates shortly after, malformed anywhere.

    Returns the arranged lines (or export rows), the number of distinct well-formed ones and the
    number of repeated ones.
    """
    n = len(valid)
    key = np.arange(n, dtype=np.float64)
    moved = rng.random(n) < _DISORDER_SHARE
    key[moved] += rng.integers(-40, 41, int(moved.sum())) + 0.5
    dup = (
        rng.choice(n, size=min(n, _planted_duplicates(n)), replace=False) if n else np.zeros(0, int)
    )
    dup_key = key[dup] + rng.uniform(0.1, 30.0, len(dup))
    bad_key = rng.uniform(0, max(n, 1), len(bad))
    order = np.argsort(np.concatenate([key, dup_key, bad_key]), kind="stable")
    if isinstance(bad, pl.Series):
        rows = pl.concat([valid["line"], valid["line"].gather(dup), bad.rename("line")])
        good = pl.concat([valid["line"], valid["line"].gather(dup)])
    else:
        body = valid.drop("ts")
        rows = pl.concat([body, body[dup], bad.drop("ts")])
        good = pl.concat([body, body[dup]])
    # Two generated lines can coincide by chance: they count as a duplicate, not as two events.
    n_distinct = good.n_unique()
    return rows[order], n_distinct, len(good) - n_distinct


def _encode_lines(lines: pl.Series) -> memoryview:
    """The file bytes of `lines`, one per line.

    Polars strings are valid UTF-8, so a line meant to carry invalid bytes holds a two-byte
    marker instead, overwritten in place here by the bytes ``ff fe``.
    """
    buffer = io.BytesIO()
    pl.DataFrame({"line": lines}).write_csv(buffer, include_header=False, quote_style="never")
    data = buffer.getbuffer()
    marker_at = lines.str.find(_BAD_UTF8_MARK, literal=True)
    marked = marker_at.is_not_null().to_numpy()
    if marked.any():
        line_bytes = lines.str.len_bytes().fill_null(0).to_numpy().astype(np.int64) + 1
        line_start = np.cumsum(line_bytes) - line_bytes
        at = line_start[marked] + marker_at.fill_null(0).to_numpy()[marked]
        raw = np.frombuffer(data, dtype=np.uint8)
        raw[at], raw[at + 1] = _BAD_UTF8_BYTES
    return data
