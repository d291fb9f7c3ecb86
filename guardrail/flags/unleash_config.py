"""The `unleash:` section of the config file (pure: a mapping and the environment in, a frozen config out).

```yaml
flag_backend: unleash
unleash:
  url: http://127.0.0.1:4242       # the server's base URL (guardrail adds /api/admin/...)
  project: default                 # default: default
  environment: development         # required
  token_env: UNLEASH_API_TOKEN     # default: UNLEASH_API_TOKEN
```
The token itself never appears in a config file: only the name of the variable that holds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from guardrail.model import ExitCode, GuardrailError

DEFAULT_TOKEN_ENV = "UNLEASH_API_TOKEN"
SECTION_KEYS = frozenset({"url", "project", "environment", "token_env"})


@dataclass(frozen=True)
class UnleashConfig:
    url: str
    environment: str
    project: str = "default"
    token_env: str = DEFAULT_TOKEN_ENV
    token: str = field(default="", repr=False)
    allow_insecure_http: bool = False  # --allow-insecure-http: the token may go over plain http

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
