from vvm.callbacks.cka import CKACallback, write_cka_outputs

__all__ = ["CKACallback", "write_cka_outputs"]
