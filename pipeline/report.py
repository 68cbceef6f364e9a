"""The HTML report: one self-contained file that opens offline in any browser.

Only draws: every number comes from `pipeline.funnels` (which reads the marts through
`funnels.REPORT_INPUTS`), so the report and the marts agree by construction.

Safety. URLs, touchpoint names (URL templates), user agents and quarantined lines are
attacker-controlled. Every string from the data is HTML-escaped before it reaches a table
cell or a Plotly label or hover text (Plotly renders those as HTML-ish text: `<b>`, `<a>`,
entities). On top of that the page carries a Content-Security-Policy that lets only its own
two scripts run (by hash) and lets nothing load from anywhere: no request leaves the page.

>>> path = render_report(frames, cfg, Path("report.html"))    # doctest: +SKIP
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import plotly
import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline
import polars as pl

from pipeline import funnels
from pipeline.config import Config
from pipeline.errors import UsageError
from pipeline.funnels import SankeyFlow
from pipeline.journeys import PATH_SEPARATOR

# Colours: red means lost, green means bought; touchpoints share a calm qualitative palette
# (the same touchpoint has the same colour in every chart).
RED = "#d62728"
GREEN = "#2ca02c"
GREY = "#9e9e9e"
LIGHT_GREY = "#c7c7c7"
START_GREY = "#6b6b6b"
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#9467bd",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#393b79",
    "#637939",
    "#8c6d31",
    "#843c39",
    "#7b4173",
    "#3182bd",
    "#e6550d",
    "#756bb1",
    "#31a354",
)
KIND_COLOURS = {
    "others": GREY,
    "drop_off": RED,
    "conversion": GREEN,
    "continues": LIGHT_GREY,
    "earlier": LIGHT_GREY,
    "entry": LIGHT_GREY,
    "start": START_GREY,
}
LABEL_CHARS = 42  # longer node labels are cut (the hover shows them whole)
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
PLOTLY_CONFIG = {
    "displaylogo": False,
    "responsive": True,
    "modeBarButtonsToRemove": ["select2d", "lasso2d"],
    "toImageButtonOptions": {"format": "png", "scale": 2},
}


def esc(value: object) -> str:
    """HTML-escape anything for a table cell, an attribute or a Plotly label."""
    return html.escape("" if value is None else str(value), quote=True)


# ------------------------------------------------------------------------------- figures


def build_figures(
    frames: Mapping[str, pl.DataFrame], cfg: Config, flows: Mapping | None = None
) -> dict[str, go.Figure]:
    """Every chart of the report, by name (`step_sankey`, `anchored_sankey`,
    `conversion_sankey`, `transitions_sankey`, `funnel`); a chart without data is left out.
    `flows`: `report_flows(frames, cfg)` when already computed."""
    flows = flows if flows is not None else report_flows(frames, cfg)
    colours = touchpoint_colours(_frame(frames, "transitions"))
    figures: dict[str, go.Figure] = {}
    for name, flow in flows.items():
        if name == "funnel":
            continue
        if flow.links.height:
            figures[name] = sankey_figure(
                flow,
                colours,
                _sankey_title(name, flow, cfg),
                aggregate=name == "transitions_sankey",
            )
    funnel_frame = flows["funnel"]
    if funnel_frame["n_sessions"].sum() > 0:
        figures["funnel"] = funnel_figure(funnel_frame)
    return figures


def report_flows(frames: Mapping[str, pl.DataFrame], cfg: Config) -> dict:
    """The Sankey flows and the funnel the report draws, computed from the frames."""
    rc = cfg.report
    journeys = _frame(frames, "journeys", funnels.JOURNEYS_SCHEMA)
    flows: dict = {
        "step_sankey": funnels.step_sankey(journeys, rc.sankey_steps, rc.sankey_top_k),
    }
    if rc.sankey_anchor:
        flows["anchored_sankey"] = funnels.step_sankey(
            journeys, rc.sankey_steps, rc.sankey_top_k, anchor=rc.sankey_anchor
        )
    flows["conversion_sankey"] = funnels.step_sankey(
        journeys, rc.sankey_steps, rc.sankey_top_k, converted_only=True, align="end"
    )
    transitions = _frame(frames, "transitions")
    if transitions.height:
        flows["transitions_sankey"] = funnels.aggregate_sankey(transitions, rc.transitions_top_k)
    flows["funnel"] = funnels.funnel(journeys, list(rc.funnel_steps))
    return flows


def touchpoint_colours(transitions: pl.DataFrame) -> dict[str, str]:
    """A colour per touchpoint, the busiest first, so every chart colours alike."""
    if not transitions.height:
        return {}
    synthetic = ["START", "CONVERSION", "EXIT"]
    busiest = (
        transitions.filter(~pl.col("to_touchpoint").is_in(synthetic))
        .group_by("to_touchpoint")
        .agg(pl.col("n_transitions").sum())
        .sort(["n_transitions", "to_touchpoint"], descending=[True, False])["to_touchpoint"]
    )
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(busiest.to_list())}


def _sankey_title(name: str, flow: SankeyFlow, cfg: Config) -> str:
    covered = f"{flow.n_covered:,} journeys ({_pct(flow.coverage)} of all {flow.n_journeys:,})"
    if name == "step_sankey":
        ended = flow.nodes.filter(pl.col("kind").is_in(["drop_off", "conversion"]))
        within = ended["n_sessions"].sum() / flow.n_covered if flow.n_covered else 0
        return (
            f"<b>Journeys step by step</b> · first {flow.n_steps} steps · {covered}"
            f" · {_pct(within)} end within {flow.n_steps} steps"
        )
    if name == "anchored_sankey":
        return (
            f"<b>From the first visit to {esc(flow.anchor)}</b> · next {flow.n_steps - 1} steps"
            f" · {covered}"
        )
    if name == "conversion_sankey":
        return (
            f"<b>Paths to a purchase</b> · last {flow.n_steps} steps of converted journeys"
            f" · {covered}"
        )
    return (
        "<b>Touchpoint to touchpoint</b> · every transition of every journey"
        f" · top {cfg.report.transitions_top_k} touchpoints"
    )


def sankey_figure(
    flow: SankeyFlow, colours: Mapping[str, str], title: str, aggregate: bool = False
) -> go.Figure:
    """A Plotly Sankey of a `SankeyFlow`: every data string escaped, hover with counts and
    the share of the previous step. `aggregate`: the two-column touchpoint-to-touchpoint
    flow, counted in transitions."""
    nodes = flow.nodes.sort("id")
    links = flow.links
    unit = "transitions" if aggregate else "sessions"
    node_colours = [
        KIND_COLOURS.get(kind) or colours.get(touchpoint or "", PALETTE[0])
        for kind, touchpoint in nodes.select("kind", "touchpoint").iter_rows()
    ]
    labels = [_display_label(row, flow, aggregate) for row in nodes.iter_rows(named=True)]
    node_hover = []
    for row in nodes.iter_rows(named=True):
        lines = [f"<b>{esc(row['label'])}</b>", f"{row['n_sessions']:,} {unit}"]
        if row["pct_of_previous"] is not None:
            lines.append(f"{_pct(row['pct_of_previous'])} of {_previous_step(row)}")
        if row["share_of_journeys"] is not None and not aggregate:
            lines.append(f"{_pct(row['share_of_journeys'])} of the journeys drawn")
        if row["detail"]:
            lines.append(f"holds: {esc(row['detail'])}")
        node_hover.append("<br>".join(lines))
    by_id = {row["id"]: row for row in nodes.iter_rows(named=True)}
    link_hover = []
    link_colours = []
    for source, target, n, pct in links.select(
        "source", "target", "n_sessions", "pct_of_previous"
    ).iter_rows():
        src, dst = by_id[source], by_id[target]
        link_hover.append(
            f"{esc(src['label'])} → {esc(dst['label'])}<br>{n:,} {unit}"
            f"<br>{_pct(pct)} of {esc(src['label'])}"
        )
        if dst["kind"] == "drop_off":
            link_colours.append(_rgba(RED, 0.35))
        elif dst["kind"] == "conversion":
            link_colours.append(_rgba(GREEN, 0.45))
        else:
            link_colours.append(_rgba(node_colours[source], 0.28))
    figure = go.Figure(
        go.Sankey(
            arrangement="snap",
            valueformat=",d",
            node={
                "label": labels,
                "color": node_colours,
                "customdata": node_hover,
                "hovertemplate": "%{customdata}<extra></extra>",
                "pad": 14,
                "thickness": 16,
                "line": {"color": "rgba(0,0,0,0.25)", "width": 0.5},
                "align": "right" if flow.align == "end" else "left",
                "sort": "input",
            },
            link={
                "source": links["source"].to_list(),
                "target": links["target"].to_list(),
                "value": links["n_sessions"].to_list(),
                "color": link_colours,
                "customdata": link_hover,
                "hovertemplate": "%{customdata}<extra></extra>",
            },
            textfont={"size": 11, "family": FONT, "color": "#222"},
        )
    )
    figure.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 15}},
        font={"family": FONT, "size": 12},
        height=540 if aggregate else 620,
        margin={"l": 10, "r": 10, "t": 70, "b": 20},
        paper_bgcolor="white",
        annotations=_column_headers(nodes, flow, aggregate),
    )
    return figure


def _display_label(node: dict, flow: SankeyFlow, aggregate: bool) -> str:
    """The text drawn next to a node: touchpoints as labelled ("cart (step 3)"), synthetic
    nodes short (their column header says where they are; the hover says it in full)."""
    kind = node["kind"]
    if aggregate or kind in ("touchpoint", "others"):
        return _short(node["label"])
    if flow.align == "end" and kind in ("conversion", "drop_off"):
        return ""  # the last column: its header names the outcome
    share = f" {_pct_short(node['pct_of_previous'])}" if node["pct_of_previous"] is not None else ""
    return {
        "drop_off": f"Drop-off{share}",
        "conversion": f"Converted{share}",
        "continues": "Continues",
        "earlier": "Earlier steps",
        "entry": "Start",
    }.get(kind, _short(node["label"]))


def _previous_step(node: dict) -> str:
    """What a start-aligned node's `pct_of_previous` compares with."""
    if node["kind"] in funnels.SINK_KINDS:
        return f"step {node['step']}"
    return "the journeys" if node["step"] == 1 else f"step {node['step'] - 1}"


