"""fastrnn._pool: the Python buffer pool of the numba backend and the op layer."""
import threading

import torch

from fastrnn import _pool


def test_small_requests_bypass_the_pool():
    before = len(_pool._blocks)
    t = _pool.empty(4, 5, dtype=torch.float32)
    assert t.shape == (4, 5) and t.dtype == torch.float32
    assert len(_pool._blocks) == before


def test_block_is_reused_only_after_every_view_is_gone():
    _pool.release()
    a = _pool.empty(512, 1024, dtype=torch.float32)  # 2 MB
    ptr = a.data_ptr()
    view = a[10:]
    del a
    b = _pool.empty(512, 1024, dtype=torch.float32)
    assert b.data_ptr() != ptr  # a view still holds the first block
    del view
    c = _pool.empty(500, 1024, dtype=torch.float32)
    assert c.data_ptr() == ptr  # free again: reused
    c.fill_(2.0)
    b.fill_(3.0)  # separate memory
    assert float(c.sum()) == 2.0 * 500 * 1024
    del b, c


def test_shapes_dtypes_and_contiguity():
    for dtype in (torch.float32, torch.float64):
        t = _pool.empty(3, 400, 300, dtype=dtype)
        assert t.shape == (3, 400, 300) and t.dtype == dtype and t.is_contiguous()
        t.copy_(torch.arange(t.numel(), dtype=dtype).view_as(t))
        assert float(t[2, 399, 299]) == t.numel() - 1
    odd = _pool.empty(1024, 1024, dtype=torch.float16)  # not pooled, still correct
    assert odd.dtype == torch.float16 and odd.shape == (1024, 1024)


def test_blocks_much_larger_than_the_request_are_not_used():
    _pool.release()
    big = _pool.empty(8, 1024, 1024, dtype=torch.float32)  # 32 MB
    del big
    small = _pool.empty(1024, 1024, dtype=torch.float32)  # 4 MB: a new block
    assert len(_pool._blocks) == 2
    del small
    _pool.release()
    assert _pool.cached_bytes() == 0 and not _pool._blocks


def test_limit_caps_the_free_blocks(monkeypatch):
    _pool.release()
    monkeypatch.setenv("FASTRNN_POOL_MB", "5")
    ts = [_pool.empty(1024, 1024, dtype=torch.float32) for _ in range(3)]  # 3 x 4 MB
    del ts
    big = _pool.empty(3, 1024, 1024, dtype=torch.float32)  # 12 MB: trims the free ones first
    assert _pool.cached_bytes() <= 5 * 2**20
    del big
    _pool.release()


def test_threads_never_share_a_block():
    _pool.release()
    got, lock = [], threading.Lock()

    def work():
        for _ in range(20):
            t = _pool.empty(256, 1024, dtype=torch.float32)
            t.fill_(threading.get_ident() % 1000)
            with lock:
                got.append((t.data_ptr(), t))
            assert torch.all(t == threading.get_ident() % 1000)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    ptrs = [p for p, _ in got]
    assert len(set(ptrs)) == len(ptrs)  # all alive at once: all distinct
    got.clear()
    _pool.release()
