"""Unleash as the flag backend: flags come from an Unleash project and environment, and halts, holds and
ramp steps are written back through Unleash's admin API (shapes measured against unleash-server 7.5.1;
docs/unleash.md lists every call). The pure parts: unleash_config.py (the `unleash:` section),
unleash_model.py (features and tags to the flag model), unleash_strategy.py (strategy variants and splits);
the strategy writes (a ramp step, the `on_halt=control` halt) are unleash_split.py.

Reads write nothing to Unleash: `GET /api/admin/projects/{p}/features` (every flag with its tags and
per-environment state), then `GET /api/admin/projects/{p}/features/{f}` for each flag with `guardrail`
tags (its strategies). The batch export (`POST /api/admin/features-batch/export`) would read everything
in one call, but Unleash records every export in its event log with the whole export as data
(`features-exported`), which from a cron run every two minutes is 720 copies a day.

Writes, each preceded and followed by a re-read (feature + tags), because Unleash has no conditional
writes: If-Match is ignored and the last writer wins. A change counts as done only when the re-read shows
it; a write whose answer is lost is not sent again once a re-read shows it applied.
- halt (`on_halt=off`, the default): `POST .../features/{f}/environments/{env}/off` (the kill switch).
- halt (`on_halt=control`): `PUT .../environments/{env}/strategies/{id}` with the strategy as read and
  variants control 1000 `fix`, every other variant 0 `variable` (Unleash refuses all-`fix` variants).
- hold: tag `guardrail:hold=true` (creating the `guardrail` tag type if missing).
- set_split: variant weights (`fix`, one `variable` taking the rest) when the strategy has variants,
  otherwise `parameters.rollout`.
Never called: anything that returns secrets (`GET /api/admin/api-tokens` lists every token in clear).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import httpx

from guardrail.adapters import ConfigContext, Plugin, Runtime
from guardrail.flags import unleash_model as um
from guardrail.flags import unleash_split
from guardrail.flags import unleash_strategy as us
from guardrail.flags.base import HaltOutcome, LoadedFlags
from guardrail.flags.unleash_config import UnleashConfig, parse_config
from guardrail.http import HTTPFailure, RetryPolicy, check_token_transport, json_body, request
from guardrail.model import ExitCode, FailureKind, Flag, FlagProblem, GuardrailError

__all__ = ["PLUGIN", "UnleashBackend", "UnleashConfig", "parse_config"]
READ_CONCURRENCY = 8  # per-flag reads in flight at once: a busy Unleash is someone else's production


class UnleashBackend:
    name = "unleash"

    def __init__(
        self, config: UnleashConfig, client: httpx.AsyncClient, *, policy: RetryPolicy = RetryPolicy()
    ) -> None:
        self.config = config
        self.client = client
        self.policy = policy
        self._headers = {"Authorization": config.token}  # Unleash wants the bare token, no `Bearer`
        self._source = f"{config.url} (project {config.project}, environment {config.environment})"

    # ---- plumbing -------------------------------------------------------------------------------------
    def _feature_url(self, key: str) -> str:
        return f"{self.config.features_url}/{quote(key, safe='')}"

    def _env_path(self, key: str) -> str:
        return f"{self._feature_url(key)}/environments/{quote(self.config.environment, safe='')}"

    def link(self, key: str) -> str:
        """The flag's page in the Unleash UI (for alerts)."""
        return f"{self.config.url}/projects/{quote(self.config.project, safe='')}/features/{quote(key, safe='')}"

    async def _call(
        self,
        method: str,
        url: str,
        label: str,
        *,
        once: bool = False,
        ok: tuple[int, ...] | None = None,
        body: Any = None,
    ) -> httpx.Response:
        policy = replace(self.policy, attempts=1) if once else self.policy
        kwargs: dict[str, Any] = {"headers": self._headers}
        if body is not None:
            kwargs["json"] = body
        return await request(
            self.client, method, url, label=f"Unleash {label}", policy=policy, ok_statuses=ok, **kwargs
        )

    def _refused(self, status: int | None, what: str) -> str:
        c = self.config
        return (
            f"Unleash refused the token in {c.token_env} (HTTP {status}) {what}: the token is wrong, expired, or "
            f"not an admin token / personal access token with access to project {c.project!r} and environment "
            f"{c.environment!r} (check the token's name and environment in Unleash)"
        )

    def _read_error(self, exc: HTTPFailure, what: str) -> GuardrailError:
        if exc.status in (401, 403):
            return GuardrailError(
                self._refused(exc.status, f"reading {what}"),
                source=self.config.url,
                field="unleash.token_env",
                exit_code=ExitCode.CONFIG,
                kind=FailureKind.AUTH,
            )
        return GuardrailError(
            f"Unleash unavailable: {exc}", source=self.config.url, exit_code=ExitCode.UNEVALUATED, kind=exc.failure
        )

    async def _json(self, url: str, label: str, *, missing_ok: bool = False) -> Any:
        """GET a JSON answer; None for a 404 when `missing_ok`. Raises GuardrailError naming the cause."""
        try:
            answer = await self._call("GET", url, label, ok=(200, 404) if missing_ok else None)
            return None if answer.status_code == 404 else json_body(answer)
        except HTTPFailure as exc:
            raise self._read_error(exc, label) from None
        except ValueError as exc:
            raise GuardrailError(
                f"Unleash {label}: {exc}",
                source=self.config.url,
                exit_code=ExitCode.UNEVALUATED,
                kind=FailureKind.BAD_ANSWER,
            ) from None

    # ---- reads ----------------------------------------------------------------------------------------
    async def load(self) -> LoadedFlags:
        c = self.config
        env_url = f"{c.url}/api/admin/environments/{quote(c.environment, safe='')}"
        if await self._json(env_url, "environment", missing_ok=True) is None:
            raise GuardrailError(
                f"Unleash has no environment {c.environment!r}",
                source=c.url,
                field="unleash.environment",
                exit_code=ExitCode.CONFIG,
            )
        listing = await self._json(c.features_url, "feature list")
        items = listing.get("features") if isinstance(listing, Mapping) else None
        if not isinstance(items, list):
            raise GuardrailError(
                "Unleash feature list: the answer has no `features` list",
                source=c.features_url,
                exit_code=ExitCode.UNEVALUATED,
                kind=FailureKind.BAD_ANSWER,
            )
        if not items:
            await self._check_project()
        listed = [
            um.listed_feature(i, c.project, c.environment)
            for i in items
            if isinstance(i, Mapping) and isinstance(i.get("name"), str)
        ]
        gate = asyncio.Semaphore(READ_CONCURRENCY)

        async def detail(feature: us.Feature) -> us.Feature | FlagProblem | None:
            if not feature.tags:
                return feature  # not guarded: the listing says enough
            async with gate:
                try:
                    return await self._read(feature.name, tags=feature.tags)
                except GuardrailError as exc:
                    if exc.kind is not FailureKind.BAD_ANSWER:
                        raise  # Unleash down or the token refused: the whole run is unevaluated
                    return FlagProblem(feature.name, exc.message, source=self._source)  # one bad answer, one flag

        definitions: dict[str, Mapping[str, Any]] = {}
        problems: list[FlagProblem] = []
        for feature in await asyncio.gather(*(detail(f) for f in listed)):
            if isinstance(feature, FlagProblem):
                problems.append(feature)
                continue
            if feature is None:
                continue  # archived or moved between the listing and its read
            definition, found = um.to_definition(feature, c.environment, self._source)
            problems.extend(found)
            if definition is not None:
                definitions[feature.name] = definition
        return LoadedFlags(source=self._source, definitions=definitions, problems=tuple(problems))

    async def _check_project(self) -> None:
        """An unknown project lists no features: tell it apart from a project with no flags."""
        listing = await self._json(f"{self.config.url}/api/admin/projects", "project list")
        projects = listing.get("projects") if isinstance(listing, Mapping) else None
        ids = [p.get("id") for p in projects if isinstance(p, Mapping)] if isinstance(projects, list) else []
        if self.config.project not in ids:
            raise GuardrailError(
                f"Unleash has no project {self.config.project!r}",
                source=self.config.url,
                field="unleash.project",
                exit_code=ExitCode.CONFIG,
            )

    async def _read(self, key: str, *, tags: tuple[str, ...] | None = None) -> us.Feature | None:
        """A fresh look at one feature: strategies, state and (unless given) tags. None when it is gone."""
        if tags is None:
            detail, tag_answer = await asyncio.gather(
                self._json(self._feature_url(key), "feature", missing_ok=True),
                self._json(f"{self.config.url}/api/admin/features/{quote(key, safe='')}/tags", "tags", missing_ok=True),
            )
            tags = um.guardrail_tags(tag_answer.get("tags") if isinstance(tag_answer, Mapping) else None)
        else:
            detail = await self._json(self._feature_url(key), "feature", missing_ok=True)
        if detail is None:
            return None
        feature, why = um.detailed_feature(detail, tags, self.config.environment)
        if feature is None:
            raise GuardrailError(
                f"Unleash feature {key!r}: {why}",
                source=self.config.url,
                exit_code=ExitCode.UNEVALUATED,
                kind=FailureKind.BAD_ANSWER,
            )
        return feature if feature.project == self.config.project else None

    async def get(self, key: str) -> Mapping[str, Any] | None:
        feature = await self._read_or_none(key)
        if feature is None:
            return None
        definition, _ = um.to_definition(feature, self.config.environment, self._source)
        return definition

    async def _read_or_none(self, key: str) -> us.Feature | None:
        try:
            return await self._read(key)
        except GuardrailError:
            return None

    # ---- writes ---------------------------------------------------------------------------------------
    async def _before(self, key: str) -> tuple[us.Feature | None, HaltOutcome]:
        try:
            current = await self._read(key)
        except GuardrailError as exc:
            kind = exc.kind or FailureKind.UNREACHABLE
            return None, HaltOutcome(ok=False, kind=kind, detail=f"re-read before writing failed: {exc.message}")
        if current is None:
            return None, HaltOutcome(
                ok=False,
                kind=FailureKind.NOT_FOUND,
                detail=f"flag not found in Unleash project {self.config.project!r}",
            )
        return current, HaltOutcome(ok=True, detail="")

    async def _write(
        self,
        key: str,
        what: str,
        current: us.Feature,
        applied: Callable[[us.Feature], bool],
        send: Callable[[us.Feature], Awaitable[Any]],
    ) -> HaltOutcome:
        """Send a write, retrying failures with backoff; re-read before every retry (stop as soon as it shows
        the change) and after the write: only a re-read showing the change makes it done."""
        failure: HTTPFailure | None = None
        for attempt in range(max(1, self.policy.attempts)):
            if attempt:
                await asyncio.sleep(min(self.policy.max_backoff, self.policy.backoff * 2 ** (attempt - 1)))
                fresh = await self._read_or_none(key)
                if fresh is not None and applied(fresh):
                    kind = failure.kind if failure else "no answer"
                    return HaltOutcome(ok=True, detail=f"{what}: the answer was lost ({kind}) but a re-read shows it")
                current = fresh or current
            try:
                await send(current)
                failure = None
                break
            except HTTPFailure as exc:
                failure = exc
                if exc.permanent:
                    break
        after = await self._read_or_none(key)
        if after is not None and applied(after):
            return HaltOutcome(ok=True, detail=f"{what}; a re-read shows it")
        if failure is not None:
            detail = (
                self._refused(failure.status, f"writing ({what})")
                if failure.status in (401, 403)
                else f"{what}: {failure}"
            )
            return HaltOutcome(ok=False, kind=failure.failure, detail=detail)
        return HaltOutcome(
            ok=False,
            kind=FailureKind.CONFLICT,
            detail=f"{what}: Unleash answered, but a re-read does not show the change "
            "(another writer, or the re-read failed)",
        )

    async def halt(self, flag: Flag, reason: str) -> HaltOutcome:
        """Revert an experiment. The reason goes to guardrail's audit log and alert; Unleash's event log
        records the change under the token's name."""
        current, outcome = await self._before(flag.key)
        if current is None:
            return outcome
        if not current.enabled:
            return HaltOutcome(ok=True, already=True, detail=f"flag already off in {self.config.environment}")
        if um.read_options(current.tags).on_halt == "off":
            url = f"{self._env_path(flag.key)}/off"
            return await self._write(
                flag.key,
                f"switched off in {self.config.environment}",
                current,
                lambda f: not f.enabled,
                lambda _f: self._call("POST", url, "kill switch", once=True),
            )
        return await unleash_split.halt_to_control(self, flag, current)

    async def hold(self, flag: Flag, reason: str) -> HaltOutcome:
        """Hold a rollout at its current split: tag guardrail:hold=true (the open-source edition has no
        native hold). Removing the tag in Unleash resumes it."""
        current, outcome = await self._before(flag.key)
        if current is None:
            return outcome
        if um.read_options(current.tags).hold:
            return HaltOutcome(ok=True, already=True, detail="rollout was already held (tag guardrail:hold=true)")
        try:
            await self._ensure_tag_type()
        except HTTPFailure as exc:
            return HaltOutcome(ok=False, kind=exc.failure, detail=f"creating tag type guardrail: {exc}")
        url = f"{self.config.url}/api/admin/features/{quote(flag.key, safe='')}/tags"
        return await self._write(
            flag.key,
            "held at its current split (tag guardrail:hold=true)",
            current,
            lambda f: um.read_options(f.tags).hold,
            lambda _f: self._call("POST", url, "tag", once=True, body={"type": um.TAG_TYPE, "value": um.HOLD_TAG}),
        )

    async def _ensure_tag_type(self) -> None:
        url = f"{self.config.url}/api/admin/tag-types/{um.TAG_TYPE}"
        if (await self._call("GET", url, "tag type", ok=(200, 404))).status_code == 404:
            await self._call(
                "POST",
                f"{self.config.url}/api/admin/tag-types",
                "tag type create",
                ok=(200, 201, 409),
                body={"name": um.TAG_TYPE, "description": "guardrail options"},
            )

    async def set_split(self, flag: Flag, shares: Mapping[str, int], reason: str) -> HaltOutcome:
        """A ramp step (guardrail/flags/unleash_split.py); the reason is guardrail's audit."""
        return await unleash_split.set_split(self, flag, shares)

    async def aclose(self) -> None:
        """The client belongs to the run."""


# ---- the plugin -------------------------------------------------------------------------------------


def _parse(ctx: ConfigContext) -> UnleashConfig:
    config = parse_config(ctx.doc.get("unleash"), ctx.env, ctx.source)
    return replace(config, allow_insecure_http=bool(ctx.option("allow_insecure_http")))


def _ready(config: UnleashConfig) -> None:
    # The token is refused over plain http to another host before the run starts, not at halt time.
    check_token_transport(config.url, allow_insecure_http=config.allow_insecure_http, what="unleash.url")


def _create(config: UnleashConfig, runtime: Runtime) -> UnleashBackend:
    return UnleashBackend(config, runtime.client, policy=runtime.policy)


PLUGIN = Plugin(
    name="unleash",
    summary="an Unleash server's admin API (the `unleash:` section)",
    parse=_parse,
    create=_create,
    ready=_ready,
    secrets=lambda c: [c.token],
)
