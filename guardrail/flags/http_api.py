"""The flag management API (docs/contracts.md): list, get, PATCH to halt or hold, PUT .../force.

Configured by FLAG_API_URL (or `flag_api.url`) and the token in FLAG_API_TOKEN (or the variable named by
`flag_api.token_env`). Flags may still come from a local file (`--flags PATH`) while halts go to the API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from guardrail.adapters import ConfigContext, Plugin, Runtime
from guardrail.config import is_held
from guardrail.flags.base import HaltOutcome, LoadedFlags
from guardrail.http import HTTPFailure, RetryPolicy, check_token_transport, json_body, request, side_effect, url_problem
from guardrail.model import ExitCode, FailureKind, Flag, GuardrailError
from guardrail.redact import display_url
from guardrail.split import set_weights, split_matches


def _reverted(definition: Any, control: str) -> bool:
    return (
        isinstance(definition, Mapping)
        and definition.get("state") == "DISABLED"
        and definition.get("defaultVariant") == control
    )


def _serves_only(definition: Any, control: str) -> bool:
    """What the force-variant call must achieve: every user gets `control`. Either the flag is reverted, or
    its default is control and no targeting rule is left to route anyone elsewhere. A default that was
    already `control` before the call proves nothing on its own: the split decides who gets what."""
    if _reverted(definition, control):
        return True
    return (
        isinstance(definition, Mapping)
        and definition.get("defaultVariant") == control
        and definition.get("state") in ("ENABLED", "DISABLED")
        and not definition.get("targeting")
    )


class HttpFlagBackend:
    name = "api"

    def __init__(
        self,
        base_url: str,
        client: httpx.AsyncClient,
        *,
        token: str | None,
        policy: RetryPolicy = RetryPolicy(),
        definitions_file: Path | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = client
        self.policy = policy
        self.definitions_file = definitions_file
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def _url(self, key: str, suffix: str = "") -> str:
        return f"{self.base_url}/v1/flags/{quote(key, safe='')}{suffix}"

    def link(self, key: str) -> str:
        return display_url(self._url(key))  # never the user:password of the URL, if it has one

    async def load(self) -> LoadedFlags:
        if self.definitions_file is not None:  # definitions from a file, halts through the API
            from guardrail.flags.flagd_file import FlagdFileBackend

            return await FlagdFileBackend(self.definitions_file).load()
        source = display_url(f"{self.base_url}/v1/flags")
        try:
            response = await request(
                self.client, "GET", f"{self.base_url}/v1/flags", label="flag API list", policy=self.policy
            )
            body = json_body(response)
        except HTTPFailure as exc:
            raise GuardrailError(str(exc), source=source, exit_code=ExitCode.UNEVALUATED, kind=exc.failure) from None
        except ValueError as exc:
            raise GuardrailError(
                f"flag API list: {exc}", source=source, exit_code=ExitCode.UNEVALUATED, kind=FailureKind.BAD_ANSWER
            ) from None
        if not isinstance(body, Mapping) or not isinstance(body.get("flags"), Mapping):
            raise GuardrailError(
                "answer has no `flags` object",
                source=source,
                exit_code=ExitCode.UNEVALUATED,
                kind=FailureKind.BAD_ANSWER,
            )
        return LoadedFlags(source=source, definitions=body["flags"])

    async def get(self, key: str) -> Mapping[str, Any] | None:
        try:
            response = await request(
                self.client,
                "GET",
                self._url(key),
                label="flag API get",
                policy=self.policy,
                ok_statuses=(200, 404),
            )
        except HTTPFailure:
            return None
        if response.status_code == 404:
            return None
        try:
            body = json_body(response)
        except ValueError:
            return None
        return body if isinstance(body, Mapping) else None

    async def _patch(self, key: str, body: Mapping[str, Any]) -> Any:
        # One try: _until_applied does the retrying, looking at the flag between tries.
        response = await request(
            self.client,
            "PATCH",
            self._url(key),
            label="flag API PATCH",
            policy=replace(self.policy, attempts=1),
            json=dict(body),
            headers=self._headers,
        )
        try:
            return json_body(response)
        except ValueError:
            return None  # an unreadable answer is checked by re-reading the flag

    async def _patch_with_reason(self, key: str, body: dict[str, Any], reason: str) -> Any:
        """Send the reason in metadata where the server accepts it; some servers reject unknown fields,
        and the halt matters more than the note (the reason always goes to the audit log)."""
        try:
            return await self._patch(key, {**body, "metadata": {"guardrail_reason": reason}})
        except HTTPFailure as exc:
            if exc.status not in (400, 422):
                raise
        return await self._patch(key, body)

    async def _until_applied(
        self, key: str, send: Callable[[], Awaitable[Any]], applied: Callable[[Any], bool]
    ) -> tuple[Any, HTTPFailure | None]:
        """Send a write, retrying failures with backoff, but re-read the flag before every retry and stop as
        soon as it shows the change: a write whose answer was lost (timeout, reset, 5xx) may have been
        applied, and sending it again blind is how a flag gets halted twice.

        Returns (answer, None) when sent, (None, failure) when it failed, or (None, failure) with the
        failure's `applied_anyway` set when the re-read showed the change."""
        failure: HTTPFailure | None = None
        for attempt in range(max(1, self.policy.attempts)):
            if attempt:
                await asyncio.sleep(min(self.policy.max_backoff, self.policy.backoff * 2 ** (attempt - 1)))
            if failure is not None and applied(await self.get(key)):
                failure.applied_anyway = True
                return None, failure
            try:
                return await send(), None
            except HTTPFailure as exc:
                failure = exc
                if exc.permanent:
                    break
        assert failure is not None
        failure.applied_anyway = applied(await self.get(key))
        return None, failure

    async def halt(self, flag: Flag, reason: str) -> HaltOutcome:
        # A decided halt is sent, and verified, even past the run's read budget (each try is still bounded).
        with side_effect():
            return await self._halt(flag, reason)

    async def hold(self, flag: Flag, reason: str) -> HaltOutcome:
        with side_effect():
            return await self._hold(flag, reason)

    async def _halt(self, flag: Flag, reason: str) -> HaltOutcome:
        """Done only when a re-read shows it: never on a PATCH or force answer alone (a proxy, a cache or a
        buggy server can answer 200 and change nothing)."""
        control = flag.control_variant
        if _reverted(await self.get(flag.key), control):
            return HaltOutcome(
                ok=True, already=True, detail="flag was already DISABLED with the control default (re-read)"
            )
        _answer, failure = await self._until_applied(
            flag.key,
            lambda: self._patch_with_reason(flag.key, {"state": "DISABLED", "defaultVariant": control}, reason),
            lambda definition: _reverted(definition, control),
        )
        if failure is not None:
            if failure.applied_anyway:
                return HaltOutcome(
                    ok=True, detail=f"PATCH answer lost ({failure.kind}) but a re-read shows the flag halted"
                )
            return HaltOutcome(ok=False, detail=str(failure), kind=failure.failure)
        if _reverted(await self.get(flag.key), control):
            return HaltOutcome(ok=True, detail=f"PATCH applied (re-read: state DISABLED, defaultVariant {control})")
        # The re-read does not show both fields (a non-atomic server, or one that ignored the PATCH):
        # force the control variant instead (docs/contracts.md).
        try:
            await request(
                self.client,
                "PUT",
                self._url(flag.key, "/force"),
                label="flag API force",
                policy=self.policy,
                json={"variant": control},
                headers=self._headers,
            )
        except HTTPFailure as exc:
            return HaltOutcome(
                ok=False,
                kind=exc.failure,
                detail=f"PATCH did not apply both fields and the force-variant call failed: {exc}",
            )
        after = await self.get(flag.key)
        if _serves_only(after, control):
            return HaltOutcome(ok=True, detail=f"PATCH was not applied as sent; forced variant {control} (re-read)")
        seen = (
            "could not be re-read"
            if after is None
            else (
                f"re-read shows state {after.get('state')!r}, defaultVariant {after.get('defaultVariant')!r}"
                + (", targeting still set" if after.get("targeting") else "")
            )
        )
        return HaltOutcome(
            ok=False,
            kind=FailureKind.BAD_ANSWER,
            detail=f"PATCH and force-variant calls answered, but the flag is not halted: {seen}",
        )

    async def _hold(self, flag: Flag, reason: str) -> HaltOutcome:
        if is_held(await self.get(flag.key)):
            return HaltOutcome(ok=True, already=True, detail="rollout was already held (re-read)")
        _answer, failure = await self._until_applied(
            flag.key,
            lambda: self._patch(flag.key, {"metadata": {"guardrail_hold": True, "guardrail_reason": reason}}),
            is_held,
        )
        if failure is not None:
            if failure.applied_anyway:
                return HaltOutcome(
                    ok=True, detail=f"PATCH answer lost ({failure.kind}) but a re-read shows the rollout held"
                )
            return HaltOutcome(ok=False, detail=str(failure), kind=failure.failure)
        if is_held(await self.get(flag.key)):
            return HaltOutcome(ok=True, detail="rollout held at its current split (re-read: metadata.guardrail_hold)")
        return HaltOutcome(
            ok=False,
            kind=FailureKind.BAD_ANSWER,
            detail="PATCH answered, but a re-read shows metadata.guardrail_hold not set",
        )

    async def set_split(self, flag: Flag, shares: Mapping[str, int], reason: str) -> HaltOutcome:
        """A ramp step: PATCH `{"targeting": ...}` with the fractional weights set to `shares` (the rest of
        the targeting rule unchanged), then re-read until the flag shows them (docs/rollouts.md)."""
        described = ", ".join(f"{v} {s}%" for v, s in shares.items())
        current = await self.get(flag.key)
        if current is None:
            return HaltOutcome(
                ok=False, kind=FailureKind.UNREACHABLE, detail=f"flag {flag.key!r}: cannot read it from the flag API"
            )
        if split_matches(current, shares):
            return HaltOutcome(ok=True, already=True, detail=f"split already {described}")
        try:
            targeting = set_weights(current.get("targeting"), shares)
        except KeyError as exc:
            return HaltOutcome(ok=False, kind=FailureKind.REFUSED, detail=f"flag {flag.key!r}: {exc.args[0]}")
        _answer, failure = await self._until_applied(
            flag.key,
            lambda: self._patch(flag.key, {"targeting": targeting}),
            lambda definition: split_matches(definition, shares),
        )
        if failure is not None:
            if failure.applied_anyway:
                return HaltOutcome(ok=True, detail=f"PATCH answer lost ({failure.kind}) but the split is {described}")
            return HaltOutcome(ok=False, detail=str(failure), kind=failure.failure)
        if split_matches(await self.get(flag.key), shares):
            return HaltOutcome(ok=True, detail=f"PATCH applied: split {described}")
        return HaltOutcome(
            ok=False, kind=FailureKind.BAD_ANSWER, detail="PATCH answered but a re-read does not show the new split"
        )

    async def aclose(self) -> None:
        """The client belongs to the run."""