def _column_headers(nodes: pl.DataFrame, flow: SankeyFlow, aggregate: bool) -> list[dict]:
    """ "step 1", "step 2", ... above the columns."""
    n_columns = int(nodes["column"].max() or 1)
    headers = []
    for column in range(1, n_columns + 1):
        if aggregate:
            text = "from" if column == 1 else "to"
        elif flow.align == "start":
            text = f"step {column}" if column <= flow.n_steps else "after"
        elif column == 1:
            text = "earlier"
        elif column == n_columns:
            kinds = set(nodes.filter(pl.col("column") == column)["kind"].to_list())
            text = "converted" if kinds == {"conversion"} else "outcome"
        else:
            back = n_columns - 1 - column
            text = "last step" if back == 0 else f"{back} before"
        x = (column - 1) / (n_columns - 1) if n_columns > 1 else 0.5
        headers.append(
            {
                "text": text,
                "x": x,
                "y": 1.0,
                "xref": "paper",
                "yref": "paper",
                "yanchor": "bottom",
                "xanchor": "left" if column == 1 else "right" if column == n_columns else "center",
                "showarrow": False,
                "font": {"size": 11, "color": "#666"},
            }
        )
    return headers


def funnel_figure(funnel: pl.DataFrame) -> go.Figure:
    """The funnel: sessions reaching each step in order, with the conversion from the step
    before and the drop-off."""
    labels = [f"{row['step']}. {_short(row['touchpoint'])}" for row in funnel.iter_rows(named=True)]
    text = []
    hover = []
    previous = "all journeys"
    for row in funnel.iter_rows(named=True):
        text.append(
            f"{row['n_sessions']:,} · {_pct(row['conversion_from_previous'])} of "
            f"{'journeys' if row['step'] == 1 else 'previous'}"
        )
        hover.append(
            f"<b>{esc(row['touchpoint'])}</b> (step {row['step']})<br>"
            f"{row['n_sessions']:,} sessions ({_pct(row['share_of_journeys'])} of journeys)<br>"
            f"{_pct(row['conversion_from_previous'])} of {previous}<br>"
            f"drop-off: {row['drop_off']:,} sessions"
        )
        previous = esc(row["touchpoint"])
    figure = go.Figure(
        go.Funnel(
            y=labels,
            x=funnel["n_sessions"].to_list(),
            text=text,
            textinfo="text",
            textposition="auto",
            cliponaxis=False,
            customdata=hover,
            hovertemplate="%{customdata}<extra></extra>",
            marker={"color": PALETTE[0]},
            connector={"fillcolor": _rgba(RED, 0.18), "line": {"width": 0}},
        )
    )
    figure.update_layout(
        title={
            "text": "<b>Funnel</b> · sessions that reached each step, in this order "
            "(red: drop-off between steps)",
            "x": 0.01,
            "xanchor": "left",
            "font": {"size": 15},
        },
        font={"family": FONT, "size": 12},
        height=120 + 60 * funnel.height,
        margin={"l": 10, "r": 10, "t": 60, "b": 20},
        paper_bgcolor="white",
        plot_bgcolor="white",
    )
    return figure


