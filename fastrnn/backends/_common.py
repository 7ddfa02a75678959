"""Small helpers shared by the backends and the op layer (one copy each)."""
import torch

__all__ = ["ptr", "valid_mask"]


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
