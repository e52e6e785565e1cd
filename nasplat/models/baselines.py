"""Imports every built-in baseline module so that each registers itself."""

from nasplat.models import deeplabv3plus, duc_hdc, icnet  # noqa: F401