# ---------------------------------------------------------------------------------- page


def render_report(
    frames: Mapping[str, pl.DataFrame],
    cfg: Config,
    out: Path,
    *,
    source: str | None = None,
    generated_at: datetime | None = None,
) -> Path:
    """Write the report to `out` (its directory is created) and return the path.

    `frames` are the results of `funnels.REPORT_INPUTS` by name (a missing one is drawn as
    "no data"); `source` names the database in the header.
    """
    flows = report_flows(frames, cfg)
    figures = build_figures(frames, cfg, flows)
    generated_at = generated_at or datetime.now(UTC)
    page = _page(frames, cfg, figures, flows, source, generated_at)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def _page(frames, cfg, figures, flows, source, generated_at) -> str:
    kpis = funnels.headline_kpis(_frame(frames, "kpis"))
    # The morning question first: what is broken and what does it cost. Then where journeys
    # go, and last whether the night's data can be trusted.
    sections = [
        ("kpis", "Key figures", _kpi_section(kpis, _frame(frames, "segments"), cfg)),
        ("blockers", "Conversion blockers", _blockers_section(_frame(frames, "blockers"))),
        ("sankey", "Journeys step by step", _sankey_section(figures, flows, cfg)),
        ("funnel", "Funnel", _funnel_section(figures, flows["funnel"])),
        ("paths", "Top paths", _paths_section(_frame(frames, "paths"), cfg.report.top_paths)),
        ("transitions", "Touchpoint to touchpoint", _figure_block(figures, "transitions_sankey")),
        ("quality", "Data quality", _quality_section(frames)),
    ]
    nav = " ".join(f'<a href="#{key}">{esc(title)}</a>' for key, title, _ in sections)
    body = "\n".join(
        f'<section id="{key}"><h2>{esc(title)}</h2>\n{content}\n</section>'
        for key, title, content in sections
    )
    period = ""
    if kpis["first_started_at"] and kpis["last_started_at"]:
        period = (
            f" · sessions from {esc(_date(kpis['first_started_at']))} "
            f"to {esc(_date(kpis['last_started_at']))}"
        )
    header = (
        "<header><h1>journeymap report</h1>"
        f"<p class=meta>{esc(source) + ' · ' if source else ''}"
        f"generated {esc(generated_at.strftime('%Y-%m-%d %H:%M %Z'))}{period}</p>"
        f"<nav>{nav}</nav></header>"
    )
    plotly_js = plotly.offline.get_plotlyjs()
    draw_js = _draw_script(figures)
    csp = (
        "default-src 'none'; "
        f"script-src '{_sha256(plotly_js)}' '{_sha256(draw_js)}'; "
        "style-src 'unsafe-inline'; img-src data: blob:; font-src data:; "
        "base-uri 'none'; form-action 'none'"
    )
    return (
        "<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>journeymap report</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"{header}\n<main>\n{body}\n</main>\n"
        "<footer>Made by journeymap from the marts of one DuckDB file. Works offline: "
        "nothing on this page loads from the network.</footer>\n"
        f"<script>{plotly_js}</script>\n<script>{draw_js}</script>\n</body>\n</html>\n"
    )


