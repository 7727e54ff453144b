"""The configuration (config.py): defaults, overrides, peers, type errors, and the example
config/compacs.toml documenting every setting."""

from __future__ import annotations

import pytest

from compacs.config import ConfigError, from_document, with_overrides
from compacs.dicom.ae import InvalidPeer, Peer
from compacs.index import Duplicates
from tests.support.node import ROOT


def test_config_defaults_and_overrides():
    settings = from_document({"node": {"port": 4242}, "ingest": {"duplicates": "replace"}})
    assert settings.port == 4242 and settings.duplicates is Duplicates.REPLACE
    settings = with_overrides(settings, port=5000, peers=[Peer.parse("X@h:1")])
    assert settings.port == 5000 and [str(p) for p in settings.peers] == ["X@h:1"]
    assert Peer.parse("PACS@[::1]:104").host == "::1"
    with pytest.raises(InvalidPeer, match="AE title"):
        Peer.parse("WAY-TOO-LONG-AE-TITLE@h:1")
    with pytest.raises(ConfigError, match="expected"):
        from_document({"network": {"max_pdu": True}})


def test_the_example_config_loads_and_documents_every_setting():
    """config/compacs.toml holds every setting with its default (and stays valid TOML)."""
    import tomllib
    from dataclasses import fields

    from compacs.config import _POLICY_KEYS, _ROUTING_KEYS, SCHEMA, Settings, load
    from compacs.routing import Routing

    path = ROOT / "config" / "compacs.toml"
    settings = load(path)
    defaults = Settings()
    for f in fields(Settings):
        if f.name not in ("data_dir", "policy", "routing"):
            assert getattr(settings, f.name) == getattr(defaults, f.name), f.name
    assert settings.routing == Routing() and settings.policy == defaults.policy
    doc = tomllib.loads(path.read_text())
    text = path.read_text()
    for section, keys in SCHEMA.items():
        for key in keys:
            assert key in doc.get(section, {}) or f"# {key} =" in text, f"[{section}] {key}"
    assert set(_POLICY_KEYS) <= set(doc["compression"])
    assert set(_ROUTING_KEYS) <= set(doc["forwarding"])
