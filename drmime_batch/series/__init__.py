"""Serial sections as one series: many slides into one reference frame, in parallel, without drift.

A series is submitted as ordinary pairs of the queue (each slide with its neighbour towards the
reference and with slides further away), run like any batch, then composed: every slide's
transform into the reference frame, made consistent over all links, written at
``STORE/ID/<slide_id>/transform``, plus an OME-Zarr ``STORE/ID/stack``.

Torch- and dask-free to import (the stack writer loads dask when called).
"""

from drmime_batch.series._compose import compose_finished, compose_series, link_weight
from drmime_batch.series._consistent import LinkMatrix, SeriesSolution, chain_transforms, solve_consistent
from drmime_batch.series._plan import SeriesLink, SeriesPlan, SeriesSlide, plan_series, read_slides
from drmime_batch.series._show import SLIDE_KEYS, series_links, series_rows
from drmime_batch.series._submit import series_status, submit_series

__all__ = [
    "SLIDE_KEYS", "LinkMatrix", "SeriesLink", "SeriesPlan", "SeriesSlide", "SeriesSolution", "chain_transforms",
    "compose_finished", "compose_series", "link_weight", "plan_series", "read_slides", "series_links", "series_rows", "series_status",
    "solve_consistent", "submit_series",
]
