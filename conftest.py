"""Test-wide settings: every test gets its own ENVHUB_HOME, so none touches ~/.envhub, and they
share one folder of converted models; the subprocesses tests start can be interrupted with SIGINT."""

import signal

import pytest

# A shell starts a background job (`make test &`, nohup) with SIGINT ignored, and exec keeps an
# ignored signal ignored: the Ctrl-C tests' children (train, eval, serve-model) would never see it.
# A handler here is reset to the default in every child, so they get Python's KeyboardInterrupt.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def envhub_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("envhub-home")
    monkeypatch.setenv("ENVHUB_HOME", str(home))
    # One converted default model for the whole session: per home it cost a conversion (up to a minute
    # on CPU) and 530 MB each, and a full run filled the disk. Conversion is atomic, so sharing is safe.
    monkeypatch.setenv("ENVHUB_MODELS", str(tmp_path_factory.getbasetemp() / "shared-models"))
    monkeypatch.delenv("ENVHUB_LOCKFILE", raising=False)
    return home