def _draw_script(figures: Mapping[str, go.Figure]) -> str:
    """One script that draws every figure into its `<div id="fig-NAME">`."""
    specs = ",\n".join(
        f'"fig-{name}": {_safe_json(pio.to_json(fig, validate=False))}'
        for name, fig in figures.items()
    )
    config = json.dumps(PLOTLY_CONFIG)
    return (
        "(function () {\n"
        f"var figures = {{{specs}}};\nvar config = {config};\n"
        "Object.keys(figures).forEach(function (id) {\n"
        "  var el = document.getElementById(id);\n"
        "  if (!el) { return; }\n"
        "  var fig = figures[id];\n"
        "  var cfg = Object.assign({}, config, "
        "{toImageButtonOptions: Object.assign({}, config.toImageButtonOptions, "
        "{filename: 'journeymap-' + id.slice(4)})});\n"
        "  Plotly.newPlot(el, fig.data, fig.layout, cfg);\n"
        "});\n})();"
    )


def _safe_json(text: str) -> str:
    """JSON that cannot end a `<script>` or open a comment, whatever the strings hold."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _sha256(script: str) -> str:
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return "sha256-" + base64.b64encode(digest).decode("ascii")


# ------------------------------------------------------------------------------ sections


def _kpi_section(kpis: dict, segments: pl.DataFrame, cfg: Config) -> str:
    who = "bots left out" if cfg.bots.exclude_from_journeys else "bots included"
    cards = [
        ("sessions", _int(kpis["n_sessions"]), f"journey sessions ({who})"),
        ("persons", _int(kpis["n_persons"]), "distinct persons"),
        ("converted", _int(kpis["n_converted"]), "sessions with a conversion"),
        ("conversion rate", _pct(kpis["conversion_rate"]), "converted / sessions"),
    ]
    if kpis["revenue"]:
        cards.append(("revenue", f"{kpis['revenue']:,.2f}", "sum over the sessions"))
    if cfg.bots.exclude_from_journeys:
        cards.append(("bot sessions", _int(kpis["n_bot_sessions"]), "stored, not counted above"))
    html_cards = "".join(
        f"<div class=card><div class=value>{esc(value)}</div><div class=name>{esc(name)}</div>"
        f"<div class=note>{esc(note)}</div></div>"
        for name, value, note in cards
    )
    tables = []
    if segments.height:
        by_segment = funnels.segment_kpis(segments)
        for dimension in ("device", "channel"):
            part = by_segment.filter(pl.col("dimension") == dimension)
            if not part.height:
                continue
            best = max(part["conversion_rate"].max() or 0.0, 1e-9)
            rows = [
                [
                    esc(row["value"]),
                    _int(row["n_sessions"]),
                    _pct(row["share"]),
                    _int(row["n_persons"]),
                    _int(row["n_converted"]),
                    _bar(row["conversion_rate"], best, GREEN),
                ]
                for row in part.iter_rows(named=True)
            ]
            tables.append(
                _table(
                    [dimension, "sessions", "share", "persons", "converted", "conversion rate"],
                    rows,
                    numeric=range(1, 6),
                    caption=f"By {dimension}",
                )
            )
    return f"<div class=cards>{html_cards}</div><div class=columns>{''.join(tables)}</div>"


def _quality_section(frames: Mapping[str, pl.DataFrame]) -> str:
    quality = funnels.run_quality(_frame(frames, "runs"))
    run = quality.run
    if run is None:
        return "<p class=empty>No successful run recorded yet.</p>"
    parts = []
    for failed in quality.failed_after:
        parts.append(
            f"<p class=warning>Run {esc(failed['run_id'])} ({esc(_date(failed['started_at']))}) "
            f"failed: {esc(failed.get('error') or 'no message')}. The figures below are from "
            f"run {esc(run['run_id'])}, the latest that completed.</p>"
        )
    check = (
        "<span class=ok>✓ read = accepted + duplicates + quarantined</span>"
        if quality.reconciles
        else "<span class=bad>✗ read ≠ accepted + duplicates + quarantined</span>"
    )
    cards = [
        ("rows read", run["n_read"]),
        ("accepted", run["n_accepted"]),
        ("duplicates", run["n_duplicates"]),
        ("quarantined", run["n_quarantined"]),
        ("bot sessions", run["n_bot_sessions"]),
    ]
    cards += [(f"nulled {field}", n) for field, n in sorted(quality.nulled_fields.items())]
    parts.append(
        f"<p class=meta>Run {esc(run['run_id'])}, {esc(_date(run['started_at']))} "
        f"(journeymap {esc(run.get('version') or '?')}) · {check}</p>"
        "<div class=cards>"
        + "".join(
            f"<div class='card small'><div class=value>{_int(value)}</div>"
            f"<div class=name>{esc(name)}</div></div>"
            for name, value in cards
        )
        + "</div>"
    )
    quarantine = _frame(frames, "quarantine")
    if quarantine.height:
        rows = [
            [
                esc(row["reason"]),
                _int(row["count_rows"]),
                _int(row["count_files"]),
                f"<code>{esc(row['example_raw'])}</code>",
            ]
            for row in quarantine.iter_rows(named=True)
        ]
        parts.append(
            _table(
                ["reason", "rows", "files", "example (as read, IPs masked)"],
                rows,
                numeric=(1, 2),
                caption="Quarantined rows by reason (all of them are kept in raw.quarantine)",
            )
        )
    files = _frame(frames, "run_files")
    if files.height:
        rows = [
            [
                esc(row["source"]),
                esc(row["format"]),
                _int(row["n_read"]),
                _int(row["n_accepted"]),
                _int(row["n_duplicates"]),
                _int(row["n_quarantined"]),
            ]
            for row in files.iter_rows(named=True)
        ]
        parts.append(
            _table(
                ["file", "format", "read", "accepted", "duplicates", "quarantined"],
                rows,
                numeric=range(2, 6),
                caption="Per input file",
            )
        )
    return "\n".join(parts)


def _sankey_section(figures, flows, cfg: Config) -> str:
    rc = cfg.report
    parts = [
        "<p class=lead>Column <i>k</i> is the <i>k</i>-th touchpoint of each journey "
        "(repeats of one page count once). After every step a journey goes on, ends "
        f"<span class=red>without buying (red)</span> or has "
        f"<span class=green>converted (green)</span>. The {rc.sankey_top_k} busiest touchpoints "
        "of each step are drawn, the rest are grouped as <i>Others</i>; hover a node or a "
        "band for its sessions and its share of the step before.</p>",
        _figure_block(figures, "step_sankey"),
    ]
    if rc.sankey_anchor:
        parts.append(
            _figure_block(figures, "anchored_sankey", f"No journey visits {rc.sankey_anchor}.")
        )
    parts.append(
        "<p class=lead>Read from the right: the steps that led to each purchase, counted "
        "back from the conversion step. Journeys start where the grey <i>Start</i> bands enter; "
        "longer journeys come in from <i>Earlier steps</i>.</p>"
    )
    parts.append(_figure_block(figures, "conversion_sankey", "No converted journeys yet."))
    return "\n".join(parts)


def _funnel_section(figures, funnel: pl.DataFrame) -> str:
    rows = [
        [
            _int(row["step"]),
            esc(row["touchpoint"]),
            _int(row["n_sessions"]),
            _pct(row["share_of_journeys"]),
            _pct(row["conversion_from_previous"]),
            f"<span class=red>{_int(row['drop_off'])}</span>",
        ]
        for row in funnel.iter_rows(named=True)
    ]
    table = _table(
        ["step", "touchpoint", "sessions", "of journeys", "of previous step", "drop-off"],
        rows,
        numeric=(0, 2, 3, 4, 5),
        caption="A session counts at a step when its journey reached that step and every "
        "step before it, in this order (other pages in between are fine). Step 1 compares "
        "with all journeys.",
    )
    return _figure_block(figures, "funnel", "No journey reaches the first funnel step.") + table


def _blockers_section(blockers: pl.DataFrame) -> str:
    if not blockers.height:
        return (
            "<p class=empty>No blockers: no touchpoint or segment loses conversions beyond "
            "chance.</p>"
        )
    rows = [
        [
            _int(row["rank"]),
            esc(row["touchpoint"]),
            esc(row["segment"]),
            f"<span class='badge {esc(row['kind'])}'>{esc(row['kind'])}</span>",
            f"{row['lost_conversions']:,.1f}" if row["lost_conversions"] is not None else "",
            esc(row["evidence"]),
        ]
        for row in blockers.iter_rows(named=True)
    ]
    return _table(
        ["#", "touchpoint", "segment", "kind", "lost conversions", "evidence"],
        rows,
        numeric=(0, 4),
        caption="Ranked by estimated lost conversions (a cautious estimate), not by raw exits.",
    )


def _paths_section(paths: pl.DataFrame, top: int) -> str:
    if not paths.height:
        return "<p class=empty>No paths yet.</p>"
    blocks = []
    for outcome, title in (("converted", "Converting paths"), ("abandoned", "Abandoning paths")):
        part = paths.filter(
            (pl.col("outcome") == outcome)
            & (pl.col("variant") == "exact")
            & (pl.col("rank") <= top)
        ).sort("rank")
        rows = []
        for row in part.iter_rows(named=True):
            cells = [
                _int(row["rank"]),
                " <span class=arrow>›</span> ".join(
                    esc(step) for step in row["path"].split(PATH_SEPARATOR)
                ),
                _int(row["n_sessions"]),
                _pct(row["share"]),
                f"{row['median_steps']:.0f}" if row["median_steps"] is not None else "",
            ]
            if outcome == "converted":
                seconds = row["median_seconds_to_convert"]
                cells.append(_duration(seconds))
            rows.append(cells)
        headers = ["#", "path", "sessions", f"of {outcome}", "median steps"]
        if outcome == "converted":
            headers.append("median time to convert")
        blocks.append(_table(headers, rows, numeric=(0, 2, 3, 4, 5), caption=title, empty="none"))
    return "".join(blocks)


def _figure_block(figures, name: str, empty: str = "No data for this chart yet.") -> str:
    if name not in figures:
        return f"<p class=empty>{esc(empty)}</p>"
    return f'<div class=chart id="fig-{esc(name)}"></div>'


# ------------------------------------------------------------------------------- helpers


def _table(
    headers: list[str],
    rows: list[list[str]],
    *,
    numeric: Iterable[int] = (),
    caption: str = "",
    empty: str = "no rows",
) -> str:
    """An HTML table of cells that are already escaped (headers are escaped here)."""
    numeric = set(numeric)
    head = "".join(
        f"<th{' class=num' if i in numeric else ''}>{esc(h)}</th>" for i, h in enumerate(headers)
    )
    if not rows:
        body = f"<tr><td colspan={len(headers)} class=empty>{esc(empty)}</td></tr>"
    else:
        body = "".join(
            "<tr>"
            + "".join(
                f"<td{' class=num' if i in numeric else ''}>{cell}</td>"
                for i, cell in enumerate(row)
            )
            + "</tr>"
            for row in rows
        )
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _frame(
    frames: Mapping[str, pl.DataFrame], name: str, schema: Mapping | None = None
) -> pl.DataFrame:
    frame = frames.get(name)
    if frame is None:
        return pl.DataFrame(schema=dict(schema) if schema else None)
    return frame


def _short(text: object) -> str:
    """An escaped label, cut to LABEL_CHARS characters."""
    text = "" if text is None else str(text)
    if len(text) > LABEL_CHARS:
        text = text[: LABEL_CHARS - 1] + "…"
    return esc(text)


def _pct(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 100:.1f}%"


def _pct_short(value: float | None) -> str:
    """A share for a chart label: "22%", "4.5%", "<0.1%"."""
    if value is None:
        return ""
    if 0 < value < 0.001:
        return "<0.1%"
    return f"{value * 100:.0f}%" if value >= 0.1 else f"{value * 100:.1f}%"


def _int(value) -> str:
    return "–" if value is None else f"{int(value):,}"


def _bar(value: float | None, best: float, colour: str) -> str:
    if value is None:
        return "–"
    width = max(0.0, min(1.0, value / best)) * 100
    return (
        f"<span class=bar><span style='width:{width:.0f}%;background:{colour}'></span></span>"
        f"{_pct(value)}"
    )


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _date(value) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "" if value is None else str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


# ------------------------------------------------------------------------------ PNG export


def export_png(figures: Mapping[str, go.Figure], out_dir: Path, width: int = 1400) -> list[Path]:
    """Write each figure as `out_dir/NAME.png` with kaleido and a local Chrome/Chromium.

    Strictly offline: plotly.js comes from the installed plotly package and MathJax is off
    (kaleido would otherwise ask a CDN for it). Raises `UsageError` saying what to install
    when kaleido or a browser is missing.
    """
    try:
        import kaleido
    except ImportError as err:
        raise UsageError(
            "PNG export needs kaleido: pip install 'kaleido>=1' (and a Chromium, e.g. "
            "apt-get install chromium)"
        ) from err
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    specs = []
    paths = []
    for name, figure in figures.items():
        path = out_dir / f"{name}.png"
        height = figure.layout.height or 600
        specs.append(
            {
                "fig": figure.to_dict(),
                "path": path,
                "opts": {"format": "png", "width": width, "height": height, "scale": 1},
            }
        )
        paths.append(path)
    try:
        kaleido.write_fig_from_object_sync(
            specs, kopts={"plotlyjs": plotly_js.as_uri(), "mathjax": False}
        )
    except Exception as err:  # kaleido's errors (no browser, browser crashed) vary by version
        raise UsageError(
            f"PNG export failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}):"
            " install a Chromium (apt-get install chromium) or set BROWSER_PATH to one"
        ) from err
    return paths


CSS = """
:root { --fg: #1d1d1f; --muted: #666; --line: #e3e3e3; --bg: #fafafa; --red: #d62728;
        --green: #2ca02c; --blue: #1f77b4; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica,
       Arial, sans-serif; color: var(--fg); background: var(--bg); }
