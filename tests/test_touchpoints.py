"""Unit tests of `pipeline.touchpoints`: one rule per test, tiny inline step frames.

Every expected touchpoint and stage is written out by hand from the rules in the docstring.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipeline import sample
from pipeline.config import Config, TouchpointRule, config_from_dict
from pipeline.touchpoints import (
    DEFAULT_RULES,
    STAGES,
    SUGGESTIONS_SCHEMA,
    assign_touchpoints,
    effective_rules,
    suggest_rules,
    url_template,
)

DEFAULT_NAMES = {rule.name for rule in DEFAULT_RULES}


def steps(*rows: tuple) -> pl.LazyFrame:
    """Session steps from (url, event_type, status) rows: the columns touchpoints read."""
    return pl.LazyFrame(
        [(f"s{i}", i, url, event, status, False) for i, (url, event, status) in enumerate(rows)],
        schema={
            "session_id": pl.String,
            "step": pl.UInt32,
            "url": pl.String,
            "event_type": pl.String,
            "status": pl.Int16,
            "is_conversion": pl.Boolean,
        },
        orient="row",
    )


def mapped(frame: pl.LazyFrame, rules=DEFAULT_RULES) -> list[tuple[str, str]]:
    """(touchpoint, stage) of each step, in input order."""
    return assign_touchpoints(frame, rules).select("touchpoint", "stage").collect().rows()


def rule(**fields) -> TouchpointRule:
    return TouchpointRule(**({"stage": "orientation"} | fields))


def template(path: str | None) -> str | None:
    return pl.select(url_template(pl.lit(path, pl.String))).item()


# --------------------------------------------------------------------------- default rules

# The page types of the sample generator, by the `_PATHS` key, and the touchpoint each is.
SAMPLE_TOUCHPOINTS = {
    sample.HOME: "home",
    sample.CART: "cart",
    sample.SHIPPING: "checkout_shipping",
    sample.PAYMENT: "checkout_payment",
    sample.LOGIN: "login",
    sample.ACCOUNT: "account",
    sample.ORDERS: "orders",
    sample.HELP: "help",
    sample.RETURNS: "returns",
    sample.CONTACT: "contact",
    "confirm_url": "order_confirmation",
    "confirm_event": "checkout_review",
    "category": "category",
    "product": "product",
    "search": "search",
    "no_results": "search_no_results",
}
# What the generator appends to the prefix-only entries.
SAMPLE_SUFFIX = {
    "category": "schoenen",
    "product": "gerecyclede-sjaal-1234",
    "search": "laarzen",
    "no_results": "xyzzy",
}


@pytest.mark.parametrize("scheme", sample.URL_SCHEMES)
def test_every_sample_url_shape_has_a_named_touchpoint(scheme):
    """Every URL shape the sample generator serves (en and nl) maps to a named default
    touchpoint, never to a template."""
    paths = sample._PATHS[scheme]
    assert set(paths) == set(SAMPLE_TOUCHPOINTS)
    keys = list(paths)
    urls = [paths[k] + SAMPLE_SUFFIX.get(k, "") for k in keys]
    got = assign_touchpoints(steps(*[(u, "page_view", 200) for u in urls]), DEFAULT_RULES)
    got = got.collect()["touchpoint"].to_list()
    assert dict(zip(keys, got, strict=True)) == SAMPLE_TOUCHPOINTS


@pytest.mark.parametrize(
    ("url", "touchpoint"),
    [
        ("/", "home"),
        ("/en-gb/", "home"),
        ("/de", "home"),
        ("/index.html", "home"),
        ("/collections/womens-shoes", "category"),
        ("/category/sale/", "category"),
        ("/products/organic-cotton-hoodie", "product"),
        ("/de/produkt/wollpullover-42", "product"),
        ("/basket", "cart"),
        ("/de/warenkorb", "cart"),
        ("/fr/panier", "cart"),
        ("/checkout/address", "checkout_shipping"),
        ("/checkout/delivery", "checkout_shipping"),
        ("/de/kasse/zahlung", "checkout_payment"),
        ("/checkout/thank-you", "order_confirmation"),
        ("/order-confirmation", "order_confirmation"),
        ("/checkout", "checkout"),
        ("/suche", "search"),
        ("/de/suche/keine-ergebnisse", "search_no_results"),
        ("/signin", "login"),
        ("/customer/account/login", "login"),
        ("/register", "register"),
        ("/account/orders/123456", "orders"),
        ("/account/orders/123456/return", "returns"),
        ("/faq", "help"),
        ("/retourneren", "returns"),
        ("/kontakt", "contact"),
    ],
)
def test_default_rules_know_common_shop_urls(url, touchpoint):
    """The defaults name common English, Dutch, German and French shop URLs."""
    assert mapped(steps((url, "page_view", 200))) == [
        (touchpoint, next(r.stage for r in DEFAULT_RULES if r.name == touchpoint))
    ]


def test_default_stages():
    """Browsing is orientation; cart to confirmation is purchase; account, orders, returns,
    help and contact are service."""
    stage = {r.name: r.stage for r in DEFAULT_RULES}
    assert {n for n, s in stage.items() if s == "purchase"} == {
        "cart",
        "checkout",
        "checkout_shipping",
        "checkout_payment",
        "checkout_review",
        "order_confirmation",
    }
    assert {n for n, s in stage.items() if s == "service"} == {
        "login",
        "register",
        "account",
        "orders",
        "returns",
        "contact",
        "help",
    }
    assert set(stage.values()) <= set(STAGES)


def test_the_default_rules_pass_the_config_checks():
    """Written as `[[touchpoints]]`, the defaults are a valid config (Polars regexes, one stage
    per name, known status patterns)."""
    tables = [
        {k: v for k, v in dataclasses.asdict(r).items() if v is not None} for r in DEFAULT_RULES
    ]
    cfg = config_from_dict({"touchpoints": tables, "default_touchpoints": False})
    assert cfg.touchpoints == DEFAULT_RULES


def test_no_results_is_not_a_search():
    """`/search/no-results` is its own touchpoint, though `/search` is a prefix of it."""
    assert mapped(steps(("/search", "page_view", 200), ("/search/no-results", "search", 200))) == [
        ("search", "orientation"),
        ("search_no_results", "orientation"),
    ]


def test_a_failing_page_keeps_its_touchpoint():
    """A payment step answering 500 is still `checkout_payment` (the failure is in `status`);
    a product answering 404 is still `product`."""
    frame = steps(("/checkout/payment", "page_view", 500), ("/p/old-boot-77", "page_view", 404))
    assert mapped(frame) == [("checkout_payment", "purchase"), ("product", "orientation")]


def test_404_on_an_unknown_url_is_not_found():
    """404 and 410 on URLs no page rule knows are `not_found`; 200 there is the template."""
    frame = steps(
        ("/wp-login.php", "page_view", 404),
        ("/old-page", "page_view", 410),
        ("/old-page", "page_view", 200),
    )
    assert mapped(frame) == [
        ("not_found", "orientation"),
        ("not_found", "orientation"),
        ("/old-page", "orientation"),
    ]


# ----------------------------------------------------------------------------- user rules


def test_user_rules_come_before_the_defaults():
    """A `[[touchpoints]]` rule wins over a default for the URLs it matches; the defaults
    still name the rest."""
    cfg = config_from_dict(
        {"touchpoints": [{"name": "payment", "match": "^/checkout/payment", "stage": "purchase"}]}
    )
    frame = steps(("/checkout/payment", "page_view", 200), ("/cart", "page_view", 200))
    assert mapped(frame, effective_rules(cfg)) == [("payment", "purchase"), ("cart", "purchase")]


def test_default_touchpoints_false_keeps_only_the_user_rules():
    """With `default_touchpoints = false` an unmatched URL is its template."""
    cfg = config_from_dict(
        {
            "default_touchpoints": False,
            "touchpoints": [
                {"name": "payment", "match": "^/checkout/payment", "stage": "purchase"}
            ],
        }
    )
    assert effective_rules(cfg) == cfg.touchpoints
    frame = steps(("/checkout/payment", "page_view", 200), ("/cart", "page_view", 200))
    assert mapped(frame, effective_rules(cfg)) == [("payment", "purchase"), ("/cart", "purchase")]


def test_first_matching_rule_wins():
    """Of two rules matching a URL, the earlier one names it."""
    rules = (rule(name="first", match="^/a"), rule(name="second", match="^/a/b"))
    assert mapped(steps(("/a/b", "page_view", 200)), rules) == [("first", "orientation")]


def test_status_rule():
    """`status = "5xx"` with a match: a failing payment step is its own touchpoint, a working
    one is not; "40x" and "404" match what they say."""
    rules = (
        rule(name="payment_error", match="^/pay", status="5xx", stage="purchase"),
        rule(name="gone", status="40x"),
        rule(name="missing", status="404"),
        rule(name="pay", match="^/pay", stage="purchase"),
    )
    frame = steps(
        ("/pay", "page_view", 503),
        ("/pay", "page_view", 200),
        ("/x", "page_view", 404),
        ("/x", "page_view", 410),
        ("/x", "page_view", None),
    )
    assert mapped(frame, rules) == [
        ("payment_error", "purchase"),
        ("pay", "purchase"),
        ("gone", "orientation"),
        ("/x", "orientation"),
        ("/x", "orientation"),
    ]


def test_event_type_rule():
    """`event_type = "add_to_cart"` names that event wherever it happens; a page view of the
    same URL keeps its page touchpoint."""
    rules = (rule(name="add_to_cart", event_type="add_to_cart", stage="purchase"), *DEFAULT_RULES)
    frame = steps(("/p/red-dress-12", "add_to_cart", 200), ("/p/red-dress-12", "page_view", 200))
    assert mapped(frame, rules) == [("add_to_cart", "purchase"), ("product", "orientation")]


def test_all_criteria_of_a_rule_must_match():
    """A rule with match and event_type needs both."""
    rules = (rule(name="pdp_add", match="^/p/", event_type="add_to_cart", stage="purchase"),)
    frame = steps(("/p/a-1", "add_to_cart", 200), ("/c/a", "add_to_cart", 200))
    assert mapped(frame, rules) == [("pdp_add", "purchase"), ("/c/a", "orientation")]


def test_a_user_rule_moves_a_default_touchpoint_to_its_stage():
    """A touchpoint has one stage: a user rule named like a default gives the default rule
    its stage too."""
    cfg = config_from_dict(
        {"touchpoints": [{"name": "login", "match": "^/checkout/login", "stage": "purchase"}]}
    )
    frame = steps(("/checkout/login", "page_view", 200), ("/login", "page_view", 200))
    assert mapped(frame, effective_rules(cfg)) == [("login", "purchase"), ("login", "purchase")]


# ---------------------------------------------------------------------------- fallbacks


def test_app_events_without_a_url_use_their_event_type():
    """No URL, an empty one, or `/` on an event that is not a page view: the event type names
    the step. `/` on a page view is the home page."""
    frame = steps(
        (None, "app_open", None),
        ("", "push_opened", None),
        ("/", "add_to_wishlist", None),
        ("/", "page_view", 200),
    )
    assert mapped(frame) == [
        ("app_open", "orientation"),
        ("push_opened", "orientation"),
        ("add_to_wishlist", "orientation"),
        ("home", "orientation"),
    ]


def test_unnamed_steps_get_a_stage_by_keyword():
    """Templates and event types no rule names are placed by keyword: checkout/cart/payment
    words → purchase, account/help/returns words → service, anything else orientation."""
    frame = steps(
        (None, "begin_checkout", None),
        (None, "refund_requested", None),
        ("/checkout/gift-wrap", "page_view", 200),
        ("/account/invoices/77", "page_view", 200),
        ("/blog/how-we-dye-2024", "page_view", 200),
    )
    assert mapped(frame, ()) == [
        ("begin_checkout", "purchase"),
        ("refund_requested", "service"),
        ("/checkout/gift-wrap", "purchase"),
        ("/account/invoices/:id", "service"),
        ("/blog/:slug", "orientation"),
    ]


def test_an_event_named_like_a_rule_takes_the_rules_stage():
    """An app event `login` without a URL is the touchpoint `login`, with the login rule's
    stage (one touchpoint, one stage)."""
    assert mapped(steps((None, "login", None), ("/login", "page_view", 200))) == [
        ("login", "service"),
        ("login", "service"),
    ]


# ----------------------------------------------------------------------------- templates


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/nl/p/blue-shoe-123", "/nl/p/:slug"),
        ("/p/blå-skjorte-123", "/p/:slug"),  # unicode slug with an id
        ("/p/ŝuo", "/p/:slug"),  # anything after an item prefix
        ("/c/größe", "/c/größe"),  # a short unicode word stays
        ("/c/shoes", "/c/shoes"),
        ("/c/shoes/", "/c/shoes"),  # trailing slash
        ("/orders/12345", "/orders/:id"),
        ("/u/3f2a9c0b7d", "/u/:id"),  # hex hash
        ("/u/550e8400-e29b-41d4-a716-446655440000", "/u/:id"),  # uuid
        ("/dp/B07XJ8C8F5", "/dp/:id"),  # an id wins over the item prefix
        ("/ref/b07xj8c8f5", "/ref/:id"),  # letters with 3+ digits
        ("/news/2024-05-01/launch", "/news/:id/launch"),
        ("/product/937734/apple-iphone.html", "/product/:id/:slug"),
        ("/search?q=red+shoes&page=2", "/search"),  # query dropped
        ("/help#returns", "/help"),  # fragment dropped
        ("/A//B/", "/a/b"),  # case and empty segments
        ("/%E6%97%A5%E6%9C%AC", "/:slug"),  # percent-escaped name
        ("/" + "x" * 41, "/:slug"),  # too long for a page name
        ("/iphone15", "/iphone15"),  # two digits: still a word
        ("/", "/"),
        ("/?utm_source=x", "/"),
        (None, None),
    ],
)
def test_url_templates(path, expected):
    """Ids become `:id`, slugs `:slug`; stable words, the locale and the shape stay."""
    assert template(path) == expected


def test_a_catalogue_is_one_template():
    """1000 distinct product URLs (slug + id, with and without queries) are one template, and
    with no rules one touchpoint."""
    urls = [f"/shop/item-{i}/blue-shirt-{i}?colour=blue" for i in range(1000)]
    frame = steps(*[(u, "page_view", 200) for u in urls])
    got = assign_touchpoints(frame, ()).collect()
    assert got["touchpoint"].unique().to_list() == ["/shop/:slug/:slug"]


# ------------------------------------------------------------------------ the frame itself


def test_steps_find_their_key_even_when_every_key_shares_a_hash(monkeypatch):
    """Steps meet their (url, event type, status) key by a hash of it; when distinct keys
    share a hash, they are joined by the keys themselves, with the same result."""
    from pipeline import schemas

    frame = steps(
        ("/cart", "page_view", 200),
        ("/checkout/payment", "page_view", 500),
        ("/cart", "add_to_cart", 200),
        (None, "app_open", None),
        ("/cart", "page_view", 200),
        ("/p/a-1", "page_view", 404),
    )
    by_hash = assign_touchpoints(frame, DEFAULT_RULES).collect()
    monkeypatch.setattr(schemas, "key_hash", lambda columns: pl.lit(7, pl.UInt64))
    by_keys = assign_touchpoints(frame, DEFAULT_RULES).collect()
    assert_frame_equal(by_hash, by_keys)
    assert by_keys["touchpoint"].to_list() == [
        "cart",
        "checkout_payment",
        "cart",
        "app_open",
        "cart",
        "product",
    ]


def test_rows_columns_and_order_are_kept():
    """assign_touchpoints adds `touchpoint` and `stage` and changes nothing else; steps with
    the same key (mapped once) get the same touchpoint."""
    frame = steps(
        ("/cart", "page_view", 200),
        ("/p/a-1", "page_view", 200),
        ("/cart", "page_view", 200),
        ("/cart?x=1", "page_view", 200),
    )
    got = assign_touchpoints(frame, DEFAULT_RULES).collect()
    expected = frame.collect().with_columns(
        touchpoint=pl.Series(["cart", "product", "cart", "cart"]),
        stage=pl.Series(["purchase", "orientation", "purchase", "purchase"]),
    )
    assert_frame_equal(got, expected)


def test_assigning_twice_replaces_the_columns():
    """Touchpoints of steps that already have them are replaced, not duplicated."""
    once = assign_touchpoints(steps(("/cart", "page_view", 200)), DEFAULT_RULES)
    twice = assign_touchpoints(once, (rule(name="basket", match="^/cart", stage="purchase"),))
    assert twice.collect().select("touchpoint", "stage").rows() == [("basket", "purchase")]


def test_dictionary_encoded_columns_are_read():
    """Stored steps may arrive with categorical url/event_type; they map the same."""
    frame = steps(("/cart", "page_view", 200), (None, "app_open", None)).with_columns(
        pl.col("url", "event_type").cast(pl.Categorical)
    )
    assert mapped(frame) == [("cart", "purchase"), ("app_open", "orientation")]


def test_conversion_touchpoint_marks_conversions():
    """`conversion_touchpoint` sets is_conversion on that touchpoint's steps and keeps the
    conversions already marked."""
    frame = steps(
        ("/checkout/success", "page_view", 200),
        ("/cart", "page_view", 200),
        ("/x", "purchase", 200),
    ).with_columns(is_conversion=pl.Series([False, False, True]))
    got = assign_touchpoints(frame, DEFAULT_RULES, conversion_touchpoint="order_confirmation")
    assert got.collect()["is_conversion"].to_list() == [True, False, True]


def test_a_rule_without_criteria_is_refused():
    """A rule with neither match, event_type nor status would name every step: refused."""
    with pytest.raises(ValueError, match="no criterion"):
        assign_touchpoints(steps(("/", "page_view", 200)), (rule(name="all"),)).collect()


# ---------------------------------------------------------------------------- suggestions


def test_suggest_rules_ranks_templates_by_traffic():
    """Templates by steps: /p/:slug (3 steps, 2 URLs, named `product` by the defaults), then
    /gift-cards/:id (2 steps, no rule); the app event counts in the total only."""
    frame = steps(
        ("/p/a-1", "page_view", 200),
        ("/p/a-1?x=2", "page_view", 200),
        ("/p/b-2", "page_view", 200),
        ("/gift-cards/123", "page_view", 200),
        ("/gift-cards/456", "page_view", 200),
        (None, "app_open", None),
    )
    got = suggest_rules(frame)
    assert got.schema == pl.Schema(SUGGESTIONS_SCHEMA)
    assert got.drop("suggested_toml").rows() == [
        ("/p/:slug", 3, 0.5, 2, "/p/a-1", "product", "product"),
        ("/gift-cards/:id", 2, 2 / 6, 2, "/gift-cards/123", None, "gift_cards_detail"),
    ]


def test_suggest_rules_honours_top_and_rules():
    """`top` limits the rows; `matched_by` reports the rules passed in."""
    frame = steps(("/cart", "page_view", 200), ("/cart", "page_view", 200), ("/a", "x", 200))
    got = suggest_rules(frame, top=1, rules=(rule(name="basket", match="^/cart"),))
    assert got.select("template", "matched_by").rows() == [("/cart", "basket")]


@pytest.mark.parametrize(
    ("url", "name", "stage"),
    [
        ("/gift-cards/123", "gift_cards_detail", "orientation"),
        ("/nl/c/schoenen", "category_schoenen", "orientation"),
        ("/account/invoices/77", "account_invoices_detail", "service"),
        ("/checkout/gift-wrap", "checkout_gift_wrap", "purchase"),
        ("/en/", "home", "orientation"),
        ("/12345", "item", "orientation"),
        ("/dp/B07XJ8C8F5", "product", "orientation"),
    ],
)
def test_a_suggested_rule_is_valid_config_that_names_its_urls(url, name, stage):
    """The suggested TOML parses, passes the config checks, and names the template's URLs
    (in any case) as suggested."""
    got = suggest_rules(steps((url, "page_view", 200)), rules=())
    snippet = got["suggested_toml"].item()
    cfg = config_from_dict(tomllib.loads(snippet) | {"default_touchpoints": False})
    assert cfg.touchpoints[0].name == name == got["suggested_name"].item()
    assert cfg.touchpoints[0].stage == stage
    frame = steps((url, "page_view", 200), (url.upper(), "page_view", 200))
    assert mapped(frame, cfg.touchpoints) == [(name, stage), (name, stage)]


def test_default_config_rules_are_the_defaults():
    """Without `[[touchpoints]]`, the rules in force are exactly DEFAULT_RULES."""
    assert effective_rules(Config()) == DEFAULT_RULES
    assert "not_found" in DEFAULT_NAMES


def test_the_readme_table_of_defaults_is_true():
    """Every example path in the README's table of default touchpoints maps to its row's
    touchpoint and stage (`…` standing for any segment)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    table = readme.split("| touchpoint | stage | URL paths, for example |", 1)[1]
    rows = [line for line in table.split("\n\n", 1)[0].splitlines() if line.startswith("| `")]
    cases = []
    for line in rows:
        name, stage, examples = (cell.strip() for cell in line.strip("|").split("|"))
        for path in re.findall(r"`(/[^`]*|…/[^`]*)`", examples):
            path = path.replace("…/", "/x/", 1) if path.startswith("…") else path
            path = path.replace("/…", "/x").replace("…", "")
            cases.append((path, name.strip("`"), stage))
    assert len(cases) > 60
    got = mapped(steps(*[(path, "page_view", 200) for path, _, _ in cases]))
    assert got == [(name, stage) for _, name, stage in cases]
