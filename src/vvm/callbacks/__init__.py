from vvm.callbacks.cka import CKACallback, SimilarityCallback, write_measure_outputs

__all__ = ["CKACallback", "SimilarityCallback", "write_measure_outputs"]
