"""The one augmentation spec that both pipelines (PIL and DALI) obey.

Defaults are the original project's: RandomResizedCrop scale (0.84, 1.0), rotation +-10 degrees, horizontal flip
p = 0.5, optional brightness/contrast jitter 0.05. Evaluation squashes the whole image to img_size x img_size.
Rotation uses nearest-neighbour sampling (torchvision's RandomRotation default, and cheap on CPU kernels); the
crop/resize uses (bi)linear filtering with antialiasing where the kernel offers it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentSpec:
    img_size: int
    train: bool = True
    scale: tuple[float, float] = (0.84, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotate_deg: float = 10.0
    flip_p: float = 0.5
    jitter: float = 0.0  # brightness and contrast factors drawn from [1 - jitter, 1 + jitter]

    def __post_init__(self):
        if self.img_size <= 0:
            raise ValueError(f"img_size must be positive, got {self.img_size}")

    @classmethod
    def for_training(cls, img_size: int, color_jitter: bool = False) -> AugmentSpec:
        return cls(img_size=img_size, train=True, jitter=0.05 if color_jitter else 0.0)

    @classmethod
    def for_eval(cls, img_size: int) -> AugmentSpec:
        return cls(img_size=img_size, train=False, rotate_deg=0.0, flip_p=0.0, jitter=0.0)
