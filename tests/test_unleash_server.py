"""The Unleash backend against a real unleash-server (pinned in tests/unleash/) on a real PostgreSQL.

What an application sees is proven with Unleash's own Python SDK (`UnleashClient`), holding a backend
token made through the admin API: it evaluates 1,000 users after every action. Unleash's event log must
show each change. Flags are set up by the tests' own admin client (tests/servers/unleash.py), not by the
code under test, and archived after each test.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from guardrail.config import parse_flags
from guardrail.flags.base import HaltOutcome, LoadedFlags
from guardrail.flags.unleash import UnleashBackend, UnleashConfig
from guardrail.http import RetryPolicy, make_client
from guardrail.model import ExitCode, Flag, GuardrailError, Severity
from tests.conftest import SDK_USERS
from tests.servers.unleash import Admin, UnleashServer

pytestmark = pytest.mark.e2e

USERS = SDK_USERS
GUARDRAIL_TAGS = ("error_rate.threshold=0.10", "error_rate.comparison=relative_increase")
# 1,000 users split 80/20: the share's standard deviation is 1.3 points; 5 points is ~4 sigma.
TOLERANCE = 0.05


def config(server: UnleashServer, **changes: Any) -> UnleashConfig:
    values: dict[str, Any] = {"url": server.url, "environment": "development", "token": server.admin_token}
    values.update(changes)
    return UnleashConfig(**values)


def run(cfg: UnleashConfig, action: str, *args: Any) -> Any:
    """One backend call in its own event loop and client, as one `guardrail check` run makes them."""

    async def go() -> Any:
        async with make_client(timeout=10.0) as client:
            backend = UnleashBackend(cfg, client, policy=RetryPolicy(attempts=2, backoff=0.05))
            return await getattr(backend, action)(*args)

    return asyncio.run(go())


def load_flag(cfg: UnleashConfig, key: str) -> Flag:
    loaded: LoadedFlags = run(cfg, "load")
    parsed = parse_flags(loaded.definitions, source=loaded.source)
    (flag,) = [f for f in parsed.flags if f.key == key]
    return flag


def shares(answers: dict[str, str]) -> dict[str, float]:
    return {k: v / len(answers) for k, v in Counter(answers.values()).items()}


def event_types(admin: Admin, flag: str) -> list[str]:
    return [e["type"] for e in admin.events(flag)]


# ---- reading -------------------------------------------------------------------------------------------


def test_load_lists_flags_guardrails_and_problems(unleash_server: UnleashServer, unleash_admin: Admin) -> None:
    a = unleash_admin
    a.create_flag(
        "ul.load.ab",
        variants={"control": 500, "treatment": 500},
        tags=(
            *GUARDRAIL_TAGS,
            "p95_latency_ms.threshold=0.2",
            "p95_latency_ms.comparison=relative_increase",
            "p95_latency_ms.min_count=200",
            "started_at=2026-11-20T09:00:00Z",
            "warmup_minutes=30",
        ),
    )
    a.create_flag("ul.load.rollout", rollout=25, tags=(*GUARDRAIL_TAGS, "experiment_type=rollout"))
    a.create_flag("ul.load.plain")
    a.create_flag("ul.load.no-variants", tags=GUARDRAIL_TAGS)
    a.create_flag(
        "ul.load.typo", variants={"control": 500, "treatment": 500}, tags=(*GUARDRAIL_TAGS, "error_rate.threshhold=0.2")
    )
    a.create_flag("ul.load.off-broken", tags=GUARDRAIL_TAGS, enabled=False)

    events_before = a.call("GET", "/api/admin/events")["totalEvents"]
    loaded: LoadedFlags = run(config(unleash_server), "load")
    assert a.call("GET", "/api/admin/events")["totalEvents"] == events_before  # reading writes nothing
    parsed = parse_flags(loaded.definitions, source=loaded.source)
    flags = {f.key: f for f in parsed.flags}

    ab = flags["ul.load.ab"]
    assert ab.enabled and ab.control_variant == "control" and ab.treatment_variants == ("treatment",)
    assert ab.definition["targeting"]["fractional"][1:] == [["control", 500], ["treatment", 500]]
    by_metric = {g.metric: g for g in ab.guardrails}
    assert by_metric["error_rate"].threshold == 0.10
    assert by_metric["p95_latency_ms"].min_count == 200 and by_metric["p95_latency_ms"].threshold == 0.2
    assert ab.warmup_minutes == 30 and ab.started_at is not None and ab.started_at.isoformat().startswith("2026-11-20")

    rollout = flags["ul.load.rollout"]
    assert rollout.experiment_type.value == "rollout"
    assert rollout.definition["targeting"]["fractional"][1:] == [["treatment", 25], ["control", 75]]
    assert flags["ul.load.plain"].guardrails == ()
    assert flags["ul.load.off-broken"].enabled is False

    problems = {(p.flag, p.severity): p for p in loaded.problems}
    no_variants = problems[("ul.load.no-variants", Severity.ERROR)]
    assert no_variants.field is not None and no_variants.field.endswith(".variants")
    assert "no variants" in no_variants.message
    typo = problems[("ul.load.typo", Severity.ERROR)]
    assert typo.field == "tag guardrail:error_rate.threshhold=0.2" and "unknown option" in typo.message
    assert ("ul.load.off-broken", "warning") in problems
    assert "ul.load.no-variants" not in flags and "ul.load.typo" not in flags


def test_refused_token_unknown_environment_and_project(
    unleash_server: UnleashServer, unleash_admin: Admin, sdk_token: str
) -> None:
    with pytest.raises(GuardrailError) as bad:
        run(config(unleash_server, token="*:*.not-a-real-token"), "load")
    assert bad.value.exit_code is ExitCode.CONFIG and bad.value.field == "unleash.token_env"
    assert "UNLEASH_API_TOKEN" in str(bad.value) and "not-a-real-token" not in str(bad.value)
    # A backend (SDK) token is a real token, but not one for the admin API.
    with pytest.raises(GuardrailError) as sdk_only:
        run(config(unleash_server, token=sdk_token), "load")
    assert sdk_only.value.exit_code is ExitCode.CONFIG and "refused the token" in str(sdk_only.value)
    assert sdk_token not in str(sdk_only.value)

    with pytest.raises(GuardrailError) as env:
        run(config(unleash_server, environment="staging"), "load")
    assert env.value.field == "unleash.environment" and "staging" in str(env.value)
    with pytest.raises(GuardrailError) as project:
        run(config(unleash_server, project="no-such-project"), "load")
    assert project.value.field == "unleash.project"


# ---- halting -------------------------------------------------------------------------------------------


def test_halt_switches_the_environment_off(unleash_server: UnleashServer, unleash_admin: Admin, sdk: Any) -> None:
    key = "ul.halt.off"
    unleash_admin.create_flag(key, variants={"control": 500, "treatment": 500}, tags=GUARDRAIL_TAGS)
    cfg = config(unleash_server)
    before = shares(sdk(key))
    assert abs(before["treatment"] - 0.5) < TOLERANCE and abs(before["control"] - 0.5) < TOLERANCE

    outcome: HaltOutcome = run(cfg, "halt", load_flag(cfg, key), "error_rate +240% over control")
    assert outcome.ok and not outcome.already, outcome.detail
    assert unleash_admin.enabled(key) is False
    assert set(sdk(key).values()) == {"disabled"}  # every one of the 1,000 users
    assert event_types(unleash_admin, key)[0] == "feature-environment-disabled"
    assert unleash_admin.events(key)[0]["createdBy"] == "admin"  # the bootstrap token's name

    again: HaltOutcome = run(cfg, "halt", load_flag(cfg, key), "again")
    assert again.ok and again.already
    assert event_types(unleash_admin, key)[0] == "feature-environment-disabled"
    assert event_types(unleash_admin, key).count("feature-environment-disabled") == 1


def test_halt_to_control_keeps_the_flag_on(unleash_server: UnleashServer, unleash_admin: Admin, sdk: Any) -> None:
    key = "ul.halt.control"
    unleash_admin.create_flag(
        key, variants={"control": 500, "treatment": 500}, tags=(*GUARDRAIL_TAGS, "on_halt=control")
    )
    # A constraint and a title the halt must keep: PUT replaces the whole strategy.
    strategy = unleash_admin.strategy(key)
    unleash_admin.call(
        "PUT",
        f"{unleash_admin.env_path(key)}/strategies/{strategy['id']}",
        {
            **{k: strategy[k] for k in ("name", "parameters", "variants", "segments")},
            "title": "checkout A/B",
            "constraints": [{"contextName": "userId", "operator": "NOT_IN", "values": ["blocked-user"]}],
        },
    )
    cfg = config(unleash_server)
    outcome: HaltOutcome = run(cfg, "halt", load_flag(cfg, key), "error_rate breach")
    assert outcome.ok, outcome.detail

    assert unleash_admin.enabled(key) is True
    after = unleash_admin.strategy(key)
    assert {v["name"]: (v["weight"], v["weightType"]) for v in after["variants"]} == {
        "control": (1000, "fix"),
        "treatment": (0, "variable"),
    }
    assert after["title"] == "checkout A/B" and after["constraints"][0]["values"] == ["blocked-user"]
    assert after["parameters"] == strategy["parameters"]
    assert set(sdk(key).values()) == {"control"}
    assert event_types(unleash_admin, key)[0] == "feature-strategy-update"
    assert run(cfg, "halt", load_flag(cfg, key), "again").already


def test_halt_when_someone_already_switched_it_off(unleash_server: UnleashServer, unleash_admin: Admin) -> None:
    """The re-read before the write sees another writer's change: nothing is sent."""
    key = "ul.halt.raced"
    unleash_admin.create_flag(key, variants={"control": 500, "treatment": 500}, tags=GUARDRAIL_TAGS)
    cfg = config(unleash_server)
    flag = load_flag(cfg, key)
    unleash_admin.call("POST", f"{unleash_admin.env_path(key)}/off")
    events = len(unleash_admin.events(key))
    outcome: HaltOutcome = run(cfg, "halt", flag, "breach")
    assert outcome.ok and outcome.already
    assert len(unleash_admin.events(key)) == events


