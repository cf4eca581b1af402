"""The seeds of a training run: every random stream the trainer and its schedules draw from is seeded by
:func:`derive_seed` from the run's ``seed``, the stream's name and, for the per-epoch streams, the epoch.

Per-epoch streams are seeded from ``(seed, epoch)`` alone, never from a generator state carried across epochs,
so a run resumed from the checkpoint of epoch ``e`` draws exactly what the uninterrupted run drew from epoch
``e + 1`` on. The seeds are hashed by numpy's ``SeedSequence`` (built for deriving independent seeds) rather
than computed as, e.g., ``seed * 1000 + epoch``: arithmetic makes different streams share a seed (run seed 1
at epoch 0 and run seed 0 at epoch 1000 would shuffle alike), hashing keeps every (seed, stream, epoch) apart.
"""
from __future__ import annotations

import numpy as np

#: the random streams of a run, by name (the order is part of the derivation: append new streams, never reorder)
STREAMS = (
    "init",            # the network's initial weights (torch's global generator while it is built)
    "shuffle",         # the order of the training set in an epoch (DataLoader / DistributedSampler generator)
    "flip",            # which samples of an epoch's batches are mirrored
    "global",          # torch's global generator during an epoch: dropout, Gumbel noise, the loaders' scale crops
    "adashare_split",  # AdaShare's two fixed halves of the training set (weight and policy steps)
    "new_head",        # the initial weights of the head Medusa's UFL protocol attaches
    "adashare_weight_steps",  # the order of AdaShare's weight steps over their half, pass after pass
    "adashare_policy_steps",  # the order of its policy steps over the other half
)


def derive_seed(seed: int, stream: str, epoch: int = 0) -> int:
    """The seed (an int in [0, 2**63)) of random stream ``stream`` (one of :data:`STREAMS`) of a run with seed
    ``seed`` in epoch ``epoch`` (0 for the streams that are not per epoch)."""
    for name, value in (("seed", seed), ("epoch", epoch)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"derive_seed: {name} must be a non-negative int, got {value!r}")
    if stream not in STREAMS:
        raise ValueError(f"derive_seed: stream must be one of {STREAMS}, got {stream!r}")
    sequence = np.random.SeedSequence(int(seed), spawn_key=(STREAMS.index(stream), int(epoch)))
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))
