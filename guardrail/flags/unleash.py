"""Unleash as the flag backend: flags come from an Unleash project and environment, and halts, holds and
ramp steps are written back through Unleash's admin API (shapes measured against unleash-server 7.5.1;
docs/unleash.md lists every call).

Reads: `GET /api/admin/projects/{project}/features` (names), then one
`POST /api/admin/features-batch/export {"environment", "features": [names]}` (strategies, variants,
enabled state, tags). unleash_model.py turns that into the flag model.

Writes, each preceded and followed by a re-read (the export of that one feature), because Unleash has no
conditional writes: If-Match is ignored and the last writer wins. A change counts as done only when the
re-read shows it; a write whose answer is lost is not sent again once a re-read shows it applied.
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
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from guardrail.flags import unleash_model as um
from guardrail.flags.base import HaltOutcome, LoadedFlags
from guardrail.http import HTTPFailure, RetryPolicy, json_body, request
from guardrail.model import ExitCode, Flag, GuardrailError

DEFAULT_TOKEN_ENV = "UNLEASH_API_TOKEN"
SECTION_KEYS = frozenset({"url", "project", "environment", "token_env"})


@dataclass(frozen=True)
class UnleashConfig:
    url: str
    environment: str
    project: str = "default"
    token_env: str = DEFAULT_TOKEN_ENV
    token: str = field(default="", repr=False)

    @property
    def features_url(self) -> str:
        return f"{self.url}/api/admin/projects/{quote(self.project, safe='')}/features"


def parse_config(section: Any, env: Mapping[str, str], source: str) -> UnleashConfig:
    """The `unleash:` section of the config file, with the token from the variable it names."""

    def fail(message: str, name: str, code: ExitCode = ExitCode.CONFIG) -> GuardrailError:
        return GuardrailError(message, source=source, field=f"unleash.{name}" if name else "unleash", exit_code=code)

    if not isinstance(section, Mapping):
        raise fail("`flag_backend: unleash` needs an `unleash:` mapping with url and environment", "")
    if "token" in section:
        raise fail("secrets do not belong in a config file; name an environment variable with `token_env`", "token")
    unknown = sorted(set(map(str, section)) - SECTION_KEYS)
    if unknown:
        raise fail(f"unknown key; known: {', '.join(sorted(SECTION_KEYS))}", unknown[0])
    values: dict[str, str] = {}
    for name, default in (
        ("url", None),
        ("environment", None),
        ("project", "default"),
        ("token_env", DEFAULT_TOKEN_ENV),
    ):
        value = section.get(name, default)
        if not isinstance(value, str) or not value.strip():
            raise fail(
                "is required and must be a non-empty string" if default is None else "must be a non-empty string", name
            )
        values[name] = value.strip()
    url = values["url"].rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise fail(f"must be the server's http(s) base URL, e.g. http://127.0.0.1:4242, got {url!r}", "url")
    if url.endswith("/api") or "/api/" in parts.path:
        raise fail("give the server's base URL; guardrail adds /api/admin/...", "url")
    token = env.get(values["token_env"], "")
    if not token.strip():
        raise fail(
            f"environment variable {values['token_env']} is not set: it must hold an Unleash admin API token "
            "or personal access token",
            "token_env",
        )
    return UnleashConfig(
        url=url,
        environment=values["environment"],
        project=values["project"],
        token_env=values["token_env"],
        token=token.strip(),
    )


class UnleashBackend:
    name = "unleash"

    def __init__(
        self, config: UnleashConfig, client: httpx.AsyncClient, *, policy: RetryPolicy = RetryPolicy()
    ) -> None:
        self.config = config
        self.client = client
        self.policy = policy
        # Unleash wants the bare token: `Authorization: <token>`, no `Bearer`.
        self._headers = {"Authorization": config.token}

    # ---- plumbing -------------------------------------------------------------------------------------
    def _env_path(self, key: str) -> str:
        c = self.config
        return (
            f"{c.url}/api/admin/projects/{quote(c.project, safe='')}/features/{quote(key, safe='')}"
            f"/environments/{quote(c.environment, safe='')}"
        )

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

    def _load_error(self, exc: HTTPFailure, what: str) -> GuardrailError:
        c = self.config
        if exc.status in (401, 403):
            return GuardrailError(
                f"Unleash refused the token in {c.token_env} (HTTP {exc.status}) while reading {what}: the token is "
                f"wrong, expired, or not an admin/personal access token with access to project {c.project!r} and "
                f"environment {c.environment!r} (check the token's name and environment in Unleash)",
                source=c.url,
                field="unleash.token_env",
                exit_code=ExitCode.CONFIG,
            )
        return GuardrailError(f"Unleash unavailable: {exc}", source=c.url, exit_code=ExitCode.UNEVALUATED)

    # ---- reads ----------------------------------------------------------------------------------------
    async def _json(self, method: str, url: str, label: str, body: Any = None) -> Any:
        try:
            return json_body(await self._call(method, url, label, body=body))
        except HTTPFailure as exc:
            raise self._load_error(exc, label) from None
        except ValueError as exc:
            raise GuardrailError(
                f"Unleash {label}: {exc}", source=self.config.url, exit_code=ExitCode.UNEVALUATED
            ) from None

    async def _export(self, names: list[str]) -> list[um.Feature]:
        if not names:
            return []  # an empty `features` list would export every feature of every project
        answer = await self._json(
            "POST",
            f"{self.config.url}/api/admin/features-batch/export",
            "export",
            {"environment": self.config.environment, "features": names},
        )
        features, why = um.features_from_export(answer, names, self.config.environment)
        if why:
            raise GuardrailError(f"Unleash export: {why}", source=self.config.url, exit_code=ExitCode.UNEVALUATED)
        return features

    async def _check_environment(self) -> None:
        c = self.config
        try:
            await self._call("GET", f"{c.url}/api/admin/environments/{quote(c.environment, safe='')}", "environment")
        except HTTPFailure as exc:
            if exc.status == 404:
                raise GuardrailError(
                    f"Unleash has no environment {c.environment!r}",
                    source=c.url,
                    field="unleash.environment",
                    exit_code=ExitCode.CONFIG,
                ) from None
            raise self._load_error(exc, "the environment") from None

    async def load(self) -> LoadedFlags:
        c = self.config
        await self._check_environment()
        listing = await self._json("GET", c.features_url, "feature list")
        items = listing.get("features") if isinstance(listing, Mapping) else None
        if not isinstance(items, list):
            raise GuardrailError(
                "Unleash feature list: answer has no `features` list",
                source=c.features_url,
                exit_code=ExitCode.UNEVALUATED,
            )
        names = [str(f["name"]) for f in items if isinstance(f, Mapping) and isinstance(f.get("name"), str)]
        if not names:
            await self._check_project()
        source = f"{c.url} (project {c.project}, environment {c.environment})"
        definitions: dict[str, Mapping[str, Any]] = {}
        problems = []
        for feature in await self._export(names):
            definition, found = um.to_definition(feature, c.environment, source)
            problems.extend(found)
            if definition is not None:
                definitions[feature.name] = definition
        return LoadedFlags(source=source, definitions=definitions, problems=tuple(problems))

    async def _check_project(self) -> None:
        """An unknown project answers an empty list: tell it apart from a project with no flags."""
        listing = await self._json("GET", f"{self.config.url}/api/admin/projects", "project list")
        projects = listing.get("projects") if isinstance(listing, Mapping) else None
        ids = [p.get("id") for p in projects if isinstance(p, Mapping)] if isinstance(projects, list) else []
        if self.config.project not in ids:
            raise GuardrailError(
                f"Unleash has no project {self.config.project!r}",
                source=self.config.url,
                field="unleash.project",
                exit_code=ExitCode.CONFIG,
            )

    async def _read(self, key: str) -> um.Feature | None:
        """A fresh look at one feature (raises GuardrailError when Unleash cannot be read)."""
        found = await self._export([key])
        if not found or found[0].project != self.config.project:
            return None
        return found[0]

    async def get(self, key: str) -> Mapping[str, Any] | None:
        try:
            feature = await self._read(key)
        except GuardrailError:
            return None
        if feature is None:
            return None
        definition, _ = um.to_definition(feature, self.config.environment, self.config.url)
        return definition

    # ---- writes ---------------------------------------------------------------------------------------
    async def _write(
        self,
        key: str,
        what: str,
        current: um.Feature,
        applied: Callable[[um.Feature], bool],
        send: Callable[[um.Feature], Awaitable[Any]],
    ) -> HaltOutcome:
        """Send a write, retrying failures with backoff; re-read before every retry (stop as soon as it shows
        the change) and after the write: only a re-read showing the change makes it done."""
        failure: HTTPFailure | None = None
        for attempt in range(max(1, self.policy.attempts)):
            if attempt:
                await asyncio.sleep(min(self.policy.max_backoff, self.policy.backoff * 2 ** (attempt - 1)))
                fresh = await self._read_or_none(key)
                if fresh is None:
                    break
                if applied(fresh):
                    return HaltOutcome(
                        ok=True,
                        detail=f"{what}: answer lost ({failure and failure.kind}) but a re-read shows it applied",
                    )
                current = fresh
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
            return HaltOutcome(ok=True, detail=f"{what}; a re-read shows it applied")
        if failure is not None:
            return HaltOutcome(ok=False, permanent=failure.permanent, detail=self._write_error(failure, what))
        return HaltOutcome(
            ok=False,
            detail=f"{what}: Unleash answered, but a re-read does not show the change "
            "(another writer, or the re-read failed); retried next run",
        )

    def _write_error(self, exc: HTTPFailure, what: str) -> str:
        if exc.status in (401, 403):
            return (
                f"{what}: Unleash refused the token in {self.config.token_env} (HTTP {exc.status}); it needs "
                f"write access to project {self.config.project!r}, environment {self.config.environment!r}"
            )
        return f"{what}: {exc}"

    async def _read_or_none(self, key: str) -> um.Feature | None:
        try:
            return await self._read(key)
        except GuardrailError:
            return None

    async def _before(self, key: str) -> tuple[um.Feature | None, HaltOutcome | None]:
        try:
            current = await self._read(key)
        except GuardrailError as exc:
            return None, HaltOutcome(ok=False, detail=f"re-read before writing failed: {exc.message}")
        if current is None:
            return None, HaltOutcome(
                ok=False, permanent=True, detail=f"flag not found in Unleash project {self.config.project!r}"
            )
        return current, None

    async def halt(self, flag: Flag, reason: str) -> HaltOutcome:
        current, failed = await self._before(flag.key)
        if current is None:
            return failed or HaltOutcome(ok=False, detail="flag not found")
        on_halt = um.read_options(current.tags).on_halt
        if not current.enabled:
            return HaltOutcome(ok=True, already=True, detail=f"flag already off in {self.config.environment}")
        if on_halt == "off":
            url = f"{self._env_path(flag.key)}/off"
            return await self._write(
                flag.key,
                f"switched off in {self.config.environment}",
                current,
                lambda f: not f.enabled,
                lambda _f: self._call("POST", url, "kill switch", once=True),
            )
        control = flag.control_variant
        strategy, why = um.guarded_strategy(current, self.config.environment)
        if strategy is None:
            return HaltOutcome(ok=False, permanent=True, detail=f"on_halt=control: {why}")
        sid = str(strategy.get("id"))
        if _serves_only(strategy, control):
            return HaltOutcome(ok=True, already=True, detail=f"strategy already gives everyone {control}")

        async def put(feature: um.Feature) -> Any:
            fresh, _ = um.guarded_strategy(feature, self.config.environment)
            base = fresh if fresh is not None and str(fresh.get("id")) == sid else strategy
            return await self._put_strategy(flag.key, base, _control_variants(base, control))

        return await self._write(
            flag.key,
            f"strategy {sid}: everyone gets {control} (control 1000 fix)",
            current,
            lambda f: f.enabled and _strategy_serves_only(f, sid, control),
            put,
        )

    async def _put_strategy(
        self,
        key: str,
        strategy: Mapping[str, Any],
        variants: list[dict[str, Any]] | None,
        parameters: Mapping[str, Any] | None = None,
    ) -> Any:
        """PUT the strategy as read with new variants/parameters: PUT replaces the whole strategy, so every
        field (constraints, segments, title, disabled) is sent back as it was."""
        body = {
            "name": strategy.get("name"),
            "title": strategy.get("title"),
            "disabled": bool(strategy.get("disabled", False)),
            "constraints": strategy.get("constraints") or [],
            "segments": strategy.get("segments") or [],
            "parameters": dict(parameters if parameters is not None else strategy.get("parameters") or {}),
            "variants": variants if variants is not None else list(strategy.get("variants") or []),
        }
        url = f"{self._env_path(key)}/strategies/{quote(str(strategy.get('id')), safe='')}"
        return await self._call("PUT", url, "strategy update", once=True, body=body)

    async def hold(self, flag: Flag, reason: str) -> HaltOutcome:
        current, failed = await self._before(flag.key)
        if current is None:
            return failed or HaltOutcome(ok=False, detail="flag not found")
        if um.read_options(current.tags).hold:
            return HaltOutcome(ok=True, already=True, detail="rollout was already held (tag guardrail:hold=true)")
        try:
            await self._ensure_tag_type()
        except HTTPFailure as exc:
            return HaltOutcome(ok=False, permanent=exc.permanent, detail=self._write_error(exc, "tag type guardrail"))
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
        answer = await self._call("GET", url, "tag type", ok=(200, 404))
        if answer.status_code == 404:
            await self._call(
                "POST",
                f"{self.config.url}/api/admin/tag-types",
                "tag type create",
                ok=(200, 201, 409),
                body={"name": um.TAG_TYPE, "description": "guardrail options (see guardrail's docs)"},
            )

    async def set_split(self, flag: Flag, shares: Mapping[str, int], reason: str) -> HaltOutcome:
        """A ramp step. Shares are whole percents per variant summing to 100. With strategy variants the
        weights are set (per mille); a rollout without variants sets `parameters.rollout` to the
        treatment's share."""
        if sum(shares.values()) != 100 or any(not isinstance(v, int) or v < 0 for v in shares.values()):
            return HaltOutcome(
                ok=False, permanent=True, detail=f"shares {dict(shares)} must be whole percents summing to 100"
            )
        current, failed = await self._before(flag.key)
        if current is None:
            return failed or HaltOutcome(ok=False, detail="flag not found")
        strategy, why = um.guarded_strategy(current, self.config.environment)
        if strategy is None:
            return HaltOutcome(ok=False, permanent=True, detail=why)
        sid = str(strategy.get("id"))
        if strategy.get("variants"):
            weights, why = um.variant_weights(strategy)
            unknown = sorted(set(shares) - set(weights))
            if not weights or unknown:
                return HaltOutcome(ok=False, permanent=True, detail=why or f"unknown variants {unknown}")
            wanted = {name: shares.get(name, 0) * 10 for name in weights}

            def applied(f: um.Feature) -> bool:
                s, _ = um.guarded_strategy(f, self.config.environment)
                return s is not None and str(s.get("id")) == sid and um.variant_weights(s)[0] == wanted

            def send(f: um.Feature) -> Awaitable[Any]:
                s, _ = um.guarded_strategy(f, self.config.environment)
                return self._put_strategy(flag.key, s or strategy, _weighted_variants(s or strategy, wanted))

            what = "variant weights " + ", ".join(f"{n}={w}" for n, w in wanted.items())
        else:
            if set(shares) - set(um.ROLLOUT_VARIANTS):
                return HaltOutcome(
                    ok=False,
                    permanent=True,
                    detail=f"a rollout without variants has the arms {list(um.ROLLOUT_VARIANTS)}",
                )
            percent = 100 - shares.get("control", 0)

            def applied(f: um.Feature) -> bool:
                s, _ = um.guarded_strategy(f, self.config.environment)
                return s is not None and str(s.get("id")) == sid and um.rollout_percent(s) == percent

            def send(f: um.Feature) -> Awaitable[Any]:
                s, _ = um.guarded_strategy(f, self.config.environment)
                base = s or strategy
                return self._put_strategy(
                    flag.key, base, None, {**(base.get("parameters") or {}), "rollout": str(percent)}
                )

            what = f"rollout {percent}%"
        if applied(current):
            return HaltOutcome(ok=True, already=True, detail=f"{what} already set")
        return await self._write(flag.key, f"strategy {sid}: {what}", current, applied, send)

    async def aclose(self) -> None:
        """The client belongs to the run."""


