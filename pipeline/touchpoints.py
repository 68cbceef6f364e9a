"""Touchpoints: name every journey step by what it is to the shopper (Polars, no Python per event).

A touchpoint is a step's meaning in a journey (`product`, `cart`, `checkout_payment`, ...) with
the journey stage it belongs to: `orientation` (looking around), `purchase` (cart to order) or
`service` (account, orders, returns, help). Rules decide, in order, first match wins: the
`[[touchpoints]]` of the config, then `DEFAULT_RULES` (unless `default_touchpoints = false`).

A step no rule matches is named by its URL template (`/blog/:slug`), so an unknown page is
still a node of its own but a catalogue of thousands of URLs is one node. A step without a
usable URL (no URL, or `/` on an event other than a page view: app and server events) is named
by its event type.

Rules look at the URL path (query removed), the event type and the HTTP status. The default
rules name a page by what it is, never by how it answered: a payment step answering 500 stays
`checkout_payment` (the failure is in `status`, and the journey must show *where* shoppers hit
it). Only a 404/410 on a URL no other rule knows becomes `not_found`, so that mistyped and
probed URLs do not each become a template.

Matching runs once per distinct (path, event type, status) and is joined back: a day has
millions of steps but a few thousand distinct keys.

>>> import polars as pl
>>> steps = pl.LazyFrame({"url": ["/nl/p/rode-jurk-1234?kleur=rood", "/cart"],
...                       "event_type": ["page_view", "page_view"], "status": [200, 200]})
>>> assign_touchpoints(steps, DEFAULT_RULES).collect()["touchpoint"].to_list()
['product', 'cart']
"""

from __future__ import annotations

import dataclasses
import json
import re

import polars as pl

from pipeline.config import STAGES, Config, TouchpointRule
from pipeline.schemas import join_by_hash

__all__ = [
    "DEFAULT_RULES",
    "STAGES",
    "SUGGESTIONS_SCHEMA",
    "TouchpointRule",
    "assign_touchpoints",
    "effective_rules",
    "suggest_rules",
    "url_template",
]

# The event type of a plain page view: the one event that says nothing beyond its URL.
PAGE_VIEW = "page_view"

# ---------------------------------------------------------------------------------------------
# Default rules: common e-commerce URL shapes in English, Dutch, German and French.

# An optional locale prefix, once or twice: /nl, /en-gb, /de_de, /nl/nl (bol.com style).
_LOCALE = r"(?i)^(?:/[a-z]{2}(?:[-_][a-z]{2})?){0,2}"
_END = r"(?:/|$)"  # the word is a whole path segment; deeper pages belong to it
_CHECKOUT = r"(?:checkout|afrekenen|kassa|kasse|commande|caisse)"


def _rule(name: str, stage: str, body: str | None = None, **criteria: str) -> TouchpointRule:
    match = None if body is None else _LOCALE + body
    return TouchpointRule(name=name, stage=stage, match=match, **criteria)