# ---- the plugin -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiBackendConfig:
    url: str | None
    token: str | None = field(default=None, repr=False)
    token_env: str = "FLAG_API_TOKEN"
    definitions_file: Path | None = None  # flags read from this file, halted through the API
    allow_insecure_http: bool = False


def _parse(ctx: ConfigContext) -> ApiBackendConfig:
    from guardrail.flags.flagd_file import flags_location

    section = ctx.section("flag_api")
    if "token" in section:
        raise GuardrailError(
            "secrets do not belong in a config file; name an environment variable with `token_env` instead",
            source=ctx.source,
            field="flag_api.token",
        )
    token_env = str(section.get("token_env", "FLAG_API_TOKEN"))
    where = flags_location(ctx)
    is_url = bool(where) and str(where).startswith(("http://", "https://"))
    # Option, then environment, then file: `--flags URL` beats FLAG_API_URL, which beats the file's URLs.
    from_option = ctx.option("flags")
    option_url = str(from_option) if from_option and str(from_option).startswith(("http://", "https://")) else None
    file_url = str(where).split("/v1/flags")[0] if is_url else None
    url = (
        (option_url.split("/v1/flags")[0] if option_url else None)
        or ctx.env.get("FLAG_API_URL")
        or (section.get("url") or file_url)
    )
    problem = (url_problem(url) if isinstance(url, str) else "must be a URL") if url is not None else None
    if problem:  # the text never repeats the URL: it may hold a credential
        from_env = bool(ctx.env.get("FLAG_API_URL"))
        raise GuardrailError(
            f"not a usable http(s) URL: {problem}",
            source=None if from_env else ctx.source,
            field="FLAG_API_URL" if from_env else "flag_api.url",
        )
    config = ApiBackendConfig(
        url=url,
        token=ctx.env.get(token_env) or None,
        token_env=token_env,
        definitions_file=Path(where) if where and not is_url else None,
        allow_insecure_http=bool(ctx.option("allow_insecure_http")),
    )
    return config


