"""ControlNet preprocessors: an uploaded image -> the conditioning image a ControlNet expects.

The OpenCV ones work everywhere. controlnet-aux detectors ("aux:<name>", e.g. "aux:openpose") need
the optional `aux` extra (torchvision + timm, GPU installs only, see ENVIRONMENT.md) and are
imported lazily, one detector at a time, because the package's __init__ imports them all.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import cv2
import numpy as np

from deployments.errors import RequestError
from deployments.preprocessor_names import BUILTIN_NAMES, known  # noqa: F401 (known: re-exported)

Preprocessor = Callable[[np.ndarray], np.ndarray]  # RGB uint8 HxWx3 -> RGB uint8 HxWx3


def _gray3(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def canny(image: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return _gray3(cv2.Canny(gray, 100, 200))


def sobel(image: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    magnitude = cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    return _gray3(np.clip(magnitude / max(float(magnitude.max()), 1e-6) * 255, 0, 255).astype(np.uint8))


def grayscale(image: np.ndarray) -> np.ndarray:
    return _gray3(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))


def identity(image: np.ndarray) -> np.ndarray:
    return image


BUILTIN: dict[str, Preprocessor] = {"canny": canny, "sobel": sobel, "grayscale": grayscale,
                                    "none": identity}
assert tuple(sorted(BUILTIN)) == BUILTIN_NAMES, "preprocessor_names.BUILTIN_NAMES is out of date"


def _aux_detector(name: str, field: str) -> Preprocessor:
    import importlib

    try:
        module = importlib.import_module(f"controlnet_aux.{name}")
    except ImportError as exc:
        raise RequestError(field, f"'aux:{name}' needs the optional "
                           f"controlnet-aux extra (pip install '.[aux]'): {exc}") from None
    detector_cls = next((getattr(module, a) for a in dir(module) if a.endswith("Detector")), None)
    if detector_cls is None:
        raise RequestError(field, f"controlnet_aux.{name} has no detector")
    detector = detector_cls()

    def run(image: np.ndarray) -> np.ndarray:
        return np.asarray(detector(image, output_type="np")).astype(np.uint8)

    return run


def get(name: str, field: str = "controlnets.preprocessor") -> Preprocessor:
    """The preprocessor called `name`; a RequestError naming `field` (the request's
    `controlnets[i].preprocessor`) when there is none."""
    if name in BUILTIN:
        return BUILTIN[name]
    if name.startswith("aux:") and name[4:].isidentifier():
        return _aux_detector(name[4:], field)
    raise RequestError(field, f"unknown preprocessor {name!r}; choose one of "
                       f"{sorted(BUILTIN)} or 'aux:<detector>'")


def decode_image(data: bytes, field: str = "controlnets.image",
                 max_pixels: int = 4096 * 4096) -> np.ndarray:
    """PNG/JPEG bytes -> RGB uint8 array; RequestError names `field` when it is not an image or
    its header declares more than `max_pixels` (checked before any pixel is decompressed: a
    few kilobytes of PNG can declare gigapixels)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            if img.format not in ("PNG", "JPEG"):
                raise RequestError(field, f"must be a PNG or JPEG image, got {img.format}")
            if img.width * img.height > max_pixels:
                raise RequestError(field, f"image of {img.width}x{img.height} pixels is larger "
                                   f"than limits.max_image_pixels={max_pixels}")
            return np.asarray(img.convert("RGB"))
    except Image.DecompressionBombError:  # PIL's own header check, past twice its warning size
        raise RequestError(field, f"image is larger than limits.max_image_pixels={max_pixels}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, RequestError):
            raise
        raise RequestError(field, f"is not a decodable PNG or JPEG image ({exc})") from None


def prepare(image: np.ndarray, preprocessor: str, width: int, height: int,
            field: str = "controlnets.preprocessor") -> np.ndarray:
    """Resize to the output size and run the preprocessor (errors name `field`)."""
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return get(preprocessor, field)(resized)