DEFAULT_RULES: tuple[TouchpointRule, ...] = (
    _rule(
        "home", "orientation", r"(?:/(?:index\.(?:html?|php)|home|homepage|start|startseite))?/?$"
    ),
    # Confirmation before the other checkout steps: it lives under /checkout too.
    _rule(
        "order_confirmation",
        "purchase",
        r"/(?:(?:checkout|afrekenen|kassa|kasse|commande|bestelling|bestellung|order)/"
        r"(?:success|complete|completed|confirmation|confirmed|thank-?you|thanks|bevestiging"
        r"|bedankt|voltooid|bestaetigung|bestätigung|danke|merci)"
        r"|order[-_]?(?:confirmation|confirmed|complete|success|received)"
        r"|thank-?you|bedankt|danke|merci)" + _END,
    ),
    _rule(
        "checkout_payment",
        "purchase",
        rf"/(?:{_CHECKOUT}/)?(?:payment|pay|betalen|betaling|betaalmethode|zahlung|bezahlen"
        r"|zahlungsart|paiement)" + _END,
    ),
    _rule(
        "checkout_shipping",
        "purchase",
        rf"/{_CHECKOUT}/(?:shipping|address|addresses|delivery|bezorging|bezorgen|verzending"
        r"|adres|gegevens|versand|lieferung|lieferadresse|adresse|livraison)" + _END,
    ),
    _rule(
        "checkout_review",
        "purchase",
        rf"/{_CHECKOUT}/(?:review|summary|overview|place-?order|confirm|overzicht|controleren"
        r"|bestellen|uebersicht|übersicht|pruefen|prüfen|recapitulatif|récapitulatif|valider)"
        + _END,
    ),
    _rule("checkout", "purchase", rf"/{_CHECKOUT}" + _END),
    _rule(
        "cart",
        "purchase",
        r"/(?:cart|basket|bag|shopping-?(?:bag|cart|basket)|winkelwagen|winkelwagentje"
        r"|winkelmand|winkelmandje|warenkorb|panier)" + _END,
    ),
    # "Nothing found" is a dead end of its own, not a search: before `search`.
    _rule(
        "search_no_results",
        "orientation",
        r"/(?:search|zoeken|suche|recherche)/(?:no-?results?|no_results?|geen-?resultaten"
        r"|keine-?(?:ergebnisse|treffer)|aucun-?r[eé]sultat)" + _END,
    ),
    _rule("search", "orientation", r"/(?:search|zoeken|zoek|suche|recherche|catalogsearch)" + _END),
    _rule(
        "product",
        "orientation",
        r"/(?:p|pd|dp|product|products|produkt|produkte|produit|produits|artikel|item|items)"
        r"/[^/]+",
    ),
    _rule(
        "category",
        "orientation",
        r"/(?:c|cat|category|categories|categorie|categorieen|categorieën|collection"
        r"|collections|kategorie|kategorien|catégorie|rayon|shop|department|departments"
        r"|products|producten|browse)" + _END,
    ),
    # Login and account pages serve both shoppers and service visitors; their stage is
    # service (the account side of the shop). A `[[touchpoints]]` rule of the same name with
    # another stage moves them.
    _rule(
        "login",
        "service",
        r"/(?:(?:customer/)?account/)?(?:login|log-?in|signin|sign-?in|inloggen|aanmelden"
        r"|anmelden|einloggen|connexion|se-connecter)" + _END,
    ),
    _rule(
        "register",
        "service",
        r"/(?:(?:customer/)?account/)?(?:register|registration|signup|sign-?up"
        r"|create-?account|registreren|account-aanmaken|registrieren|konto-erstellen"
        r"|inscription)" + _END,
    ),
    # Returns and contact pages often sit under help or account: any depth.
    _rule(
        "returns",
        "service",
        r"(?:/[^/]+)*/(?:returns?|retour|retours|retouren|retourneren|retourzending|retoure"
        r"|ruecksendung|rücksendung)" + _END,
    ),
    _rule(
        "orders",
        "service",
        r"(?:/(?:account|my-account|mijn-account|konto|mein-konto|customer|mon-compte))?"
        r"/(?:orders|my-orders|bestellingen|mijn-bestellingen|bestellungen|meine-bestellungen"
        r"|commandes|mes-commandes|order-history)" + _END,
    ),
    _rule(
        "account",
        "service",
        r"/(?:account|my-account|myaccount|mijn-account|profile|profiel|konto|mein-konto"
        r"|kundenkonto|mon-compte|customer)" + _END,
    ),
    _rule(
        "wishlist",
        "orientation",
        r"/(?:wishlist|wish-list|favorites|favourites|verlanglijst|favorieten|wunschliste"
        r"|merkzettel|favoris)" + _END,
    ),
    _rule(
        "contact",
        "service",
        r"(?:/[^/]+)*/(?:contact|contact-us|contactformulier|kontakt|kontaktformular"
        r"|contactez-nous|nous-contacter)" + _END,
    ),
    _rule(
        "help",
        "service",
        r"/(?:help|faq|faqs|support|klantenservice|customer-service|customerservice"
        r"|customer-care|service|hilfe|kundenservice|kundendienst|aide|service-client"
        r"|veelgestelde-vragen)" + _END,
    ),
    # Last: only URLs no page rule knows. A known page that fails keeps its own name.
    _rule("not_found", "orientation", status="404"),
    _rule("not_found", "orientation", status="410"),
)


