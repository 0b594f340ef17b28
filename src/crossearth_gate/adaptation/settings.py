"""The ``adaptation:`` config section: DACS self-training knobs (docs/method.md §3, DACS's defaults)."""

from __future__ import annotations

from dataclasses import dataclass

ADAPTATION_METHODS = ("none", "dacs")
FISHER_DATA = ("source", "target", "both")


@dataclass
class AdaptationConfig:
    """Read only when ``train.adaptation`` is ``dacs``; ``none`` trains on the source alone (DG)."""

    ema_alpha: float = 0.99  # teacher ← α·teacher + (1 − α)·student after every optimiser step
    confidence: float = 0.968  # τ: a mixed image's weight is its share of pixels the teacher is surer of
    mix_weight: float = 1.0  # λ in CE(source) + λ·w·CE(mixed)
    jitter_p: float = 0.8  # probability of colour jitter on a mixed image (DACS)
    jitter_strength: float = 0.2  # brightness/contrast/saturation factors drawn from [1 − s, 1 + s]
    blur_p: float = 0.5  # probability of a Gaussian blur on a mixed image (DACS)
    blur_sigma: tuple[float, float] = (0.15, 1.15)
    transductive: bool = False  # true: the unlabelled training images may also be the scored test images
