"""Synthetic 32x32 grayscale glyph dataset rendered offline from the DejaVu fonts.

Each sample: one character drawn with a random DejaVu face (weights, slants, widths,
serif/sans/mono) at a random size and stroke width, then a random affine transform
(rotation, anisotropic scale, shear, translation), Gaussian blur, a textured
background (smooth low-frequency noise plus a linear gradient), random ink/background
levels with a minimum contrast (either polarity) and additive pixel noise, then
quantisation to 8-bit levels. Pixel values in [0, 1] are then normalised with the fixed
constants `MEAN` and `STD`.

Only numpy and Pillow are needed; everything is driven by a seeded numpy Generator.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
# Digits and upper-case letters without O (vs 0) and I (vs 1), plus lower-case
# letters whose shape differs from every upper-case letter and digit kept.
CLASSES = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ" + "abdefhnrt"
# Fixed normalisation: x = (pixel_in_[0,1] - MEAN) / STD (measured once on 20k
# training samples, rounded, then frozen here).
MEAN = 0.63
STD = 0.27

SIZE = 32
_CANVAS = 64  # glyphs are drawn and warped at 2x, then box-downsampled
_MIN_CONTRAST = 0.35
_MAX_ROTATION_DEG = 12.0
_MAX_SHEAR = 0.25
_SCALE_RANGE = (0.78, 1.12)
_ASPECT_RANGE = (0.88, 1.12)
_MAX_SHIFT = 2.5  # pixels at 32x32
_MAX_BLUR = 0.9  # Gaussian radius at 32x32
_MAX_NOISE = 0.07
_INVERT_PROB = 0.2


@functools.cache
def font_paths() -> tuple[Path, ...]:
    """All DejaVu text faces (the math font is excluded)."""
    return tuple(p for p in sorted(FONT_DIR.glob("DejaVu*.ttf")) if "Math" not in p.name)


@functools.cache
def _font(index: int, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_paths()[index]), size)


def _draw_glyph(char: str, font_index: int, size: int, stroke: int) -> Image.Image:
    """White glyph on black, centred by its ink bounding box, on a 64x64 canvas."""
    img = Image.new("L", (_CANVAS, _CANVAS), 0)
    draw = ImageDraw.Draw(img)
    font = _font(font_index, size)
    left, top, right, bottom = draw.textbbox((0, 0), char, font=font, stroke_width=stroke)
    x = (_CANVAS - (right - left)) / 2 - left
    y = (_CANVAS - (bottom - top)) / 2 - top
    draw.text((x, y), char, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    return img


def _affine_coeffs(rng: np.random.Generator) -> tuple[float, ...]:
    """Inverse affine map (output pixel -> input pixel) about the canvas centre."""
    angle = math.radians(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG))
    scale = rng.uniform(*_SCALE_RANGE)
    aspect = rng.uniform(*_ASPECT_RANGE)
    shear = rng.uniform(-_MAX_SHEAR, _MAX_SHEAR)
    sx, sy = scale * aspect, scale / aspect
    cos, sin = math.cos(angle), math.sin(angle)
    # forward = R @ Shear @ S ; PIL wants the inverse.
    fwd = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    fwd = fwd @ np.diag([sx, sy])
    inv = np.linalg.inv(fwd)
    shift = rng.uniform(-_MAX_SHIFT, _MAX_SHIFT, size=2) * (_CANVAS / SIZE)
    c = _CANVAS / 2
    offset = np.array([c, c]) - inv @ (np.array([c, c]) + shift)
    return (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1])


def _glyph_mask(char: str, rng: np.random.Generator) -> np.ndarray:
    """Ink coverage in [0, 1], 32x32, after warp and blur."""
    font_index = int(rng.integers(len(font_paths())))
    size = int(rng.integers(34, 47))
    stroke = int(rng.choice([0, 0, 1, 2]))
    img = _draw_glyph(char, font_index, size, stroke)
    img = img.transform(
        img.size, Image.Transform.AFFINE, _affine_coeffs(rng), resample=Image.Resampling.BILINEAR
    )
    img = img.reduce(_CANVAS // SIZE)
    radius = rng.uniform(0.0, _MAX_BLUR)
    if radius > 0.1:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(img, dtype=np.float32) / 255.0


def _background(rng: np.random.Generator) -> np.ndarray:
    """Smooth random texture plus a linear gradient, zero-centred, 32x32."""
    cells = int(rng.choice([3, 4, 6, 8]))
    low = rng.normal(0.0, 1.0, size=(cells, cells)).astype(np.float32)
    tex = np.asarray(Image.fromarray(low, mode="F").resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    tex = tex * rng.uniform(0.0, 0.12)
    gy, gx = np.mgrid[-1 : 1 : SIZE * 1j, -1 : 1 : SIZE * 1j]
    theta = rng.uniform(0, 2 * math.pi)
    grad = (np.cos(theta) * gx + np.sin(theta) * gy) * rng.uniform(0.0, 0.15)
    return (tex + grad).astype(np.float32)


def _levels(rng: np.random.Generator) -> tuple[float, float]:
    """Background and ink levels in [0, 1], at least _MIN_CONTRAST apart."""
    bg = rng.uniform(0.55, 1.0)
    ink = rng.uniform(0.0, bg - _MIN_CONTRAST)
    if rng.random() < _INVERT_PROB:
        bg, ink = 1.0 - bg, 1.0 - ink
    return bg, ink


def render_sample(label: int, rng: np.random.Generator) -> np.ndarray:
    """One 32x32 image with 8-bit levels in [0, 1] for class index `label`."""
    mask = _glyph_mask(CLASSES[label], rng)
    bg, ink = _levels(rng)
    img = (bg + _background(rng)) * (1.0 - mask) + ink * mask
    img = img + rng.normal(0.0, rng.uniform(0.0, _MAX_NOISE), size=img.shape)
    # 8-bit pixels, like a real image (also keeps the float16 npz files compressible)
    return (np.round(np.clip(img, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def make_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (images N x 1 x 32 x 32 float32 normalised, labels int64), class-balanced."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % len(CLASSES)
    rng.shuffle(labels)
    images = np.stack([render_sample(int(k), rng) for k in labels])
    images = (images - MEAN) / STD
    return images[:, None].astype(np.float32), labels


def save_split(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write `input` (float16) and `label` (int64) with np.savez_compressed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, input=images.astype(np.float16), label=labels.astype(np.int64))