def effective_rules(cfg: Config) -> tuple[TouchpointRule, ...]:
    """The rules in force: the config's `[[touchpoints]]`, then the defaults (if enabled).

    A touchpoint has one stage: a default rule whose name the config also uses takes the
    config's stage, so `name = "login"`, `stage = "purchase"` moves every login step.
    """
    if not cfg.default_touchpoints:
        return cfg.touchpoints
    stage_of = {rule.name: rule.stage for rule in cfg.touchpoints}
    defaults = tuple(
        dataclasses.replace(rule, stage=stage_of.get(rule.name, rule.stage))
        for rule in DEFAULT_RULES
    )
    return cfg.touchpoints + defaults


# ---------------------------------------------------------------------------------------------
# URL templates.

# A segment right after one of these is an item (product) name, whatever it looks like.
_ITEM_PREFIXES = (
    "p",
    "pd",
    "dp",
    "product",
    "products",
    "produkt",
    "produkte",
    "produit",
    "produits",
    "artikel",
    "item",
    "items",
    "sku",
)
_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_MAX_WORD_CHARS = 40  # longer segments are titles or tokens, never a stable page name


def url_template(path: pl.Expr) -> pl.Expr:
    """The URL's path with ids and slugs collapsed, so that a catalogue is one template.

    Query and fragment are dropped, the path is lower-cased, empty segments (`//`, a trailing
    `/`) removed. A segment becomes `:id` when it is a number, a UUID, a hex hash (8+ hex
    characters with a digit), a code of letters with 3+ digits (`b07xj8c8f5`) or digits with
    separators (`2024-05-01`). It becomes `:slug` when it holds both letters and digits with a
    separator (`blue-shoe-123`), percent-escapes, more than 40 characters, or follows an item
    prefix (`/p/`, `/product/`, `/products/`, ...; also after an `:id` there). Short words
    stay: `/c/shoes` is a page of its own, as categories are few.

    >>> pl.select(url_template(pl.lit("/nl/p/blue-shoe-123?ref=x"))).item()
    '/nl/p/:slug'
    >>> pl.select(url_template(pl.lit("/Orders/12345/"))).item()
    '/orders/:id'
    """
    segments = (
        path.cast(pl.String)
        .str.replace(r"[?#].*$", "")
        .str.to_lowercase()
        .str.split("/")
        .list.eval(pl.element().filter(pl.element() != ""))
        .list.eval(_template_segment())
    )
    return pl.lit("/") + segments.list.join("/")


def _template_segment() -> pl.Expr:
    s = pl.element()
    prev, prev2 = s.shift(1), s.shift(2)
    has_digit = s.str.contains(r"\d")
    has_letter = s.str.contains(r"\p{L}")
    after_item = prev.is_in(_ITEM_PREFIXES) | (
        prev.str.contains(r"^\d+$") & prev2.is_in(_ITEM_PREFIXES)
    )
    is_id = (
        s.str.contains(r"^\d+$")
        | s.str.contains(_UUID)
        | (s.str.contains(r"^[0-9a-f]{8,}$") & has_digit)
        | (s.str.contains(r"^[\p{L}\d]{4,}$") & (s.str.count_matches(r"\d") >= 3))
        | (s.str.contains(r"^[\d_.,:+~-]+$") & has_digit)
    )
    is_slug = (
        after_item
        | (has_digit & has_letter & s.str.contains(r"[-_.+~,]"))
        | s.str.contains(r"%[0-9a-f]{2}")
        | (s.str.len_chars() > _MAX_WORD_CHARS)
    )
    return (
        pl.when(is_id.fill_null(False))
        .then(pl.lit(":id"))
        .when(is_slug.fill_null(False))
        .then(pl.lit(":slug"))
        .otherwise(s)
    )


