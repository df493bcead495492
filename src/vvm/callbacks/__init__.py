from vvm.callbacks.cka import CKACallback, mean_offdiagonal, write_cka_outputs

__all__ = ["CKACallback", "mean_offdiagonal", "write_cka_outputs"]
