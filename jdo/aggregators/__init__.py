"""Robust aggregation rules on stacked ``[W, ...]`` pytrees (one input per worker).

Rules (the leading axis removed): :func:`mean`, :func:`coordinate_median`,
:func:`trimmed_mean`, :func:`krum`, :func:`multi_krum`, :func:`geometric_median`,
:func:`centered_clipping`. Pre-aggregations (the leading axis kept):
:func:`nearest_neighbor_mixing`, :func:`bucketing`. All are pure and jittable, measure norms
and distances over the whole flattened pytree, and know nothing of models, workers or
collectives; :func:`jdo.transforms.robust_all_reduce` all-gathers the workers' updates and
applies one.

What each rule needs (``f``: Byzantine inputs out of ``W``):

========================  ===============  ==================================================
rule                      inputs           guarantee assumes
========================  ===============  ==================================================
mean                      any              no Byzantine input (f = 0)
coordinate_median         (f < W/2)        honest majority, bounded heterogeneity
trimmed_mean(f)           2f < W           honest majority, bounded heterogeneity
krum(f), multi_krum(f,m)  W > 2f + 2       honest majority, bounded variance (i.i.d. data)
geometric_median          (f < W/2)        honest majority, bounded heterogeneity
centered_clipping(tau)    (f < W/2)        small Byzantine fraction, bounded variance around
                                           the center (the previous aggregate, momentum)
nearest_neighbor_mixing   2f < W           makes the rule after it robust under bounded
                                           heterogeneity (Allouah et al. 2023)
bucketing(s)              s <= W           the rule after it must tolerate s·f bad buckets
========================  ===============  ==================================================

Bind hyperparameters and chain a pre-aggregation before a rule with :func:`aggregator` and
:func:`compose`: ``compose(aggregator("nearest_neighbor_mixing", f=2),
aggregator("centered_clipping", tau=1.0))``.
"""

from jdo.aggregators.compose import (
    PRE_AGGREGATIONS,
    RULES,
    Aggregator,
    Stage,
    aggregator,
    compose,
    pipeline,
)
from jdo.aggregators.pre import bucketing, nearest_neighbor_mixing
from jdo.aggregators.rules import (
    centered_clipping,
    coordinate_median,
    geometric_median,
    krum,
    krum_scores,
    mean,
    multi_krum,
    trimmed_mean,
)

__all__ = [
    "PRE_AGGREGATIONS",
    "RULES",
    "Aggregator",
    "Stage",
    "aggregator",
    "bucketing",
    "centered_clipping",
    "compose",
    "pipeline",
    "coordinate_median",
    "geometric_median",
    "krum",
    "krum_scores",
    "mean",
    "multi_krum",
    "nearest_neighbor_mixing",
    "trimmed_mean",
]