# ---------------------------------------------------------------------------------------------
# Assigning touchpoints.

_KEYS = ("_tp_url", "_tp_event_type", "_tp_status")

# Keywords that place an unnamed page or event type in a stage; service is checked first, so
# `/account/orders/:id` is service while `order_completed` is purchase.
_SERVICE_WORDS = (
    "account|login|logout|signin|signup|register|help|faq|support|contact|returns?|refund"
    "|retour|retourneren|klantenservice|kundenservice|hilfe|kontakt|orders|bestellingen"
)
_PURCHASE_WORDS = (
    "cart|basket|bag|checkout|payment|pay|shipping|delivery|purchase|order|afrekenen"
    "|winkelwagen|betalen|bezorging|warenkorb|kasse|zahlung|panier|commande|paiement"
)


def _key_columns(steps: pl.LazyFrame) -> pl.LazyFrame:
    """The join keys: url as stored (the path is cut from it only per distinct key)."""
    return steps.with_columns(
        _tp_url=pl.col("url").cast(pl.String),
        _tp_event_type=pl.col("event_type").cast(pl.String),
        _tp_status=pl.col("status").cast(pl.Int16),
    )


def _with_path(keys: pl.LazyFrame) -> pl.LazyFrame:
    return keys.with_columns(_tp_path=pl.col("_tp_url").str.replace(r"[?#].*$", ""))


def _has_url() -> pl.Expr:
    path, event_type = pl.col("_tp_path"), pl.col("_tp_event_type")
    bare = (path == "") | ((path == "/") & (event_type != PAGE_VIEW))
    return (path.is_not_null() & ~bare).fill_null(False)


def _status_condition(pattern: str) -> pl.Expr:
    status = pl.col("_tp_status")
    pattern = pattern.lower()
    if pattern.endswith("xx"):
        return status // 100 == int(pattern[0])
    if pattern.endswith("x"):
        return status // 10 == int(pattern[:2])
    return status == int(pattern)


def _rule_condition(rule: TouchpointRule) -> pl.Expr:
    """All the rule's criteria; a URL criterion never matches a step without a usable URL."""
    conditions = []
    if rule.match is not None:
        conditions.append(_has_url() & pl.col("_tp_path").str.contains(rule.match))
    if rule.event_type is not None:
        conditions.append(pl.col("_tp_event_type") == rule.event_type)
    if rule.status is not None:
        conditions.append(_status_condition(rule.status))
    if not conditions:
        raise ValueError(f"touchpoint rule {rule.name!r} has no criterion: it would match all")
    return pl.all_horizontal(conditions).fill_null(False)


def _guess_stage(name: pl.Expr) -> pl.Expr:
    """Stage of an unnamed page template or event type, by keyword; else orientation."""
    boundary = r"(?:^|[^\p{L}\p{N}])"
    after = r"(?:[^\p{L}\p{N}]|$)"
    return (
        pl.when(name.str.contains(rf"(?i){boundary}(?:{_SERVICE_WORDS}){after}"))
        .then(pl.lit("service"))
        .when(name.str.contains(rf"(?i){boundary}(?:{_PURCHASE_WORDS}){after}"))
        .then(pl.lit("purchase"))
        .otherwise(pl.lit("orientation"))
    )


