"""zoomorph.api is the notebook's front door: every function says what it takes and gives."""

import inspect

import pytest

from zoomorph import api

FUNCTIONS = [name for name in api.__all__ if inspect.isfunction(getattr(api, name))]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_every_api_function_has_an_explicit_documented_signature(name):
    function = getattr(api, name)
    kinds = {p.kind for p in inspect.signature(function).parameters.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds and inspect.Parameter.VAR_POSITIONAL not in kinds
    doc = inspect.getdoc(function) or ""
    assert "Returns:" in doc
    if inspect.signature(function).parameters:
        assert "Args:" in doc


def test_the_cli_commands_have_their_api_function():
    from zoomorph.cli import app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert commands - {"labels"} <= set(FUNCTIONS)  # labels is api.label_solutions


def test_models_lists_every_registered_model():
    from zoomorph.models import list_models

    assert [spec.name for spec in api.models()] == list_models()


def test_synth_writes_a_set(tmp_path):
    solutions = api.synth(tmp_path, 12, seed=3, size=64, workers=0)
    assert solutions.exists() and len(list((tmp_path / "images").glob("*.jpg"))) == 12
