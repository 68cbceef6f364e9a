# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Exploring customer journeys
#
# A guided tour of the journeymap database for an e-commerce analyst: the key figures, a few
# ad-hoc questions in SQL, the ranked conversion blockers, and the same step Sankey and funnel
# as the HTML report, drawn by the project's own code.
#
# **Where the data comes from.** `make demo` runs the pipeline on `data/sample/` and writes
# `data/out/journeymap.duckdb`. To look at another database (last night's production file, a
# copy of it), set the environment variable `JOURNEYMAP_DB` to its path before starting
# Jupyter; otherwise the notebook opens `data/out/journeymap.duckdb` in this repository.
#
# **Why read-only.** The nightly run never writes the published file in place: it builds the
# new state in a work file beside it and renames that over the published one, in one atomic
# step. A read-only connection keeps reading the state it opened, never blocks that run, and
# lets other readers (the report, a colleague's notebook) open the file at the same time. A
# read-write connection would lock everyone else out of the file and could change the marts by
# accident, changes the next run would silently throw away. Re-run this cell to see a newer
# night's data.
#
# The figures are shown with Plotly's `plotly_mimetype` renderer: JupyterLab, Notebook 7 and
# VS Code draw it, and it needs no network, so `make test` can run this notebook headless.

# %%
import os
from pathlib import Path

import duckdb
import plotly.io as pio
import polars as pl

from pipeline import funnels, report
from pipeline.config import load_config

pio.renderers.default = "plotly_mimetype"
pl.Config.set_fmt_str_lengths(80)  # show URLs and touchpoint names whole
pl.Config.set_tbl_rows(20)


def find_repo(start: Path) -> Path:
    """The repository root: the first folder up from `start` that holds the pipeline."""
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "pipeline").is_dir():
            return folder
    raise FileNotFoundError(f"no journeymap repository above {start}: start Jupyter inside it")


REPO = find_repo(Path.cwd().resolve())
DB = Path(os.environ.get("JOURNEYMAP_DB") or REPO / "data" / "out" / "journeymap.duckdb")
if not DB.is_file():
    raise FileNotFoundError(f"{DB} does not exist: run `make demo` first (or set JOURNEYMAP_DB)")

cfg = load_config(REPO / "data" / "sample" / "journeymap.toml")
con = duckdb.connect(str(DB), read_only=True)
# Days are UTC days in the marts (as in the pipeline), whatever this machine's time zone is.
con.execute("set TimeZone = 'UTC'")


def query(sql: str, params: list | None = None) -> pl.DataFrame:
    """Run SQL on the database and hand back a Polars frame (Arrow in between, no copy)."""
    return pl.from_arrow(con.sql(sql, params=params).to_arrow_table())


DB

# %% [markdown]
# ## Key figures
#
# Every journey metric counts **human** sessions: bots are flagged by the pipeline
# (`is_bot`) and left out, as in the report. A session *converts* when it reaches an order
# confirmation. Compare the conversion rate with your shop's usual one: a sudden drop is the
# first sign that something in the funnel broke.

# %%
query(
    """
    select
        count(*) as count_sessions,
        count(distinct person_id) as count_persons,
        count(*) filter (where is_converted) as count_converted_sessions,
        round(count(*) filter (where is_converted) / count(*), 4) as conversion_rate,
        round(coalesce(sum(revenue), 0), 2) as revenue,
        min(started_at) as first_started_at,
        max(started_at) as last_started_at,
    from marts.sessions
    where not is_bot
    """
)

# %% [markdown]
# ## Sessions by day and channel
#
# `marts.sessions_by_day` has one row per UTC day, channel and device. Pivoting the channels
# into columns shows the traffic mix over time: look for a channel that disappears (a broken
# campaign tag, an expired ad budget) or a day that is out of line with the rest.

# %%
daily = query("from marts.sessions_by_day")
daily.pivot(
    on="channel",
    index="session_date",
    values="count_sessions",
    aggregate_function="sum",
    sort_columns=True,
).fill_null(0).sort("session_date")

# %% [markdown]
# ## Conversion by device
#
# The same question per device. A device whose conversion rate is far below the others
# while its traffic is normal usually points at a technical problem (a payment form that
# fails on one browser) rather than at less interested customers.

