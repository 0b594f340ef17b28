"""The ``adaptation:`` config section: DACS self-training knobs (docs/method.md §3, DACS's defaults)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..util.checks import at_least, in_unit_interval, require

AdaptationMethod = Literal["none", "dacs"]  # train.adaptation: none (domain generalisation) | dacs (self-training)
FisherData = Literal["source", "target", "both"]  # gate.fisher_data: which images the gate scores


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

    def __post_init__(self) -> None:
        in_unit_interval(self.ema_alpha, "adaptation.ema_alpha", open_high=True)
        in_unit_interval(self.confidence, "adaptation.confidence", open_high=True)
        at_least(self.mix_weight, 0, "adaptation.mix_weight")
        in_unit_interval(self.jitter_p, "adaptation.jitter_p")
        in_unit_interval(self.jitter_strength, "adaptation.jitter_strength")
        in_unit_interval(self.blur_p, "adaptation.blur_p")
        sigma = list(self.blur_sigma)
        require(len(sigma) == 2 and 0 < sigma[0] <= sigma[1] < math.inf, "adaptation.blur_sigma",
                "must be [min, max] with 0 < min <= max", sigma)
