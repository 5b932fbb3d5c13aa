"""Placeholders: Prefect's substitution rules, plus our stricter failure modes."""

from __future__ import annotations

from datetime import date, time

import pytest

from buildsys.errors import TemplateError
from buildsys.templating import UNKNOWN, Scope, env_blocks, placeholders, render

pytestmark = pytest.mark.unit  # in-process and fast: part of `pytest -m unit`


def scope(**outputs: dict[str, object]) -> Scope:
    return Scope(outputs=outputs, ids=frozenset(outputs), env={"PORT": "8080", "TOKEN": "s3cret"}, variables={"region": "eu", "n": 3})


def test_whole_string_keeps_type_embedded_becomes_string() -> None:
    s = scope(build={"n": 5, "tags": ["a", "b"]})
    assert render("{{ build.n }}", s) == 5
    assert render("{{ build.tags }}", s) == ["a", "b"]
    assert render("{{ build.tags[1] }}", s) == "b"
    assert render("v-{{ build.n }}", s) == "v-5"
    assert render("{{ $PORT }}", s) == "8080"  # env is always a string
    assert render("{{ prefect.variables.n }}", s) == 3
    assert render({"a": ["{{ build.n }}", 1], "k": "{{ prefect.variables.region }}"}, s) == {"a": [5, 1], "k": "eu"}


def test_not_placeholders_and_runtime_context_survive() -> None:
    s = scope()
    assert render("{{ a b }}", s) == "{{ a b }}"
    assert render("{{ x | default(1) }}", s) == "{{ x | default(1) }}"
    assert render("{{ ctx.flow_run.name }}-x", s) == "{{ ctx.flow_run.name }}-x"
    assert render("{{ flow_run.id }}", s) == "{{ flow_run.id }}"


def test_unresolved_step_reference_is_an_error_naming_existing_ids() -> None:
    s = scope(build_image={"image": "x"})
    with pytest.raises(TemplateError) as info:
        render("{{ build-image.image }}", s)
    assert info.value.message == ("{{ build-image.image }} refers to step 'build-image', which does not exist here "
                                  "(Prefect would silently drop the value)")
    assert info.value.hint == "did you mean 'build_image'?; step ids here: build_image"
    with pytest.raises(TemplateError) as info2:
        render("{{ build_image.tag }}", s)
    assert info2.value.message == "{{ build_image.tag }}: step 'build_image' has no output 'tag'"


def test_modes_keep_blank_unknown() -> None:
    s = Scope(outputs={}, ids=frozenset({"img"}), pending=frozenset({"img"}))
    assert render({"a": "{{ img.image }}", "b": 1}, s, missing="unknown") == {"a": UNKNOWN, "b": 1}
    assert render("x-{{ img.image }}", s, missing="unknown") == "x-(known after build)"
    assert render({"a": "{{ missing }}", "b": 1}, Scope(), missing="blank") == {"b": 1}
    assert render(["{{ missing }}", 1], Scope(), missing="blank") == [1]
    assert render("x-{{ missing }}", Scope(), missing="blank") == "x-"
    assert render("{{ $NOPE }}", Scope(env={}), missing="keep") == "{{ $NOPE }}"
    assert render("{{ $NOPE }}", Scope(env=None)) == "{{ $NOPE }}"  # env not available: kept


def test_missing_env_is_an_error_naming_it() -> None:
    with pytest.raises(TemplateError) as info:
        render("{{ $NOPE }}", Scope(env={}))
    assert info.value.message == "environment variable NOPE is not set (used as {{ $NOPE }})"


def test_flat_names_work_but_ambiguity_is_an_error() -> None:
    s = Scope(outputs={"build": {"image": "a:1"}, "push": {"image": "a:1", "digest": "sha"}}, ids=frozenset({"build", "push"}))
    assert render("{{ image }}", s) == "a:1"  # same value from both: not ambiguous
    assert render("{{ digest }}", s) == "sha"
    s2 = Scope(outputs={"one": {"image": "a"}, "two": {"image": "b"}}, ids=frozenset({"one", "two"}))
    with pytest.raises(TemplateError) as info:
        render("{{ image }}", s2)
    assert info.value.message == "{{ image }} is ambiguous: steps one, two all output 'image'"


def test_blocks_from_environment_and_secrets_are_collected() -> None:
    env = {"BUILDSYS_BLOCK_SECRET_GH_TOKEN": '{"value": "tok123"}', "BUILDSYS_BLOCK_CREDS_PROD": '{"username": "u", "password": "p4ss"}'}
    s = Scope(env=env, blocks=env_blocks(env))
    assert render("{{ prefect.blocks.secret.gh-token }}", s) == "tok123"
    assert render("{{ prefect.blocks.creds.prod.password }}", s) == "p4ss"
    assert render("{{ prefect.blocks.creds.prod }}", s) == {"username": "u", "password": "p4ss"}
    assert {"tok123", "p4ss"} <= s.secrets
    with pytest.raises(TemplateError):
        render("x {{ prefect.blocks.creds.prod }}", s)


def test_placeholders_are_classified() -> None:
    found = placeholders({"a": ["{{ s.k[0] }}", "{{ $E }}"], "b": "{{ prefect.variables.v }} {{ prefect.blocks.t.n }}"})
    assert [(p.kind, p.step_id, p.keypath) for p in found] == [
        ("output", "s", ("s", "k", 0)),
        ("env", None, ("E",)),
        ("variable", None, ("v",)),
        ("block", None, ("t", "n")),
    ]


@pytest.mark.parametrize(
    "value",
    [
        {"a": date(2024, 1, 31), 1: "one", "t": "{{ $T }}", "n": [{"w": time(3, 4)}, ("x", "{{ $T }}")]},
        ["{{ $T }}", date(2024, 1, 1), None, 1.5, True],
        "{{ out.value }}",
        "{{ out.pair }}",
        "plain",
        {1: "a", "1": "b"},
    ],
)
def test_json_shaped_render_is_canonical_of_the_render(value: object) -> None:
    from buildsys.desired import canonical

    scope = Scope(outputs={"out": {"value": {2: date(2024, 5, 6)}, "pair": ("a", 1)}}, env={"T": "t"})
    plain = canonical(render(value, scope, missing="unknown"))
    shaped = render(value, scope, missing="unknown", json_shaped=canonical)
    assert shaped == plain
    assert repr(shaped) == repr(plain)  # the same key order and types