# ---- holding and ramping -------------------------------------------------------------------------------


def test_hold_tags_the_rollout_and_leaves_the_split(
    unleash_server: UnleashServer, unleash_admin: Admin, sdk: Any
) -> None:
    key = "ul.hold.rollout"
    # The tag type is created when missing: remove it first (this test's flag gets its tags after).
    unleash_admin.archive_created()
    unleash_admin.call("DELETE", "/api/admin/tag-types/guardrail", ok=(200, 204, 404))
    unleash_admin.create_flag(key, rollout=30)
    cfg = config(unleash_server)
    flag = load_flag(cfg, key)
    before = sdk(key)

    outcome: HaltOutcome = run(cfg, "hold", flag, "p95 latency +40%")
    assert outcome.ok and not outcome.already, outcome.detail
    assert unleash_admin.tags(key) == {"hold=true"}
    assert unleash_admin.call("GET", "/api/admin/tag-types/guardrail")["tagType"]["name"] == "guardrail"
    after = sdk(key)
    assert after == before  # the same answer for every one of the 1,000 users
    assert abs(shares(after).get("on", 0) - 0.30) < TOLERANCE
    assert unleash_admin.strategy(key)["parameters"]["rollout"] == "30"
    assert "feature-tagged" in event_types(unleash_admin, key)
    assert load_flag(cfg, key).held is True
    assert run(cfg, "hold", flag, "again").already


