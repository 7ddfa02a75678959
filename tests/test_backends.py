"""Backend selection (fastrnn.backends): auto order, set_backend, $FASTRNN_BACKEND,
actionable errors for unavailable or mismatched backends, and the
$FASTRNN_DISABLE_EXTENSION switch. Availability is faked with monkeypatch, so these
tests mean the same on every machine."""
import subprocess
import sys
import types

import pytest
import torch

import fastrnn
from fastrnn import backends

DISABLE = backends.DISABLE_ENV


@pytest.fixture(autouse=True)
def clean_state(monkeypatch):
    """No global default, no environment choice, no switch: each test sets its own."""
    monkeypatch.setattr(backends, "_global_default", None)
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    monkeypatch.delenv(DISABLE, raising=False)


def _fake_available(monkeypatch, name):
    mod = types.SimpleNamespace(__name__=f"fake_{name}", unavailable_reason=lambda: None)
    monkeypatch.setitem(backends._cache, name, (mod, None))
    return mod


def _fake_unavailable(monkeypatch, name, why="it is fake-missing; install the fake"):
    monkeypatch.setitem(backends._cache, name, (None, why))
    return why


# ----------------------------------------------------------------------------- basics

def test_availability_lists_every_backend():
    avail = backends.availability()
    assert set(avail) == set(backends.BACKENDS)
    assert avail["reference"] is None
    for name, why in avail.items():
        assert why is None or (isinstance(why, str) and why)
    assert backends.available_backends() == [n for n, w in avail.items() if w is None]
    assert fastrnn.available_backends() == backends.available_backends()


def test_auto_picks_fastest_available_cpu_backend():
    avail = backends.availability()
    expected = next(n for n in ("cpu", "numba", "reference") if avail[n] is None)
    assert backends.resolve("auto", "cpu") == expected
    assert backends.resolve(None, "cpu") == expected


def test_auto_order(monkeypatch):
    _fake_available(monkeypatch, "cpu")
    _fake_available(monkeypatch, "numba")
    _fake_available(monkeypatch, "cuda")
    assert backends.resolve("auto", "cpu") == "cpu"
    assert backends.resolve("auto", "cuda") == "cuda"
    _fake_unavailable(monkeypatch, "cpu")
    assert backends.resolve("auto", "cpu") == "numba"
    _fake_unavailable(monkeypatch, "numba")
    assert backends.resolve("auto", "cpu") == "reference"
    _fake_unavailable(monkeypatch, "cuda")
    assert backends.resolve("auto", "cuda") == "reference"
    assert backends.resolve("auto", "mps") == "reference"


