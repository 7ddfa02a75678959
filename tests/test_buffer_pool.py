"""The compiled CPU backend's output buffer pool: blocks come back when torch frees a
tensor and are reused; a tensor still alive is never handed out twice; limits hold."""
import gc

import pytest
import torch

import fastrnn
from fastrnn import backends

pytestmark = pytest.mark.skipif("cpu" not in backends.available_backends(),
                                reason="compiled CPU backend not available")


@pytest.fixture
def cpu():
    from fastrnn.backends import cpu
    cpu.empty_cache()
    yield cpu
    cpu.set_pool_limit(1024)
    cpu.empty_cache()


def test_freed_blocks_are_reused_and_live_ones_are_not(cpu):
    like = torch.zeros(1)
    a = cpu._empty(100, 7, like=like)
    a.fill_(1.0)
    ptr = a.data_ptr()
    assert cpu.pool_cached_bytes() == 0
    b = cpu._empty(100, 7, like=like)  # `a` is alive: a different block
    assert b.data_ptr() != ptr
    del a
    gc.collect()
    assert cpu.pool_cached_bytes() >= 100 * 7 * 4
    c = cpu._empty(100, 7, like=like)
    assert c.data_ptr() == ptr  # the freed block came back
    b.fill_(2.0)
    c.fill_(3.0)
    assert torch.all(b == 2.0) and torch.all(c == 3.0)


def test_views_keep_a_block_alive(cpu):
    a = cpu._empty(64, 9, like=torch.zeros(1, dtype=torch.float64))
    assert a.dtype == torch.float64 and a.shape == (64, 9) and a.is_contiguous()
    view = a[3]
    ptr = a.data_ptr()
    del a
    gc.collect()
    other = cpu._empty(64, 9, like=torch.zeros(1, dtype=torch.float64))
    assert other.data_ptr() != ptr  # the view still owns the storage
    view.fill_(5.0)
    assert torch.all(view == 5.0)


def test_limit_and_release(cpu):
    cpu.set_pool_limit(0)
    t = cpu._empty(1000, like=torch.zeros(1))
    del t
    gc.collect()
    assert cpu.pool_cached_bytes() == 0
    cpu.set_pool_limit(16)
    t = cpu._empty(1000, like=torch.zeros(1))
    del t
    gc.collect()
    assert 0 < cpu.pool_cached_bytes() <= 16 * 2**20
    cpu.empty_cache()
    assert cpu.pool_cached_bytes() == 0


def test_training_steps_reuse_and_stay_correct(cpu):
    torch.manual_seed(0)
    ref = torch.nn.GRU(5, 9, bidirectional=True)
    fast = fastrnn.GRU(5, 9, bidirectional=True, backend="cpu")
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(6, 4, 5, requires_grad=True)
    for _ in range(3):
        y_ref, y = ref(x)[0], fast(x)[0]
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
        g_ref = torch.autograd.grad(y_ref.square().sum(), [x, *ref.parameters()])
        g = torch.autograd.grad(y.square().sum(), [x, *fast.parameters()])
        for a, b in zip(g, g_ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert cpu.pool_cached_bytes() > 0  # saved activations went back to the pool


def test_size_classes():
    from fastrnn.backends import cpu
    sc = cpu._C.pool_size_class
    assert sc(0) == 64 and sc(1) == 64 and sc(100) == 128 and sc(1 << 20) == 1 << 20
    assert sc((1 << 20) + 1) == (1 << 20) + (1 << 17)  # 8 classes per power of two
    prev = 0
    for n in [1000, 4096, 65536, 999_999, 1 << 20, 1_234_567, 26_214_400, 65_536_000, 3 << 30]:
        c = sc(n)
        assert n <= c <= max(n + 63, n * 1.125) and c % 64 == 0 and c >= prev
        prev = c


def test_a_freed_block_serves_a_close_smaller_size(cpu):
    """Batches of varying length ask for varying sizes: a cached block of at least the
    size asked for and at most 1.5 times it is reused (no fresh, page-faulting memory)."""
    like = torch.zeros(1)
    a = cpu._empty(229, 64, 512, like=like)  # 30 MB: one step's gates at T=229
    ptr = a.data_ptr()
    del a
    gc.collect()
    b = cpu._empty(200, 64, 512, like=like)  # smaller, within 1.5x: the same block
    assert b.data_ptr() == ptr
    b.fill_(1.0)
    del b
    gc.collect()
    c = cpu._empty(100, 64, 512, like=like)  # under 2/3 of it: not that block
    assert c.data_ptr() != ptr
    d = cpu._empty(229, 64, 512, like=like)  # the block is still cached for its own size
    assert d.data_ptr() == ptr
    assert torch.all(d.fill_(2.0) == 2.0) and torch.all(c.fill_(3.0) == 3.0)
