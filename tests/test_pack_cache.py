"""The compiled CPU backend's packed-weight cache: a hit is used only when the weights'
bytes are unchanged, whatever changed them (optimizer steps, ``.data`` writes that do not
bump torch's version counter, other weights at a reused address); limits hold.

The module inputs have batches above ``fastpath.MAX_STEPS_ROWS``: short sequences at smaller
batches run, in inference, the fused step kernel, which reads the weights unpacked."""
import pytest
import torch

import fastrnn
from fastrnn import backends

from rnn_cases import assert_close as _assert_close


def assert_close(actual, expected, what=""):
    _assert_close(actual, expected, expected.dtype, what)

pytestmark = pytest.mark.skipif("cpu" not in backends.available_backends(),
                                reason="compiled CPU backend not available")

KINDS = ("RNN", "LSTM", "GRU")


@pytest.fixture
def cpu():
    from fastrnn.backends import cpu
    limit = cpu.pack_cache_info()["limit"]
    cpu.empty_cache()
    yield cpu
    cpu.set_pack_cache_limit(limit / 2**20)
    cpu.empty_cache()


def _pair(kind, seed=0, **kw):
    torch.manual_seed(seed)
    ref = getattr(torch.nn, kind)(5, 8, **kw)
    fast = getattr(fastrnn, kind)(5, 8, backend="cpu", **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _check(ref, fast, x):
    with torch.no_grad():
        (yr, hr), (yf, hf) = ref(x), fast(x)
    assert_close(yf, yr)
    for a, b in zip(hf if isinstance(hf, tuple) else (hf,), hr if isinstance(hr, tuple) else (hr,)):
        assert_close(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_repeated_calls_hit(cpu, kind):
    ref, fast = _pair(kind)
    x = torch.randn(6, 6, 5)
    _check(ref, fast, x)
    first = cpu.pack_cache_info()
    assert first["entries"] >= 1 and first["misses"] >= 1 and first["hits"] == 0
    _check(ref, fast, x)
    _check(ref, fast, torch.randn(4, 7, 5))
    second = cpu.pack_cache_info()
    assert second["hits"] >= 2 and second["misses"] == first["misses"]
    assert second["entries"] == first["entries"]


@pytest.mark.parametrize("kind", KINDS)
def test_data_writes_without_version_bump_are_seen(cpu, kind):
    ref, fast = _pair(kind, proj_size=4) if kind == "LSTM" else _pair(kind)
    x = torch.randn(6, 6, 5)
    _check(ref, fast, x)
    for name, p in fast.named_parameters():
        version = p._version
        new = torch.randn_like(p)
        p.data.copy_(new)  # .data: the parameter's version counter does not move
        getattr(ref, name).data.copy_(new)
        assert p._version == version
    _check(ref, fast, x)
    assert cpu.pack_cache_info()["hits"] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_same_address_other_contents(cpu, kind):
    """A weight packed from memory that now holds other values (as after a free and a
    reuse of the address) is packed again: the result equals an uncached call's."""
    from fastrnn.backends import cpu as B
    torch.manual_seed(1)
    G = {"RNN": 1, "LSTM": 4, "GRU": 3}[kind]
    H, T, N = 8, 5, 2
    w_hh = torch.randn(G * H, H)
    xg, h0, c0, b_hh = torch.randn(T, N, G * H), torch.randn(N, H), torch.randn(N, H), \
        torch.randn(G * H)
    call = {"RNN": lambda: B.rnn_forward(xg, h0, w_hh, None, False, False),
            "LSTM": lambda: B.lstm_forward(xg, h0, c0, w_hh, None, None, False, False)[0],
            "GRU": lambda: B.gru_forward(xg, h0, w_hh, b_hh, None, False, False)[0]}[kind]
    first = call().clone()
    assert call().equal(first) and cpu.pack_cache_info()["hits"] == 1
    ptr = w_hh.data_ptr()
    w_hh.copy_(torch.randn_like(w_hh))  # same address, new values
    assert w_hh.data_ptr() == ptr
    second = call().clone()
    assert not second.equal(first)
    cpu.set_pack_cache_limit(0)
    assert call().equal(second)  # packed afresh without the cache: the same numbers


def test_training_steps_match_torch(cpu):
    ref, fast = _pair("LSTM", num_layers=2, bidirectional=True)
    opt_r = torch.optim.SGD(ref.parameters(), lr=0.5)
    opt_f = torch.optim.SGD(fast.parameters(), lr=0.5)
    x = torch.randn(7, 6, 5)
    for _ in range(3):
        for m, opt in ((ref, opt_r), (fast, opt_f)):
            opt.zero_grad()
            m(x)[0].pow(2).sum().backward()
            opt.step()
    _check(ref, fast, x)
    for (n, a), b in zip(fast.named_parameters(), ref.parameters()):
        assert_close(a, b, n)


def test_limit_zero_turns_it_off_and_limits_hold(cpu):
    ref, fast = _pair("GRU")
    x = torch.randn(4, 6, 5)
    cpu.set_pack_cache_limit(0)
    _check(ref, fast, x)
    _check(ref, fast, x)
    info = cpu.pack_cache_info()
    assert info["entries"] == 0 and info["bytes"] == 0 and info["hits"] == 0
    cpu.set_pack_cache_limit(1)  # 1 MB: a 3x8x8 weight fits
    _check(ref, fast, x)
    _check(ref, fast, x)
    info = cpu.pack_cache_info()
    assert info["entries"] == 1 and 0 < info["bytes"] <= 2**20 and info["hits"] == 1
    big = fastrnn.GRU(5, 512, backend="cpu")  # W_hh 3 MB > a quarter of 1 MB: not cached
    with torch.no_grad():
        big(x)
    assert cpu.pack_cache_info()["entries"] == 1
    cpu.empty_cache()
    assert cpu.pack_cache_info() == {"bytes": 0, "entries": 0, "limit": 2**20, "hits": 0,
                                     "misses": 0}


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_forked_child_starts_with_fresh_caches(cpu):
    """A forked child (e.g. a DataLoader worker) gets an empty pool and pack cache with
    fresh locks, and its kernels give the parent's numbers. The child runs one thread, as
    DataLoader workers do: libgomp cannot start a team in a child forked after the parent
    used OpenMP (torch.mm hangs there too)."""
    import os
    ref, fast = _pair("LSTM")
    x = torch.randn(6, 6, 5)
    with torch.no_grad():
        want = fast(x)[0]
    assert cpu.pack_cache_info()["entries"] >= 1
    pid = os.fork()
    if pid == 0:  # child: report through the exit status only
        code = 1
        try:
            torch.set_num_threads(1)
            info = cpu.pack_cache_info()
            with torch.no_grad():
                got = fast(x)[0]
            fresh = info["entries"] == 0 and info["hits"] == 0
            code = 0 if fresh and torch.equal(got, want) else 3
        finally:
            os._exit(code)
    import signal
    import time
    deadline = time.monotonic() + 60
    while True:  # never hang the suite on a stuck child
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child did not finish in 60 s")
        time.sleep(0.05)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