def _serves_only(strategy: Mapping[str, Any], control: str) -> bool:
    weights, _ = um.variant_weights(strategy)
    return bool(weights) and weights.get(control) == um.TOTAL_WEIGHT


def _strategy_serves_only(feature: um.Feature, sid: str, control: str) -> bool:
    return any(
        str(s.get("id")) == sid and not s.get("disabled") and _serves_only(s, control) for s in feature.strategies
    )


def _control_variants(strategy: Mapping[str, Any], control: str) -> list[dict[str, Any]]:
    """Everyone gets control: control 1000 `fix`, the rest `variable` (Unleash wants one variable variant;
    the variable ones share what the fixed ones leave, here 0)."""
    return [
        {
            **v,
            "weight": um.TOTAL_WEIGHT if v.get("name") == control else 0,
            "weightType": "fix" if v.get("name") == control else "variable",
        }
        for v in strategy.get("variants") or []
    ]


def _weighted_variants(strategy: Mapping[str, Any], wanted: Mapping[str, int]) -> list[dict[str, Any]]:
    """Exact weights: every variant `fix` except one `variable` that takes the rest. Unleash spreads the
    remainder evenly over `variable` variants and ignores the weights sent for them."""
    variants = [dict(v) for v in strategy.get("variants") or []]
    last = max(range(len(variants)), key=lambda i: (wanted.get(str(variants[i].get("name")), 0), i))
    for i, v in enumerate(variants):
        v["weight"] = wanted.get(str(v.get("name")), 0)
        v["weightType"] = "variable" if i == last else "fix"
    return variants