@pytest.mark.parametrize("name", [b for b in backends.available_backends() if b != "cuda"])
def test_explicit_available_backend_is_used(name):
    assert backends.resolve(name, "cpu") == name
    assert backends.get(name) is not None


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="backend must be one of"):
        backends.resolve("fastest", "cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        backends.set_backend("fastest")


# ----------------------------------------------------------------------------- precedence

def test_set_backend_and_reset():
    backends.set_backend("reference")
    assert backends.get_default_backend() == "reference"
    assert backends.resolve(None, "cpu") == "reference"
    backends.set_backend("auto")
    assert backends.get_default_backend() == "auto"
    fastrnn.set_backend("Reference ")  # case and spaces forgiven
    assert backends.get_default_backend() == "reference"
    backends.set_backend(None)
    assert backends.get_default_backend() == "auto"


def test_environment_variable(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    assert backends.get_default_backend() == "reference"
    assert backends.resolve(None, "cpu") == "reference"
    monkeypatch.setenv(backends.ENV_VAR, " AUTO ")
    assert backends.get_default_backend() == "auto"
    monkeypatch.setenv(backends.ENV_VAR, "")
    assert backends.get_default_backend() == "auto"
    monkeypatch.setenv(backends.ENV_VAR, "turbo")
    with pytest.raises(ValueError, match=backends.ENV_VAR):
        backends.get_default_backend()


@pytest.mark.parametrize("value,on", [("", False), ("0", False), ("off", False),
                                      (" No ", False), ("false", False), ("1", True),
                                      ("on", True), ("TRUE", True), ("yes", True)])
def test_disable_extension_flag_is_read_one_way(monkeypatch, value, on):
    """FASTRNN_DISABLE_EXTENSION: the backend registry and the cpu backend agree on every
    spelling (one parser, fastrnn._env.flag)."""
    from fastrnn import _env
    from fastrnn.backends import cpu
    monkeypatch.setenv(DISABLE, value)
    assert _env.flag(DISABLE) is on
    assert backends.extension_disabled() is on
    assert cpu._disabled() is on
    if on:
        assert "cpu" not in backends.available_backends()
    elif cpu._IMPORT_ERROR is None:
        assert "cpu" in backends.available_backends()


def test_precedence_argument_then_set_backend_then_environment(monkeypatch):
    _fake_available(monkeypatch, "numba")
    monkeypatch.setenv(backends.ENV_VAR, "numba")
    assert backends.resolve(None, "cpu") == "numba"
    backends.set_backend("reference")
    assert backends.resolve(None, "cpu") == "reference"  # set_backend beats the env
    assert backends.resolve("numba", "cpu") == "numba"  # the argument beats both
    assert backends.resolve("auto", "cpu") in backends.available_backends()


# ----------------------------------------------------------------------------- errors

def test_forced_unavailable_backend_says_why_and_source(monkeypatch):
    why = _fake_unavailable(monkeypatch, "numba")
    with pytest.raises(backends.BackendUnavailableError) as err:
        backends.resolve("numba", "cpu")
    msg = str(err.value)
    assert why in msg and "'numba'" in msg and "backend= argument" in msg
    assert "backend='auto'" in msg  # what to do instead

    monkeypatch.setenv(backends.ENV_VAR, "numba")
    with pytest.raises(backends.BackendUnavailableError, match=r"\$FASTRNN_BACKEND"):
        backends.resolve(None, "cpu")
    with pytest.raises(backends.BackendUnavailableError, match="fake-missing"):
        backends.get("numba")


def test_set_backend_refuses_unavailable_backend(monkeypatch):
    why = _fake_unavailable(monkeypatch, "cpu")
    with pytest.raises(backends.BackendUnavailableError) as err:
        backends.set_backend("cpu")
    assert why in str(err.value)
    assert backends.get_default_backend() == "auto"  # unchanged


def test_missing_module_reason_tells_how_to_build(monkeypatch):
    monkeypatch.setitem(backends._MODULES, "cpu", "fastrnn.backends._no_such_module")
    monkeypatch.delitem(backends._cache, "cpu", raising=False)
    why = backends.availability()["cpu"]
    assert "_no_such_module" in why and "pip install ." in why and "CMake" in why
    with pytest.raises(backends.BackendUnavailableError, match="pip install"):
        backends.resolve("cpu", "cpu")
    monkeypatch.delitem(backends._cache, "cpu", raising=False)  # do not keep the fake


def test_device_mismatch_errors(monkeypatch):
    _fake_available(monkeypatch, "numba")
    _fake_available(monkeypatch, "cpu")
    _fake_available(monkeypatch, "cuda")
    for name in ("cpu", "numba"):
        with pytest.raises(backends.BackendUnavailableError, match="CPU tensors only"):
            backends.resolve(name, "cuda")
    with pytest.raises(backends.BackendUnavailableError, match="needs CUDA tensors"):
        backends.resolve("cuda", "cpu")


def test_real_unavailable_reasons_are_actionable():
    """Whatever is unavailable on this machine says why in words, not just a traceback."""
    for name, why in backends.availability().items():
        if why is not None:
            assert len(why) > 20, (name, why)


# ----------------------------------------------------------------------------- the switch

@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_disable_switch_hides_extensions(monkeypatch, value):
    _fake_available(monkeypatch, "cpu")
    _fake_available(monkeypatch, "cuda")
    _fake_available(monkeypatch, "numba")
    monkeypatch.setenv(DISABLE, value)
    avail = backends.availability()
    assert DISABLE in avail["cpu"] and DISABLE in avail["cuda"]
    assert avail["numba"] is None and avail["reference"] is None
    assert backends.resolve("auto", "cpu") == "numba"
    assert backends.resolve("auto", "cuda") == "reference"
    with pytest.raises(backends.BackendUnavailableError, match=DISABLE):
        backends.resolve("cpu", "cpu")
    with pytest.raises(backends.BackendUnavailableError, match=DISABLE):
        backends.set_backend("cuda")
    # read on every call: turning it off brings the extensions back
    monkeypatch.setenv(DISABLE, "0")
    assert backends.resolve("auto", "cpu") == "cpu"
    monkeypatch.delenv(DISABLE)
    assert backends.availability()["cpu"] is None


def test_disable_switch_keeps_the_more_useful_reason(monkeypatch):
    """An extension that is missing anyway reports that, not the switch."""
    _fake_unavailable(monkeypatch, "cuda", "no CUDA GPU available")
    monkeypatch.setenv(DISABLE, "1")
    assert backends.availability()["cuda"] == "no CUDA GPU available"


def test_disable_switch_on_the_real_backends(monkeypatch):
    monkeypatch.setenv(DISABLE, "1")
    avail = backends.availability()
    assert avail["cpu"] is not None and avail["cuda"] is not None
    assert backends.resolve("auto", "cpu") in ("numba", "reference")


@pytest.mark.skipif("numba" not in backends.available_backends(), reason="numba unavailable")
def test_modules_run_numba_when_extension_disabled(monkeypatch):
    from fastrnn import functional
    monkeypatch.setenv(DISABLE, "1")
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 4)
    fast = fastrnn.LSTM(3, 4)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(fast(x)[0], ref(x)[0], rtol=1e-5, atol=1e-5)
    assert functional.last_backend() == "numba"


# ----------------------------------------------------------------------------- numba guard

def test_numba_reason_when_numba_is_missing(monkeypatch):
    from fastrnn.backends import numba_backend
    monkeypatch.setitem(sys.modules, "numba", None)  # makes `import numba` fail
    monkeypatch.setattr(numba_backend, "_import_error", None)
    why = numba_backend.unavailable_reason()
    assert why and "pip install numba" in why


def test_import_fastrnn_without_numba():
    code = ("import sys; sys.modules['numba'] = None\n"
            "import fastrnn, fastrnn.backends as b\n"
            "why = b.availability()['numba']\n"
            "assert why and 'numba' in why, why\n"
            "assert b.resolve('auto', 'cpu') in ('cpu', 'reference')\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.skipif("numba" not in backends.available_backends(), reason="numba unavailable")
def test_numba_threading_layer_and_concurrent_calls():
    """numba's pool is 'workqueue' unless the user picked one (its 'omp' layer slowed
    torch's own ops down after running), and launches from several Python threads
    are serialised (workqueue would abort the process). In a subprocess: an abort
    must not take pytest down."""
    code = (
        "import os, threading, torch, numba\n"
        "os.environ.pop('NUMBA_THREADING_LAYER', None)\n"
        "from fastrnn.backends import numba_backend as nb\n"
        "xg = torch.randn(20, 8, 4 * 16); h0 = torch.zeros(8, 16); c0 = torch.zeros(8, 16)\n"
        "w = torch.randn(4 * 16, 16) * 0.1\n"
        "ref = nb.lstm_forward(xg, h0, c0, w, None, None, False, True)[0]\n"
        "errors = []\n"
        "def work():\n"
        "    for _ in range(30):\n"
        "        y = nb.lstm_forward(xg, h0, c0, w, None, None, False, True)[0]\n"
        "        if not torch.equal(y, ref): errors.append('mismatch')\n"
        "ts = [threading.Thread(target=work) for _ in range(4)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "assert not errors, errors\n"
        "print(numba.threading_layer())\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "NUMBA_THREADING_LAYER"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "workqueue"


def test_checkout_shadowing_an_installed_build_is_named_and_warned_once(monkeypatch):
    """A source tree without _C imported ahead of an installed build: the reason says so
    and how to fix it, and ``auto`` warns once that it falls back."""
    from fastrnn.backends import cpu
    monkeypatch.setattr(cpu, "_C", None)
    monkeypatch.setattr(cpu, "shadowed_build", lambda: "/site-packages/fastrnn")
    monkeypatch.delenv(DISABLE, raising=False)
    why = cpu.unavailable_reason()
    assert "/site-packages/fastrnn" in why and "shadows the installed build" in why
    assert "pip install --no-build-isolation -e ." in why
    real_load = backends._load
    monkeypatch.setattr(backends, "_load",
                        lambda name: (None, why) if name == "cpu" else real_load(name))
    monkeypatch.setattr(backends, "_warned", set())
    with pytest.warns(RuntimeWarning, match="shadows the installed build"):
        assert backends.resolve("auto", "cpu") != "cpu"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backends.resolve("auto", "cpu")  # once only
