"""What every model's settings (``model.*``, ``compare.*``) hold. The settings class of each registered model
adds its builder's own options (say ``input_size`` for ``vit_l32``); :mod:`vvm.schema` generates it from the
builder's signature, so a model is configured by registering it, with no config file to keep in step.
"""

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from vvm.settings.base import seed_field


@dataclass
class ModelSettings:
    name: str = "r18"
    num_classes: int = 100
    seed: int = seed_field()

    # the registry entry these settings build (``timm``'s settings name the timm architecture in ``name``)
    entry: ClassVar[str] = ""

    def options(self) -> dict[str, Any]:
        """The builder's own options (every field but ``name``, ``num_classes`` and ``seed``)."""
        base = {f.name for f in fields(ModelSettings)}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in base}
