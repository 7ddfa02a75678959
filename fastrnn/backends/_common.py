"""Small helpers shared by the backends and the op layer (one copy each)."""
import torch

__all__ = ["ptr", "valid_mask", "transformed"]


def ptr(t):
    """The address of ``t``'s data for a kernel, 0 for None or an empty tensor."""
    return 0 if t is None or t.numel() == 0 else t.data_ptr()


def valid_mask(lengths, T):
    """[T, N, 1] bool, True where step t of sequence n is valid (t < lengths[n]); None
    when every step is (``lengths`` None)."""
    if lengths is None:
        return None
    t = torch.arange(T, device=lengths.device)
    return (t[:, None] < lengths[None, :]).unsqueeze(-1)


_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_legacy_batched = torch._C._functorch.is_legacy_batchedtensor


def transformed(t):
    """Whether ``t`` belongs to a vmap or grad transform: a torch.func wrapper, or a legacy
    vmap BatchedTensor (the batched gradients of ``torch.autograd.grad(is_grads_batched=True)``,
    ``jacobian``/``hessian(vectorize=True)``, gradcheck's batched check). Neither has memory
    of its own for a kernel to read or an ``out=`` op to write."""
    return _wrapped(t) or _legacy_batched(t)