def _map_keys(keys: pl.LazyFrame, rules: tuple[TouchpointRule, ...]) -> pl.LazyFrame:
    """Add `rule` (the matching rule's name or null), `touchpoint` and `stage` to distinct keys."""
    matched: pl.Expr = pl.lit(None, pl.String)
    # Built from the last rule to the first, so the first matching rule ends up outermost.
    for rule in reversed(rules):
        matched = pl.when(_rule_condition(rule)).then(pl.lit(rule.name)).otherwise(matched)
    keys = keys.with_columns(rule=matched)
    # Templates are the costly part (a list per path), and only paths no rule names need one.
    templates = (
        keys.filter(pl.col("rule").is_null() & _has_url())
        .select(pl.col("_tp_path").unique())
        .with_columns(_tp_template=url_template(pl.col("_tp_path")))
    )
    keys = keys.join(templates, on="_tp_path", how="left")
    stage_of = {}
    for rule in rules:
        stage_of.setdefault(rule.name, rule.stage)
    fallback = pl.when(_has_url()).then(pl.col("_tp_template")).otherwise(pl.col("_tp_event_type"))
    touchpoint = pl.coalesce(pl.col("rule"), fallback)
    # A fallback name that is also a rule's name (an app event "search") takes that rule's
    # stage: one touchpoint, one stage.
    stage = pl.coalesce(
        pl.col("touchpoint").replace_strict(stage_of, default=None, return_dtype=pl.String)
        if stage_of
        else pl.lit(None, pl.String),
        _guess_stage(pl.col("touchpoint")),
    )
    return keys.with_columns(touchpoint=touchpoint).with_columns(stage=stage).drop("_tp_template")


def assign_touchpoints(
    steps: pl.LazyFrame,
    rules: tuple[TouchpointRule, ...],
    *,
    conversion_touchpoint: str | None = None,
) -> pl.LazyFrame:
    """Add `touchpoint` and `stage` to session steps (rows and their order unchanged).

    `steps` needs `url`, `event_type` and `status` (the `session_steps` contract has them);
    other columns pass through. `rules` are tried in order, first match wins (use
    `effective_rules(cfg)`). No match: the URL template, or the event type for a step without
    a usable URL; its stage is guessed from keywords (`/checkout/gift-card` → purchase), else
    orientation. With `conversion_touchpoint` (`conversion.touchpoint`), steps of that
    touchpoint also get `is_conversion = true`.

    >>> steps = pl.LazyFrame({"url": ["/checkout/payment", None],
    ...                       "event_type": ["page_view", "app_open"], "status": [500, None]})
    >>> out = assign_touchpoints(steps, DEFAULT_RULES).collect()
    >>> out.select("touchpoint", "stage").rows()
    [('checkout_payment', 'purchase'), ('app_open', 'orientation')]
    """
    steps = steps.drop("touchpoint", "stage", strict=False)
    keyed = _key_columns(steps)
    mapping = (
        _map_keys(_with_path(keyed.select(_KEYS).unique()), rules)
        .select(*_KEYS, "touchpoint", "stage")
        .collect()
    )
    out = join_by_hash(keyed, mapping, list(_KEYS)).drop(_KEYS)
    if conversion_touchpoint is not None:
        out = out.with_columns(
            is_conversion=pl.col("is_conversion").fill_null(False)
            | (pl.col("touchpoint") == conversion_touchpoint)
        )
    return out


# ---------------------------------------------------------------------------------------------
# Suggestions for `journeymap touchpoints suggest`.

SUGGESTIONS_SCHEMA = {
    "template": pl.String(),
    "n_steps": pl.UInt32(),
    "share": pl.Float64(),
    "n_distinct_urls": pl.UInt32(),
    "example_url": pl.String(),
    "matched_by": pl.String(),
    "suggested_name": pl.String(),
    "suggested_toml": pl.String(),
}

_NAME_ALIASES = {prefix: "product" for prefix in _ITEM_PREFIXES} | {
    word: "category"
    for word in ("c", "cat", "category", "categories", "categorie", "collection", "collections")
}
_LOCALE_SEGMENT = re.compile(r"[a-z]{2}(?:[-_][a-z]{2})?")