def test_ramp_step_sets_the_rollout_percent(unleash_server: UnleashServer, unleash_admin: Admin, sdk: Any) -> None:
    key = "ul.ramp.rollout"
    unleash_admin.create_flag(key, rollout=10, tags=(*GUARDRAIL_TAGS, "experiment_type=rollout"))
    cfg = config(unleash_server)
    assert abs(shares(sdk(key)).get("on", 0) - 0.10) < TOLERANCE

    outcome: HaltOutcome = run(cfg, "set_split", load_flag(cfg, key), {"treatment": 50, "control": 50}, "ramp 2/4")
    assert outcome.ok, outcome.detail
    assert unleash_admin.strategy(key)["parameters"]["rollout"] == "50"
    assert abs(shares(sdk(key))["on"] - 0.50) < TOLERANCE
    assert event_types(unleash_admin, key)[0] == "feature-strategy-update"
    assert run(cfg, "set_split", load_flag(cfg, key), {"treatment": 50, "control": 50}, "again").already


def test_ramp_step_sets_variant_weights(unleash_server: UnleashServer, unleash_admin: Admin, sdk: Any) -> None:
    key = "ul.ramp.variants"
    unleash_admin.create_flag(key, variants={"control": 500, "treatment": 500}, tags=GUARDRAIL_TAGS)
    cfg = config(unleash_server)
    outcome: HaltOutcome = run(cfg, "set_split", load_flag(cfg, key), {"control": 80, "treatment": 20}, "ramp")
    assert outcome.ok, outcome.detail
    weights = {v["name"]: v["weight"] for v in unleash_admin.strategy(key)["variants"]}
    assert weights == {"control": 800, "treatment": 200}
    seen = shares(sdk(key))
    assert abs(seen["treatment"] - 0.20) < TOLERANCE and abs(seen["control"] - 0.80) < TOLERANCE
    refused: HaltOutcome = run(cfg, "set_split", load_flag(cfg, key), {"control": 80, "treatment": 30}, "bad")
    assert not refused.ok and refused.permanent
