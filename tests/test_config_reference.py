"""docs/CONFIG.md is generated from the settings dataclasses and cannot drift from them: the
test regenerates it and fails when the committed file differs. Its example files load."""

from __future__ import annotations

import dataclasses
import re

import pytest

from satchel.agent.config import SCHEMA as AGENT
from satchel.bundles.configdoc import describe
from satchel.bundles.configfile import Schema
from satchel.manager.config import SCHEMA as MANAGER
from tests import config_reference


def test_committed_config_reference_is_what_the_code_generates():
    committed = config_reference.CONFIG_MD.read_text(encoding="utf-8")

    assert committed == config_reference.render(), (
        "docs/CONFIG.md is stale: run `python -m tests.config_reference`"
    )


@pytest.mark.parametrize("schema", [AGENT, MANAGER], ids=["agent", "manager"])
def test_every_setting_is_in_the_reference_with_its_variable_and_a_meaning(schema: Schema):
    text = config_reference.render()

    for f in dataclasses.fields(schema.cls):
        assert re.search(rf"^\| `{f.name}` \|.*`{schema.env_names(f.name)[0]}`", text, re.M), f.name
    assert all(doc.comment for doc in describe(schema)), "a setting without a comment"


@pytest.mark.parametrize(("schema", "example"), [
    (AGENT, config_reference.AGENT_EXAMPLE),
    (MANAGER, config_reference.MANAGER_EXAMPLE),
], ids=["agent", "manager"])
def test_the_example_files_load_as_they_are_shown(schema: Schema, example: str, tmp_path):
    path = tmp_path / f"{schema.table}.toml"
    path.write_text(example)

    config = schema.load(path, {})

    assert config != schema.cls()  # the example changes something
