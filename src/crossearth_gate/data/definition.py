"""A dataset defined in YAML: classes, palette, label encoding, where the files are, bands and nodata.

The ten named datasets are presets of this same form (``data/presets.yaml``), so a user's dataset and a
benchmark's go through one code path: ``DatasetDef.resolve`` turns either into the ``DatasetInfo`` that
reading, label decoding and radiometry use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from crossearth_gate.util.errors import UserError
from crossearth_gate.util.labels import IGNORE_INDEX

RGB = tuple[int, int, int]
LAYOUTS = ("files", "mmseg", "dubai", "casid", "rescuenet")
NORMALISE = ("auto", "imagenet", "statistics")
MISSING = ("error", "warn")
_HEX = re.compile(r"^#?[0-9a-fA-F]{6}$")


@dataclass(frozen=True)
class PolygonLabels:
    """Vector labels: where the polygons are and how their attribute becomes classes (burnt onto each image's
    grid by ``crossearth_gate.data.vector``).

    ``order``: class names in painting order, later over earlier (classes not listed are painted first,
    in class order; default: class order). ``fill``: the class of pixels under no polygon (None: ignore,
    255). ``values``: raw attribute value → class name, for layers that store codes (default: the value
    is the class name). Checked here, so YAML and Python callers get the same one-line errors.
    """

    path: str = ""
    class_attribute: str = ""
    layer: str | None = None
    order: tuple[str, ...] | None = None
    fill: str | None = None
    values: dict[str, str] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        where = "labels.polygons"
        for key in ("path", "class_attribute"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise UserError(f"{where}: {key} must be a non-empty string")
        for key in ("layer", "fill"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                raise UserError(f"{where}.{key}: expected a string, got {getattr(self, key)!r}")
        order, values = self.order, self.values
        if order is not None and not (isinstance(order, list | tuple) and all(isinstance(c, str) for c in order)):
            raise UserError(f"{where}.order: expected a list of class names, got {order!r}")
        if values is not None and not (isinstance(values, dict) and all(isinstance(c, str) for c in values.values())):
            raise UserError(f"{where}.values: expected a mapping of attribute value to class name, got {values!r}")
        # frozen: normalised in place once, so a spec is hashable and its attribute values compare as text
        object.__setattr__(self, "order", None if order is None else tuple(order))
        object.__setattr__(self, "values", None if values is None else {str(k): v for k, v in values.items()})


@dataclass
class LabelDef:
    """How labels are found and what their values mean.

    ``pattern``: the label file of an image, relative to the domain root; ``{stem}``, ``{name}``,
    ``{suffix}``, ``{dir}`` (the image's folder relative to the root) and ``{split}`` are filled in.
    ``values``: stored value → class name (default: value i is class i); ``colours``: ``"#RRGGBB"`` →
    class name for RGB-encoded masks; ``ignore``: values (or colours) that carry no label. 255 is always
    ignored. ``polygons``: a vector layer instead of label rasters.
    """

    pattern: str = "labels/{stem}{suffix}"
    values: dict[int, str] | None = None
    colours: dict[str, str] | None = None
    ignore: list[str] = field(default_factory=list)
    polygons: PolygonLabels | None = None


@dataclass
class DatasetDef:
    """One dataset as YAML gives it (see docs/own-data.md)."""

    classes: list[str] = field(default_factory=list)
    name: str = "custom"
    palette: list[list[int]] | None = None
    images: str = "images/*.tif"  # glob relative to the domain root ({split} filled in)
    image_list: str | None = None  # text file, one image per line ("image" or "image label"), relative to it
    labels: LabelDef = field(default_factory=LabelDef)
    layout: str = "files"  # files (images + labels.pattern) or a benchmark release tree: mmseg, dubai, ...
    bands: list[int] | None = None  # 1-based band numbers, picked in this order; repeats allowed (1,1,1)
    rgb_bands: list[int] | None = None  # which picked channels (1-based) are R, G, B; default the first three
    nodata: float | None = None  # overrides the files' own nodata value
    normalise: str = "auto"  # auto: ImageNet for 8-bit data, else statistics of the training images
    min_valid: float = 0.5  # a training crop with less valid (not nodata) share is drawn again
    fit_size: int | None = None  # read images rescaled so the longer side is this (None: as stored)
    missing_labels: str = "error"  # error | warn: a label with no image, an image with no label

    def resolve(self) -> DatasetInfo:
        return resolve(self)


@dataclass(frozen=True)
class DatasetInfo:
    """A checked definition: class indices of every stored label value, and how to read the files."""

    name: str
    classes: tuple[str, ...]
    palette: tuple[RGB, ...]
    layout: str
    label_format: str  # index | colour
    value_to_label: dict[int, int] = field(default_factory=dict, hash=False)
    colour_to_label: dict[RGB, int] = field(default_factory=dict, hash=False)
    ignored: tuple[int, ...] = ()  # stored values (besides 255) that mean "no label"
    img_suffix: str = ".tif"
    seg_suffix: str = ".tif"
    fit_size: int | None = None
    images: str = "images/*.tif"
    image_list: str | None = None
    label_pattern: str = "labels/{stem}{suffix}"
    polygons: PolygonLabels | None = field(default=None, hash=False)
    bands: tuple[int, ...] | None = None
    rgb_bands: tuple[int, ...] | None = None
    nodata: float | None = None
    normalise: str = "auto"
    min_valid: float = 0.5
    missing_labels: str = "error"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        """Channels the model sees: the picked bands (a file read without `bands` gives R, G, B or 1, 1, 1)."""
        return 3 if self.bands is None else len(self.bands)

    @property
    def rgb_channels(self) -> tuple[int, int, int]:
        """1-based positions among the channels that take the backbone's pretrained R, G, B kernels."""
        r, g, b = self.rgb_bands or (1, 2, 3)
        return r, g, b

    @property
    def plain_rgb(self) -> bool:
        """Three channels in R, G, B order: the backbone's own embedding, today's model."""
        return self.channels == 3 and self.rgb_channels == (1, 2, 3)

    @property
    def reduce_zero_label(self) -> bool:
        """mmseg's convention (0 = ignore, class k stored as k + 1), as the named presets write it."""
        return 0 in self.ignored and self.value_to_label.get(1) == 0


def _colour(text: str, where: str) -> RGB:
    if not _HEX.match(str(text)):
        raise UserError(f"dataset {where}: colour {text!r} is not #RRGGBB")
    value = int(str(text).lstrip("#"), 16)
    return (value >> 16) & 255, (value >> 8) & 255, value & 255


def default_palette(n: int) -> tuple[RGB, ...]:
    """Distinct colours for users who give none (hue steps; class 0 black as most masks draw background)."""
    import colorsys

    colours: list[RGB] = [(0, 0, 0)]
    for i in range(1, n):
        r, g, b = colorsys.hsv_to_rgb((i - 1) / max(1, n - 1), 0.9, 1.0)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return tuple(colours[:n])


def _class_index(classes: tuple[str, ...], name: str, where: str) -> int:
    if name not in classes:
        raise UserError(f"dataset {where}: unknown class {name!r} (classes: {', '.join(classes)})")
    return classes.index(name)


def _suffix_of(pattern: str, where: str) -> str:
    """``*.png`` → ``.png``, ``{stem}-label.png`` → ``-label.png`` (the release trees need plain suffixes)."""
    for prefix in ("*", "{stem}", "{dir}/{stem}"):
        if pattern.startswith(prefix) and "*" not in pattern[len(prefix):] and "{" not in pattern[len(prefix):]:
            return pattern[len(prefix):]
    raise UserError(f"dataset {where}: layout needs a pattern like '*.png' / '{{stem}}.png', got {pattern!r}")


def _check_bands(d: DatasetDef, where: str) -> None:
    if d.bands is not None and (not d.bands or min(d.bands) < 1):
        raise UserError(f"dataset {where}.bands: 1-based band numbers, got {d.bands}")
    if d.bands is not None and len(d.bands) < 3:
        # the backbone's pretrained kernels take R, G and B: fewer channels are repeated into three
        raise UserError(f"dataset {where}.bands: {len(d.bands)} channel(s) {d.bands}; give at least three, "
                        f"repeating a band if need be, e.g. [1, 1, 1] or [1, 2, 1]")
    channels = len(d.bands) if d.bands is not None else 3
    if d.rgb_bands is not None:
        ok = (len(d.rgb_bands) == 3 and len(set(d.rgb_bands)) == 3 and min(d.rgb_bands) >= 1
              and max(d.rgb_bands) <= channels)
        if not ok:
            raise UserError(f"dataset {where}.rgb_bands: three different 1-based positions in `bands` "
                            f"(1..{channels}), got {d.rgb_bands}")


def resolve(d: DatasetDef) -> DatasetInfo:
    """Check a definition and compute its label lookup; every mistake is one line naming the key."""
    where = d.name
    classes = tuple(d.classes)
    if not classes:
        raise UserError(f"dataset {where}: `classes` is empty: list the class names")
    duplicates = sorted({c for c in classes if classes.count(c) > 1})
    if duplicates:
        raise UserError(f"dataset {where}: duplicate class name(s) {', '.join(duplicates)}")
    if len(classes) >= IGNORE_INDEX:
        raise UserError(f"dataset {where}: {len(classes)} classes; at most {IGNORE_INDEX - 1} fit uint8 labels")
    if d.layout not in LAYOUTS:
        raise UserError(f"dataset {where}.layout: one of {', '.join(LAYOUTS)}, got {d.layout!r}")
    if d.normalise not in NORMALISE:
        raise UserError(f"dataset {where}.normalise: one of {', '.join(NORMALISE)}, got {d.normalise!r}")
    if d.missing_labels not in MISSING:
        raise UserError(f"dataset {where}.missing_labels: one of {', '.join(MISSING)}, got {d.missing_labels!r}")
    if not 0 <= d.min_valid <= 1:
        raise UserError(f"dataset {where}.min_valid: must be in [0, 1], got {d.min_valid}")
    _check_bands(d, where)
    palette = default_palette(len(classes)) if d.palette is None else tuple(tuple(c) for c in d.palette)
    if len(palette) != len(classes) or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in palette):
        raise UserError(f"dataset {where}.palette: one [r, g, b] (0..255) per class ({len(classes)}), got {d.palette}")
    lab = d.labels
    if lab.values is not None and lab.colours is not None:
        raise UserError(f"dataset {where}.labels: give `values` or `colours`, not both")
    value_to_label: dict[int, int] = {}
    colour_to_label: dict[RGB, int] = {}
    ignored: list[int] = []
    if lab.colours is not None:
        for text, name in lab.colours.items():
            colour_to_label[_colour(text, f"{where}.labels.colours")] = _class_index(classes, name, where)
        for text in lab.ignore:
            colour_to_label[_colour(text, f"{where}.labels.ignore")] = IGNORE_INDEX
    else:
        mapping = lab.values if lab.values is not None else {i: c for i, c in enumerate(classes)}
        for value, name in mapping.items():
            value_to_label[int(value)] = _class_index(classes, name, where)
        for raw in lab.ignore:
            try:
                value = int(raw)
            except ValueError:
                raise UserError(f"dataset {where}.labels.ignore: {raw!r} is not a label value") from None
            if value in value_to_label:
                raise UserError(f"dataset {where}.labels.ignore: value {value} is also class "
                                f"{classes[value_to_label[value]]!r}")
            ignored.append(value)
    img_suffix = seg_suffix = ""
    if d.layout != "files":
        img_suffix, seg_suffix = _suffix_of(d.images, where), _suffix_of(lab.pattern, where)
    return DatasetInfo(
        name=d.name, classes=classes, palette=palette, layout=d.layout,  # type: ignore[arg-type]
        label_format="colour" if lab.colours is not None else "index",
        value_to_label=value_to_label, colour_to_label=colour_to_label, ignored=tuple(ignored),
        img_suffix=img_suffix, seg_suffix=seg_suffix, fit_size=d.fit_size, images=d.images,
        image_list=d.image_list, label_pattern=lab.pattern, polygons=lab.polygons,
        bands=None if d.bands is None else tuple(d.bands),
        rgb_bands=None if d.rgb_bands is None else tuple(d.rgb_bands), nodata=d.nodata, normalise=d.normalise,
        min_valid=d.min_valid, missing_labels=d.missing_labels,
    )