def suggest_rules(
    steps: pl.LazyFrame, top: int = 30, *, rules: tuple[TouchpointRule, ...] = DEFAULT_RULES
) -> pl.DataFrame:
    """The `top` URL templates by traffic, with what `rules` make of them and a rule to paste.

    Columns: template, n_steps, share (of all steps), n_distinct_urls (distinct paths, query
    removed), example_url (its most visited path), matched_by (the rule that names most of
    its steps; null when most fall through to the template, which is what a new rule is for),
    suggested_name, suggested_toml (a `[[touchpoints]]` table matching the template).
    Steps without a usable URL are counted in the total but listed under no template.
    """
    keyed = _key_columns(steps)
    counts = _with_path(keyed.group_by(_KEYS).agg(n=pl.len()))
    mapped = _map_keys(counts, rules).filter(_has_url())
    per_rule = mapped.group_by(template=url_template(pl.col("_tp_path")), rule=pl.col("rule")).agg(
        n=pl.col("n").sum()
    )
    matched_by = (
        per_rule.sort("n", "rule", descending=[True, False], nulls_last=True)
        .group_by("template")
        .agg(matched_by=pl.col("rule").first())
    )
    per_path = mapped.group_by("_tp_path").agg(n=pl.col("n").sum())
    templates = (
        per_path.with_columns(template=url_template(pl.col("_tp_path")))
        .group_by("template")
        .agg(
            n_steps=pl.col("n").sum().cast(pl.UInt32),
            n_distinct_urls=pl.len().cast(pl.UInt32),
            example_url=pl.col("_tp_path")
            .sort_by("n", "_tp_path", descending=[True, False])
            .first(),
        )
        .join(matched_by, on="template", how="left")
    )
    total = keyed.select(pl.len()).collect().item()
    top_templates = (
        templates.sort(["n_steps", "template"], descending=[True, False])
        .head(top)
        .with_columns(share=pl.col("n_steps") / max(total, 1))
        .collect()
    )
    # Names and TOML for at most `top` rows: plain Python is clearer here and costs nothing.
    names, tomls = [], []
    for template in top_templates["template"]:
        name = _suggest_name(template)
        stage = pl.select(_guess_stage(pl.lit(template))).item()
        names.append(name)
        tomls.append(_rule_toml(name, _template_regex(template), stage))
    return top_templates.with_columns(
        suggested_name=pl.Series(names, dtype=pl.String),
        suggested_toml=pl.Series(tomls, dtype=pl.String),
    ).select([pl.col(c).cast(dtype) for c, dtype in SUGGESTIONS_SCHEMA.items()])


def _suggest_name(template: str) -> str:
    """A name from the template's words: `/p/:slug` → product, `/nl/c/schoenen` →
    category_schoenen, `/orders/:id` → orders_detail."""
    segments = [s for s in template.split("/") if s]
    # A locale prefix says nothing about the page (but `/dp/` is a product, not a locale).
    while segments and segments[0] not in _NAME_ALIASES and _LOCALE_SEGMENT.fullmatch(segments[0]):
        segments = segments[1:]
    words = [_NAME_ALIASES.get(s, s) for s in segments if not s.startswith(":")]
    if not segments:
        return "home"
    if not words:
        return "item"
    name = re.sub(r"[^\w]+", "_", "_".join(dict.fromkeys(words))).strip("_") or "page"
    last_word = next(s for s in reversed(segments) if not s.startswith(":"))
    if segments[-1].startswith(":") and last_word not in _NAME_ALIASES:
        name += "_detail"
    return name


def _template_regex(template: str) -> str:
    """A pattern for the URLs of a template: placeholders match one segment, case ignored."""
    parts = ["[^/]+" if s.startswith(":") else pl.escape_regex(s) for s in template.split("/")]
    return "(?i)^" + "/".join(parts).rstrip("/") + "/?$"


def _rule_toml(name: str, pattern: str, stage: str) -> str:
    # A literal string ('...') keeps the regex readable, backslashes and all.
    printable = "'" not in pattern and pattern.isprintable()
    quoted = f"'{pattern}'" if printable else json.dumps(pattern, ensure_ascii=False)
    lines = (
        "[[touchpoints]]",
        f"name = {json.dumps(name)}",
        f"match = {quoted}",
        f"stage = {json.dumps(stage)}",
    )
    return "\n".join(lines) + "\n"
