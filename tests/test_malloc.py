import os

from pipeline.core.malloc import SETTINGS, keep_freed_memory


def test_keep_freed_memory_applies_and_exports(monkeypatch):
    for _, name in SETTINGS.values():
        monkeypatch.delenv(name, raising=False)
    applied = keep_freed_memory()
    assert applied is True  # glibc on these machines: every mallopt call accepted
    for value, name in SETTINGS.values():
        assert os.environ[name] == str(value)