NO_FLAGS = "no flag definitions: pass --flags PATH|URL, set FLAG_API_URL, or set `flags:` in --config"


def _token_problem(token: str) -> str | None:
    """An HTTP header value must be visible ASCII: a token with a newline (a mounted secret file) or a
    non-ASCII character would only fail at halt time, inside the PATCH."""
    if any(not (0x21 <= ord(c) <= 0x7E) for c in token):
        return "contains whitespace, a newline or a non-ASCII character (a stray newline from a secret file?)"
    return None


def _ready(config: ApiBackendConfig) -> None:
    """Credentials that could leak, or could never work, are refused before the run starts, not at halt time."""
    if not config.url and config.definitions_file is None:
        raise GuardrailError(NO_FLAGS, exit_code=ExitCode.CONFIG)
    if not config.url:
        raise GuardrailError("halting through the flag API needs FLAG_API_URL", exit_code=ExitCode.CONFIG)
    if config.token and (why := _token_problem(config.token)):
        raise GuardrailError(f"the token {why}", field=config.token_env, exit_code=ExitCode.CONFIG)
    userinfo = "@" in urlsplit(config.url).netloc
    if config.token and userinfo:
        # httpx turns URL userinfo into a Basic Authorization header that replaces the bearer token.
        raise GuardrailError(
            f"has user:password in it and {config.token_env} is set: only one can be sent (the URL's would "
            "replace the token, and every halt would be refused); remove one",
            field="FLAG_API_URL",
            exit_code=ExitCode.CONFIG,
        )
    if config.token or userinfo:
        what = "the API token" if config.token else "the user:password in the URL"
        check_token_transport(config.url, allow_insecure_http=config.allow_insecure_http, secret=what)


def _create(config: ApiBackendConfig, runtime: Runtime) -> HttpFlagBackend:
    assert config.url is not None
    return HttpFlagBackend(
        config.url,
        runtime.client,
        token=None if runtime.read_only else config.token,
        policy=runtime.policy,
        definitions_file=config.definitions_file,
    )


PLUGIN = Plugin(
    name="api",
    summary="the flag management REST API (FLAG_API_URL)",
    parse=_parse,
    create=_create,
    ready=_ready,
    secrets=lambda c: [c.token] if c.token else [],
)
