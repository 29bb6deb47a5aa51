"""Names of the ControlNet preprocessors, without importing them.

The ingress validates a request's preprocessor name before anything runs; importing
`deployments.preprocessors` for that would load OpenCV into the ingress process.
"""

from __future__ import annotations

BUILTIN_NAMES = ("canny", "grayscale", "none", "sobel")


def known(name: str) -> bool:
    """A built-in preprocessor, or 'aux:<detector>' (controlnet-aux, resolved when it runs)."""
    return name in BUILTIN_NAMES or (name.startswith("aux:") and name[4:].isidentifier())
