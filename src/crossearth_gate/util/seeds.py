"""Derived seeds: the one seed of a run (``train.seed``) gives each of its random streams a seed of its own."""

from typing import Literal

Stream = Literal["fisher_samples", "target_stream", "target_order", "target_crops", "classmix"]

_STREAMS: dict[str, tuple[int, int, int]] = {  # stream: (offset, stride per index, stride per rank)
    "fisher_samples": (0, 7919, 104729),  # the gate's samples; index = selection number
    "target_stream": (7, 0, 0),  # DA: the base seed of the unlabelled target stream
    "target_order": (0, 7919, 0),  # DA: the image order of one pass; base = the stream's seed, index = pass
    "target_crops": (0, 0, 1_000_003),  # DA: each rank's crop generator; base = the stream's seed
    "classmix": (104723, 0, 1_000_003),  # DA: each rank's ClassMix and augmentation generator
}


def derive_seed(base: int, stream: Stream, *, index: int = 0, rank: int = 0) -> int:
    """``base + offset + index_stride * index + rank_stride * rank`` for one named stream.

    Why separate streams: each draws from its own generator, so drawing from one never shifts another
    (which is what lets a killed run resume exactly), and different selections, passes and ranks draw
    different samples. The offsets and strides are primes (7, 7919, 104723, 104729, 1_000_003), so the
    streams of nearby base seeds rarely meet. They are frozen: changing one changes every run's numbers.
    """
    offset, index_stride, rank_stride = _STREAMS[stream]
    return base + offset + index_stride * index + rank_stride * rank