header { background: #fff; border-bottom: 1px solid var(--line); padding: 16px 28px 10px;
         position: sticky; top: 0; z-index: 10; }
h1 { font-size: 20px; margin: 0 0 2px; }
h2 { font-size: 17px; margin: 0 0 10px; }
nav a { margin-right: 14px; color: var(--blue); text-decoration: none; font-size: 13px; }
main { padding: 8px 28px 28px; max-width: 1500px; margin: 0 auto; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 18px;
          margin: 16px 0; }
.meta { color: var(--muted); margin: 0 0 8px; font-size: 13px; }
.lead { color: #333; max-width: 900px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 6px 0 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; min-width: 150px;
        background: #fff; }
.card .value { font-size: 24px; font-weight: 600; }
.card.small .value { font-size: 18px; }
.card .name { font-weight: 600; color: #333; }
.card .note { color: var(--muted); font-size: 12px; }
.columns { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.columns > table { flex: 1 1 420px; }
table { border-collapse: collapse; margin: 10px 0; font-size: 13px; width: 100%; }
caption { text-align: left; font-weight: 600; padding: 4px 0 6px; color: #333; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: left;
         vertical-align: top; }
th { background: #f4f4f4; font-weight: 600; }
td.num, th.num { text-align: right; white-space: nowrap; }
td code { font-size: 12px; white-space: pre-wrap; word-break: break-all; color: #444; }
.chart { width: 100%; min-height: 300px; margin: 8px 0 4px; }
.empty { color: var(--muted); font-style: italic; }
.warning { background: #fff4e5; border: 1px solid #f0c36d; padding: 8px 12px; border-radius: 6px; }
.red { color: var(--red); font-weight: 600; }
.green { color: var(--green); font-weight: 600; }
.ok { color: var(--green); }
.bad { color: var(--red); font-weight: 600; }
.arrow { color: var(--muted); }
.bar { display: inline-block; width: 80px; height: 9px; background: #eee; border-radius: 4px;
       margin-right: 6px; vertical-align: middle; overflow: hidden; }
.bar > span { display: block; height: 100%; }
.badge { border-radius: 10px; padding: 1px 8px; font-size: 12px; background: #eee; }
.badge.error { background: #fde0e0; color: #a11; }
.badge.loop { background: #fff0d6; color: #8a5a00; }
.badge.dead_end { background: #e8e0f5; color: #4b2b83; }
.badge.segment { background: #e0ecf8; color: #1b4f80; }
footer { color: var(--muted); font-size: 12px; padding: 0 28px 24px; max-width: 1500px;
         margin: 0 auto; }
"""
