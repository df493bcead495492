from vvm.callbacks.cka import CKACallback, write_measure_outputs

__all__ = ["CKACallback", "write_measure_outputs"]
