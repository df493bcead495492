from vvm.train.module import VisionModule

__all__ = ["VisionModule"]