# %%
query(
    """
    select
        coalesce(device, 'unknown') as device,
        count(*) as count_sessions,
        count(*) filter (where is_converted) as count_converted_sessions,
        round(count(*) filter (where is_converted) / count(*), 4) as conversion_rate,
        round(coalesce(sum(revenue), 0) / count(*), 2) as revenue_per_session,
    from marts.sessions
    where not is_bot
    group by all
    order by count_sessions desc
    """
)

# %% [markdown]
# ## Where do sessions end without a purchase?
#
# The last page of every human session that did not convert, most frequent first. Product
# and category pages are normal places to leave; checkout pages, an empty search result or
# an error page high on this list are not.

# %%
query(
    """
    with lost as (
        select exit_url from marts.sessions where not is_bot and not is_converted
    )

    select
        exit_url,
        count(*) as count_sessions,
        round(count(*) / sum(count(*)) over (), 4) as share_of_lost_sessions,
    from lost
    group by exit_url
    order by count_sessions desc, exit_url
    limit 15
    """
)

# %% [markdown]
# ## The ranked conversion blockers
#
# `marts.blockers` is the pipeline's answer to "what should we fix first?": touchpoints (or
# loops between two of them) where sessions stop, ranked by the conversions they cost. Each
# comes with its kind (`error`, `dead_end`, `loop`, ...), the segment it applies to, and the
# evidence in plain words: read the evidence before acting on the rank.

# %% tags=["blockers"]
blockers = query("from marts.blockers order by rank")
for row in blockers.iter_rows(named=True):
    print(
        f"{row['rank']}. {row['touchpoint']}  [{row['kind']}, segment {row['segment']}]"
        f"  ~{row['lost_conversions']:.0f} lost conversions"
    )
    print(f"   {row['evidence']}")
if blockers.is_empty():
    print("no blockers found in this database")

# %% [markdown]
# ## Journeys step by step (the Sankey)
#
# The charts below are the report's own: `funnels.REPORT_INPUTS` holds the SQL the report
# reads, `report.report_flows` turns those frames into Sankey flows and the funnel, and
# `report.build_figures` draws them. So this notebook and `data/out/report.html` always show
# the same numbers.
#
# Each column is one step of the journey; red flows are sessions that ended there, green ones
# bought. Follow the thickest flows: that is what most customers actually do, which is
# rarely the path the site was designed for. Hover a node for counts and shares.

# %% tags=["sankey"]
frames = {name: query(sql) for name, sql in funnels.REPORT_INPUTS.items()}
flows = report.report_flows(frames, cfg)
figures = report.build_figures(frames, cfg, flows)
print("charts available:", ", ".join(figures))
figures["step_sankey"].show()

# %% [markdown]
# ## The funnel
#
# Sessions that reached each funnel step (`[report] funnel_steps` in the config), in this
# order. The table holds the numbers behind the chart: `conversion_from_previous` is the
# share of the step before that made it here, `drop_off` the sessions lost on the way. The
# step with the largest drop-off is where to look first, together with the blockers above.

# %% tags=["funnel"]
figures["funnel"].show()
flows["funnel"]

# %% [markdown]
# ## A peek at the transition graph: what happens after the cart?
#
# `marts.transitions` counts every move from one touchpoint to the next (`EXIT` and
# `CONVERSION` mark the end of a session). The moves out of the cart show whether customers
# go on to checkout, go back to shopping, or leave. The touchpoint is a bound parameter:
# change `touchpoint` to look at another one (names are in `marts.touchpoints`).

# %% tags=["transitions"]
touchpoint = "cart"
query(
    """
    select
        to_touchpoint,
        n_transitions,
        n_sessions,
        round(n_transitions / sum(n_transitions) over (), 4) as share_of_transitions,
        median_seconds,
    from marts.transitions
    where from_touchpoint = ?
    order by n_transitions desc, to_touchpoint
    limit 10
    """,
    [touchpoint],
)

# %% [markdown]
# ## Done
#
# Close the connection: an open reader is harmless to the nightly run, but a closed one also
# lets the old database file go once a new one has been published.

# %%
con.close()
