"""``crossearth-gate predict``: segment plain images, folders and GeoTIFF scenes with a trained model.

Plain images (.png/.jpg/.jpeg) are read whole and written as palette PNGs of class indices.
Every .tif/.tiff goes through rasterio instead, tile by tile (`iter_tiles`), so a scene of any size
needs only one tile plus its context margin in memory; each tile runs exactly its share of the
whole-scene window grid, so the result does not depend on --tile. The output GeoTIFF keeps the
scene's CRS, transform and size, with 255 = nodata and the class palette as colour table.

Radiometry: the saved model says how training read and normalised its pixels (``ModelSpec.radiometry``:
bands, nodata, per-band statistics; ``data/radiometry.py``), and predict applies exactly that, through the
same ``EvalTransform``. Models trained on 8-bit data (all models saved before) normalise with ImageNet's
statistics: uint8 bands are used as they are; any other dtype is first scaled per band by a 2-98 %
percentile stretch to 0..255 (also what overlays show). The percentiles are computed ONCE per
scene from a decimated overview read (at most ``STATS_SIDE`` pixels a side, nodata excluded), so
every tile is scaled identically and tile seams cannot come from per-tile statistics.
A model trained on more than three bands (``ModelSpec.band_kernels``) reads one band per channel, in the
trained order; its overlay shows the channels it takes as R, G, B.
"""

from .cli import predict_cli
from .geotiff import predict_geotiff
from .inputs import Job
from .model import Predictor
from .radiometry import scene_stretch

__all__ = ["Job", "Predictor", "predict_cli", "predict_geotiff", "scene_stretch"]
