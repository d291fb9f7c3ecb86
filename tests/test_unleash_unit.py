"""The Unleash backend's pure parts (config, tags, strategies) and its error paths, with respx.

The answers mocked here have the shapes unleash-server 7.5.1 gives (tests/test_unleash_server.py runs the
same code against the real server); respx only supplies the failures a real server rarely shows on cue.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import respx

from guardrail.config import parse_flags
from guardrail.flags import unleash_model as um
from guardrail.flags import unleash_strategy as us
from guardrail.flags.unleash import UnleashBackend
from guardrail.flags.unleash_config import UnleashConfig, parse_config
from guardrail.http import RetryPolicy, make_client
from guardrail.model import ExitCode, Flag, GuardrailError

URL = "http://unleash.test"
TOKEN = "*:*.unit-test-secret-0123456789"
CFG = UnleashConfig(url=URL, environment="development", token=TOKEN)
FAST = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.002)
KEY = "checkout.payments.express-pay"
FEATURE_URL = f"{URL}/api/admin/projects/default/features/{KEY}"
ENV_URL = f"{FEATURE_URL}/environments/development"
TAGS = ("error_rate.threshold=0.10", "error_rate.comparison=relative_increase")


def strategy(variants: list[tuple[str, int, str]] | None = None, rollout: str = "100", **extra: Any) -> dict[str, Any]:
    return {
        "id": "s-1",
        "name": "flexibleRollout",
        "title": None,
        "disabled": False,
        "constraints": [],
        "segments": [],
        "sortOrder": 0,
        "parameters": {"rollout": rollout, "stickiness": "default", "groupId": KEY},
        "variants": [{"name": n, "weight": w, "weightType": t, "stickiness": "default"} for n, w, t in variants or []],
        **extra,
    }


AB = strategy([("control", 500, "variable"), ("treatment", 500, "variable")])


def feature(strategies: list[dict[str, Any]], tags: tuple[str, ...] = TAGS, enabled: bool = True) -> um.Feature:
    return um.Feature(KEY, "default", enabled, tuple(strategies), tags)


def definition(f: um.Feature) -> tuple[dict[str, Any] | None, list[Any]]:
    return um.to_definition(f, "development", "unleash")


# ---- config ---------------------------------------------------------------------------------------------


def test_config_defaults_and_token_from_the_named_variable() -> None:
    cfg = parse_config(
        {"url": "http://127.0.0.1:4242/", "environment": "production"}, {"UNLEASH_API_TOKEN": TOKEN}, "g.yaml"
    )
    assert (cfg.url, cfg.project, cfg.environment, cfg.token_env, cfg.token) == (
        "http://127.0.0.1:4242",
        "default",
        "production",
        "UNLEASH_API_TOKEN",
        TOKEN,
    )
    assert TOKEN not in repr(cfg)
    other = parse_config(
        {"url": URL, "environment": "e", "project": "p", "token_env": "MY_TOKEN"}, {"MY_TOKEN": "t"}, "g.yaml"
    )
    assert (other.project, other.token) == ("p", "t")


@pytest.mark.parametrize(
    ("section", "env", "field", "text"),
    [
        (None, {}, "unleash", "needs an `unleash:` mapping"),
        ({"environment": "development"}, {"UNLEASH_API_TOKEN": "t"}, "unleash.url", "required"),
        ({"url": URL}, {"UNLEASH_API_TOKEN": "t"}, "unleash.environment", "required"),
        ({"url": "127.0.0.1:4242", "environment": "d"}, {"UNLEASH_API_TOKEN": "t"}, "unleash.url", "base URL"),
        ({"url": f"{URL}/api/admin", "environment": "d"}, {"UNLEASH_API_TOKEN": "t"}, "unleash.url", "adds /api"),
        ({"url": URL, "environment": "d"}, {}, "unleash.token_env", "UNLEASH_API_TOKEN is not set"),
        ({"url": URL, "environment": "d", "token": "x"}, {}, "unleash.token", "secrets do not belong"),
        ({"url": URL, "environment": "d", "projects": "x"}, {"UNLEASH_API_TOKEN": "t"}, "unleash.projects", "unknown"),
        ({"url": URL, "environment": 3}, {"UNLEASH_API_TOKEN": "t"}, "unleash.environment", "string"),
    ],
)
def test_config_errors_name_the_field(section: Any, env: dict[str, str], field: str, text: str) -> None:
    with pytest.raises(GuardrailError) as err:
        parse_config(section, env, "g.yaml")
    assert err.value.field == field and text in err.value.message and err.value.exit_code is ExitCode.CONFIG
    assert err.value.source == "g.yaml"


# ---- tags and strategies -> the flag model ------------------------------------------------------------


def test_tags_become_flat_metadata_with_numbers_and_flag_options() -> None:
    options = um.read_options(
        (
            "error_rate.threshold=0.10",
            "error_rate.min_count=200",
            "warmup_minutes=30",
            "experiment_type=rollout",
            "started_at=2026-11-20T09:00:00Z",
            "hold=true",
            "on_halt=control",
            "guardrail.alpha=0.01",
        )
    )
    assert options.metadata == {
        "guardrail.error_rate.threshold": 0.1,
        "guardrail.error_rate.min_count": 200,
        "warmup_minutes": 30,
        "experiment_type": "rollout",
        "started_at": "2026-11-20T09:00:00Z",
        "guardrail.alpha": 0.01,
    }
    assert options.hold and options.on_halt == "control" and options.problems == ()


def test_an_ab_strategy_becomes_a_flagd_shaped_definition() -> None:
    found, problems = definition(feature([AB]))
    assert problems == [] and found is not None
    (flag,) = parse_flags({KEY: found}).flags
    assert flag.enabled and flag.variants == ("control", "treatment") and flag.treatment_variants == ("treatment",)
    assert found["targeting"]["fractional"][1:] == [["control", 500], ["treatment", 500]]
    assert flag.guardrails[0].threshold == 0.10 and found["metadata"]["unleash.strategy_id"] == "s-1"


@pytest.mark.parametrize(
    ("strategies", "tags", "field_end", "text"),
    [
        ([strategy()], TAGS, "[s-1].variants", "no variants"),
        ([strategy([("control", 500, "fix"), ("treatment", 400, "fix")])], TAGS, "[s-1].variants", "sum to 900"),
        ([strategy([("a", 500, "fix"), ("b", 500, "variable")])], TAGS, "[s-1].variants", "control variant 'control'"),
        ([AB], (*TAGS, "error_rate.thresold=0.2"), "error_rate.thresold=0.2", "unknown option"),
        ([AB], (*TAGS, "error_rate"), "guardrail:error_rate", "OPTION=VALUE"),
        ([AB], (*TAGS, "error_rate.threshold=0.2"), "error_rate.threshold=0.2", "conflicts with tag"),
        ([AB], (*TAGS, "on_halt=revert"), "on_halt=revert", "one of off, control"),
        ([AB], ("error_rate.threshold=0.1", "error_rate.comparison=up"), "error_rate.comparison=up", "'up'"),
        ([], TAGS, "strategies", "no enabled flexibleRollout"),
        ([AB, {**AB, "id": "s-2"}], TAGS, "strategies", "2 enabled flexibleRollout strategies"),
        (
            [strategy([("control", 500, "fix"), ("treatment", 500, "variable")], rollout="lots")],
            TAGS,
            "parameters.rollout",
            "whole percent",
        ),
    ],
)
def test_bad_flags_are_errors_naming_flag_and_field(
    strategies: list[dict[str, Any]], tags: tuple[str, ...], field_end: str, text: str
) -> None:
    found, problems = definition(feature(strategies, tags))
    assert found is None and problems, "a bad flag must be reported"
    assert any(p.flag == KEY and (p.field or "").endswith(field_end) and text in p.message for p in problems), [
        str(p) for p in problems
    ]
    assert all(p.severity == "error" for p in problems)


def test_a_broken_flag_that_is_off_is_listed_as_off_with_warnings() -> None:
    found, problems = definition(feature([strategy()], enabled=False))
    assert found is not None and found["state"] == "DISABLED"
    assert [p.severity for p in problems] == ["warning"] and "off in development" in problems[0].message


def test_unguarded_flags_are_listed_whatever_their_strategies() -> None:
    found, problems = definition(feature([{"id": "x", "name": "default", "parameters": {}}], tags=()))
    assert problems == [] and found is not None
    (flag,) = parse_flags({KEY: found}).flags
    assert flag.guardrails == ()


def test_a_rollout_without_variants_has_treatment_and_control_arms() -> None:
    found, problems = definition(
        feature([strategy(rollout="30")], tags=(*TAGS, "experiment_type=rollout", "hold=true"))
    )
    assert problems == [] and found is not None
    assert found["targeting"]["fractional"][1:] == [["treatment", 30], ["control", 70]]
    (flag,) = parse_flags({KEY: found}).flags
    assert flag.held and flag.experiment_type.value == "rollout"


def test_exact_weights_use_one_variable_variant() -> None:
    variants = us.weighted_variants(AB, {"control": 800, "treatment": 200})
    assert [(v["name"], v["weight"], v["weightType"]) for v in variants] == [
        ("control", 800, "variable"),
        ("treatment", 200, "fix"),
    ]
    halted = us.control_variants(AB, "control")
    assert [(v["name"], v["weight"], v["weightType"]) for v in halted] == [
        ("control", 1000, "fix"),
        ("treatment", 0, "variable"),
    ]


# ---- error paths over HTTP ----------------------------------------------------------------------------


def run(coro_fn: Any, timeout: float = 1.0) -> Any:
    async def go() -> Any:
        async with make_client(timeout=timeout) as client:
            return await coro_fn(UnleashBackend(CFG, client, policy=FAST))

    return asyncio.run(go())


def detail_answer(enabled: bool = True, strategies: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "name": KEY,
        "project": "default",
        "environments": [{"name": "development", "enabled": enabled, "strategies": strategies or [AB]}],
    }


def mock_reads(enabled: bool | list[bool] = True) -> None:
    respx.get(f"{URL}/api/admin/environments/development").mock(return_value=httpx.Response(200, json={}))
    respx.get(f"{URL}/api/admin/projects/default/features").mock(
        return_value=httpx.Response(
            200,
            json={
                "features": [
                    {
                        "name": KEY,
                        "environments": [{"name": "development", "enabled": True}],
                        "tags": [{"type": "guardrail", "value": v} for v in TAGS],
                    }
                ]
            },
        )
    )
    states = enabled if isinstance(enabled, list) else [enabled]
    respx.get(FEATURE_URL).mock(
        side_effect=[httpx.Response(200, json=detail_answer(s)) for s in states]
        + [httpx.Response(200, json=detail_answer(states[-1]))] * 10
    )
    respx.get(f"{URL}/api/admin/features/{KEY}/tags").mock(
        return_value=httpx.Response(200, json={"tags": [{"type": "guardrail", "value": v} for v in TAGS]})
    )


def the_flag() -> Flag:
    found, _ = definition(feature([AB]))
    (flag,) = parse_flags({KEY: found}).flags
    return flag


@respx.mock
@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_is_a_config_error_naming_the_variable(status: int) -> None:
    route = respx.get(f"{URL}/api/admin/environments/development").mock(return_value=httpx.Response(status))
    with pytest.raises(GuardrailError) as err:
        run(lambda b: b.load())
    assert err.value.exit_code is ExitCode.CONFIG and err.value.field == "unleash.token_env"
    assert f"HTTP {status}" in str(err.value) and "UNLEASH_API_TOKEN" in str(err.value)
    assert "name and environment" in str(err.value) and TOKEN not in str(err.value)
    assert route.calls.last.request.headers["Authorization"] == TOKEN  # bare token, no `Bearer`
    assert route.call_count == 1  # a 4xx is not retried


@respx.mock
@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(500),
        httpx.Response(503, text="<html>down</html>"),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
    ],
)
def test_unleash_down_is_exit_3(answer: Any) -> None:
    respx.get(f"{URL}/api/admin/environments/development").mock(return_value=httpx.Response(200, json={}))
    kwargs = {"side_effect": answer} if isinstance(answer, Exception) else {"return_value": answer}
    route = respx.get(f"{URL}/api/admin/projects/default/features").mock(**kwargs)
    with pytest.raises(GuardrailError) as err:
        run(lambda b: b.load())
    assert err.value.exit_code is ExitCode.UNEVALUATED and "Unleash unavailable" in str(err.value)
    assert route.call_count == FAST.attempts


@respx.mock
@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"features": "nope"}, "no `features` list"),
        ("<html>login</html>", "HTML"),
    ],
)
def test_bad_list_shapes_are_exit_3(body: Any, text: str) -> None:
    respx.get(f"{URL}/api/admin/environments/development").mock(return_value=httpx.Response(200, json={}))
    respx.get(f"{URL}/api/admin/projects/default/features").mock(
        return_value=httpx.Response(200, text=body, headers={"content-type": "text/html"})
        if isinstance(body, str)
        else httpx.Response(200, json=body)
    )
    with pytest.raises(GuardrailError) as err:
        run(lambda b: b.load())
    assert err.value.exit_code is ExitCode.UNEVALUATED and text in str(err.value)


@respx.mock
def test_a_bad_feature_answer_costs_that_flag_only() -> None:
    mock_reads()
    respx.get(FEATURE_URL).mock(return_value=httpx.Response(200, json={"name": KEY, "environments": "x"}))
    loaded = run(lambda b: b.load())
    assert loaded.definitions == {}
    (problem,) = loaded.problems
    assert problem.flag == KEY and "environments" in problem.message and problem.severity == "error"


@respx.mock
def test_a_lost_answer_is_not_resent_once_a_re_read_shows_the_halt() -> None:
    mock_reads(enabled=[True, False])  # before the write: on; the re-read after the timeout: off
    off = respx.post(f"{ENV_URL}/off").mock(side_effect=httpx.ReadTimeout("lost"))
    outcome = run(lambda b: b.halt(the_flag(), "breach"))
    assert outcome.ok and "answer was lost" in outcome.detail
    assert off.call_count == 1


@respx.mock
def test_a_refused_write_is_a_permanent_failure_naming_the_token_variable() -> None:
    mock_reads()
    off = respx.post(f"{ENV_URL}/off").mock(return_value=httpx.Response(403))
    outcome = run(lambda b: b.halt(the_flag(), "breach"))
    assert not outcome.ok and outcome.permanent and off.call_count == 1
    assert "UNLEASH_API_TOKEN" in outcome.detail and "403" in outcome.detail and TOKEN not in outcome.detail


@respx.mock
def test_a_write_the_re_read_does_not_show_is_not_done() -> None:
    mock_reads()  # stays on: another writer switched it back on, or the write did not land
    respx.post(f"{ENV_URL}/off").mock(return_value=httpx.Response(200))
    outcome = run(lambda b: b.halt(the_flag(), "breach"))
    assert not outcome.ok and "re-read does not show" in outcome.detail


@respx.mock
def test_server_errors_on_a_write_are_retried_after_a_re_read() -> None:
    mock_reads(enabled=[True, True, False])
    off = respx.post(f"{ENV_URL}/off").mock(side_effect=[httpx.Response(500), httpx.Response(200)])
    outcome = run(lambda b: b.halt(the_flag(), "breach"))
    assert outcome.ok and off.call_count == 2


@respx.mock
def test_a_ramp_step_refuses_bad_shares_without_calling_unleash() -> None:
    outcome = run(lambda b: b.set_split(the_flag(), {"control": 60, "treatment": 60}, "ramp"))
    assert not outcome.ok and outcome.permanent and "summing to 100" in outcome.detail
    assert len(respx.calls) == 0


def test_a_ramp_step_plans_weights_or_a_rollout_percent() -> None:
    split, why = us.plan_split(AB, {"control": 75, "treatment": 25})
    assert split is not None and split.weights == {"control": 750, "treatment": 250} and split.parameters(AB) is None
    assert not split.shown_by(AB) and split.what == "variant weights control=750, treatment=250"
    plain = strategy(rollout="10")
    ramp, _ = us.plan_split(plain, {"treatment": 40, "control": 60})
    assert ramp is not None and ramp.rollout == 40 and (ramp.parameters(plain) or {})["rollout"] == "40"
    assert ramp.shown_by(strategy(rollout="40")) and not ramp.shown_by(plain)
    refused, why = us.plan_split(AB, {"control": 50, "blue": 50})
    assert refused is None and "unknown variants ['blue']" in why


def test_ramp_tags_give_a_ramped_rollout_whose_steps_set_the_rollout_percent() -> None:
    tags = (*TAGS, "experiment_type=rollout", "ramp.steps=5,25,50,100", "ramp.step_minutes=30")
    found, problems = definition(feature([strategy(rollout="5")], tags=tags))
    assert problems == [] and found is not None
    (flag,) = parse_flags({KEY: found}).flags
    assert flag.ramp is not None and list(flag.ramp.steps) == [5, 25, 50, 100]
    split, _ = us.plan_split(strategy(rollout="5"), {"treatment": 25, "control": 75})
    assert split is not None and split.rollout == 25
    _, bad = definition(feature([strategy(rollout="5")], tags=(*tags[:-2], "ramp.steps=50,25")))
    assert any(p.field == "tag guardrail:ramp.steps=50,25" for p in bad), [str(p) for p in bad]
