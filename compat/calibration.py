"""Score calibration for mixed-version merges: bridged scores onto the query version's native scale.

A mixed gallery ranks items of two kinds together: migrated ones by a native score (new query vs new
vector) and the rest by a bridged score (bridged query vs old vector). The two live on different
scales (a contrastive bridge's cosines are not MPNet's), so a raw merge lets whichever kind scores
higher crowd the top. :class:`Calibration` is a monotone map fitted where both scores exist for
the same (query, item) pairs: it changes no ranking within a space, only how the two interleave.

Used by serving (``index.search`` fits one per searcher snapshot, i.e. per migration wave, on the
items both spaces hold) and by the measured backfilling curves (:mod:`compat.backfill_curves`), which
do the same per backfill fraction. Pure numpy, no I/O.
"""

from __future__ import annotations

import dataclasses

import numpy as np

MIN_CALIBRATION_PAIRS = 200  # fewer (query, item) pairs: keep raw scores


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A monotone map from a bridged space's scores to the query version's native scale.

    Method: items a migration has moved still have their old vector in the source space and now
    have a new one, so for pseudo-queries q (vectors sampled from the native space: the query
    distribution, for galleries that are queried with their own kind of content) the same pair
    (q, item) has a bridged score b and a native score n. Per query, the j-th best bridged score
    is paired with the j-th best native score (rank matching: what an item ranked j-th scores
    natively); the map is the binned mean of those pairs, bins on quantiles of b that get finer
    towards the top (where rankings are decided), made monotone, extended with slope 1.
    Without enough shared items (no migration yet) it is the identity: ``calibrated`` = ``score``.
    """

    x: np.ndarray  # (b,) increasing bridged-score knots
    y: np.ndarray  # (b,) non-decreasing native-score values at the knots
    pairs: int  # (query, item) pairs it was fitted on

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        if len(self.x) == 0:
            return scores
        inside = np.interp(scores, self.x, self.y)
        below = self.y[0] + (scores - self.x[0])
        above = self.y[-1] + (scores - self.x[-1])
        return np.where(scores < self.x[0], below, np.where(scores > self.x[-1], above, inside))


IDENTITY = Calibration(np.empty(0), np.empty(0), 0)


def fit_calibration(bridged: np.ndarray, native: np.ndarray, bins: int = 24) -> Calibration:
    """bridged, native (P,): scores of the same (query, item) pairs in the two spaces."""
    bridged, native = np.ravel(bridged), np.ravel(native)
    if len(bridged) < MIN_CALIBRATION_PAIRS:
        return IDENTITY
    order = np.argsort(bridged, kind="stable")
    b, n = bridged[order], native[order]
    levels = np.concatenate([[0.0], 1.0 - np.geomspace(1.0, 1e-3, bins)[1:], [1.0]])
    edges = np.unique((levels * len(b)).astype(int))
    x = np.array([b[lo:hi].mean() for lo, hi in zip(edges[:-1], edges[1:], strict=True)])
    y = np.array([n[lo:hi].mean() for lo, hi in zip(edges[:-1], edges[1:], strict=True)])
    x, first = np.unique(x, return_index=True)  # strictly increasing knots for interp
    return Calibration(x, np.maximum.accumulate(y[first]), len(b))


def rank_matched_calibration(
    bridged: np.ndarray, native: np.ndarray, exclude: np.ndarray | None = None
) -> Calibration:
    """bridged, native (P, I): pseudo-query p's scores for item i in each space; -inf = no evidence.

    Pairs each query's j-th best bridged score with its j-th best native score: the native score
    an item ranked j-th would get. Pairing by item instead fits E[n | b], which shrinks towards the
    mean and ranks confident bridged hits too low when native scores are more spread. ``exclude``
    (P, I) bool marks pairs that are no evidence (a pseudo-query's own item); they and entries
    that are -inf in either matrix sort first and are dropped.
    """
    if exclude is not None:
        bridged, native = np.where(exclude, -np.inf, bridged), np.where(exclude, -np.inf, native)
    b, n = np.sort(bridged, axis=1), np.sort(native, axis=1)
    keep = np.isfinite(b) & np.isfinite(n)
    return fit_calibration(b[keep], n[keep])
