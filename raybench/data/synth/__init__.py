"""Small synthetic copies of every dataset, written in exactly the real on-disk format.

They exist so the whole pipeline (loaders, ``data check``, training smoke runs, the
throughput benchmark) runs without the real data. Defects are *learnable*: each class has
its own shape, size and intensity on a noisy textured background, roughly like the real
ones. Output is a pure function of ``(name, images, size, seed, options)``.

Like the real data they hold what the loaders' policies act on: images without any
annotation (GDXray, RarePlanes, COCO: every 3rd / 4th image of a split) and RarePlanes
objects whose role is outside the three civil classes (military roles).

``size`` is the image height (Severstal width = 6.25 x height as 1600x256; GDXray width =
768/572 x height); square tiles otherwise. ``size=None`` uses the real size.

Modules: one writer per format (:mod:`.severstal`, :mod:`.rubber_rings`, :mod:`.rareplanes`,
:mod:`.gdxray`, :mod:`.coco`, :mod:`.mask_folder`) drawing with :mod:`.shapes`;
:mod:`.writer` (``synthesize`` and the marker file), :mod:`.ensure` (a study's
``synthetic:`` block, written once and atomically).
"""

from raybench.data.synth.ensure import ensure_synthetic, synthetic_is_current
from raybench.data.synth.writer import (
    DEFAULT_SIZE,
    MARKER,
    MAX_OBJECT_SCALE,
    SYNTHESIZERS,
    synthesize,
)

__all__ = [
    "DEFAULT_SIZE",
    "MARKER",
    "MAX_OBJECT_SCALE",
    "SYNTHESIZERS",
    "ensure_synthetic",
    "synthesize",
    "synthetic_is_current",
]
