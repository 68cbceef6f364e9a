"""Frame helpers of `pipeline.schemas`: dropping exact duplicate rows by hash, exactly."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from pipeline import schemas

T0 = datetime(2026, 10, 5, 7, 0, tzinfo=UTC)


def _rows() -> pl.DataFrame:
    """e1 three times (one differs only in its status), an all-null row twice, e2 once."""
    return pl.DataFrame(
        [
            ("e1", T0, "/cart", 200),
            (None, None, None, None),
            ("e1", T0, "/cart", 200),
            ("e2", T0, "/cart", 200),
            ("e1", T0, "/cart", 500),
            (None, None, None, None),
            ("e1", T0, "/cart", 200),
        ],
        schema={
            "event_id": pl.String,
            "ts": pl.Datetime("us", "UTC"),
            "url": pl.String,
            "status": pl.Int16,
        },
        orient="row",
    )


@pytest.mark.parametrize("colliding", [False, True], ids=["hashes", "every-row-one-hash"])
def test_duplicate_rows_are_dropped_exactly_first_kept_in_order(colliding, monkeypatch):
    """Rows 0, 1, 3 and 4 are the first of their kind; rows 2, 5 and 6 repeat one. With
    every row sharing one hash, rows are told apart by their values: e1/500 stays."""
    if colliding:
        monkeypatch.setattr(
            schemas, "row_hash", lambda frame: pl.Series([7] * frame.height, dtype=pl.UInt64)
        )
    frame = _rows()
    kept = schemas.without_duplicate_rows(frame)
    assert_frame_equal(kept, frame[[0, 1, 3, 4]])


def test_a_frame_without_duplicates_is_returned_as_it_is():
    frame = _rows()[[0, 1, 3, 4]]
    assert schemas.without_duplicate_rows(frame) is frame
    empty = frame.head(0)
    assert_frame_equal(schemas.without_duplicate_rows(empty), empty)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", None]),
            st.integers(min_value=0, max_value=2) | st.none(),
        ),
        max_size=40,
    )
)
def test_same_rows_as_unique_keeping_the_first(rows):
    frame = pl.DataFrame(rows, schema={"id": pl.String, "n": pl.Int64}, orient="row")
    expected = frame.unique(keep="first", maintain_order=True)
    assert_frame_equal(schemas.without_duplicate_rows(frame), expected)
