"""Forwarding rules ([[forwarding.rules]], routing.py): errors that name the rule and key,
every matching rule applied, a destination queued once, the retry schedule."""

from __future__ import annotations

import tomllib

import pytest

from compacs.config import ConfigError, from_document


@pytest.mark.parametrize(
    "rule, message",
    [
        ('to = "PACS"', "destination 'PACS' is not a peer"),
        ('to = "X@h:104"\nsyntax = ["jpeg-ls"]', "unknown key 'syntax'"),
        ('to = "X@h:104"\nsyntaxes = ["jpeg-ls-near"]', "lossy = true"),
        ('to = "X@h:104"\nlossy = true\ncommit = true', "not supported"),
        ('to = "X@h:104"\nafter = "later"', "after must be"),
        ('to = "X@h:104"\nretain_days = -1', "retain_days"),
        ('to = "X@h:104"\nmodality = 3', "modality must be a str"),
        ("", "to must name"),
    ],
)
def test_routing_rule_errors_name_the_rule_and_key(rule, message):
    doc = tomllib.loads(f"[[forwarding.rules]]\n{rule}\n")
    with pytest.raises(ConfigError) as exc:
        from_document(doc, "gw.toml")
    assert "gw.toml: [[forwarding.rules]] #1" in str(exc.value)
    assert message in str(exc.value)


def test_routing_rules_all_apply_and_a_destination_is_queued_once():
    doc = tomllib.loads(
        '[[peers]]\nae_title = "PACS"\nhost = "10.0.0.1"\nport = 104\n'
        '[[forwarding.rules]]\nmodality = "CT"\nto = ["PACS", "TELE@10.0.0.2:104"]\n'
        'syntaxes = ["jpeg-ls", "uncompressed"]\n'
        '[[forwarding.rules]]\nStudyDescription = "CHEST"\nto = "PACS"\nsyntaxes = ["stored"]\n'
        '[[forwarding.rules]]\nmodality = "MR"\nto = "MRONLY@10.0.0.3:104"\n'
    )
    routing = from_document(doc).routing
    facts = {"modality": "CT", "study_description": "CHEST"}
    forwards = routing.forwards_for(facts)
    assert [f.destination for f in forwards] == ["PACS@10.0.0.1:104", "TELE@10.0.0.2:104"]
    assert forwards[0].syntaxes == (
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2",
    )
    assert routing.forwards_for({"modality": "US"}) == ()
    assert routing.retry_at(100.0, 1) == 105.0 and routing.retry_at(0.0, 30) == 900.0
