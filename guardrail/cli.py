"""The command line: parse options, call, render, exit. The one place errors become messages.

Heavy modules (httpx, rich tables, jsonschema, numpy) are imported inside the commands so that
`guardrail --help` and cron's start-up stay fast.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer

from guardrail import __version__
from guardrail.model import ExitCode, GuardrailError

EXIT_CODES_HELP = """
Exit codes: 0 nothing halted; 1 halted (or would halt, in a dry run); 2 usage or configuration error;
3 some guardrails could not be evaluated (data or API unavailable) and nothing halted; 4 a halt was due
but the flag API refused or failed (do it by hand); 5 another run holds the state lock.
"""

app = typer.Typer(
    name="guardrail",
    help="Halt feature-flag experiments automatically when a treatment harms a guardrail metric.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"guardrail {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Halt feature-flag experiments automatically when a treatment harms a guardrail metric."""


def _parse_now(now: str | None) -> datetime:
    if not now:
        return datetime.now(timezone.utc).replace(microsecond=0)
    from guardrail.codec import parse_time

    try:
        return parse_time(now)
    except ValueError as exc:
        raise GuardrailError(f"not an RFC 3339 time: {exc}", field="--now") from None


FlagsOpt = Annotated[
    str | None,
    typer.Option(
        "--flags", help="Flag definitions: a flagd file (YAML/JSON) or a flag API URL. Default: FLAG_API_URL."
    ),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Config file (YAML); see configs/guardrail.yaml.")]
StateOpt = Annotated[
    Path | None, typer.Option("--state", help="State file. Default: .guardrail/state.json (or GUARDRAIL_STATE).")
]
AuditOpt = Annotated[
    Path | None, typer.Option("--audit", help="Audit log (JSON Lines). Default: .guardrail/audit.jsonl.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of a table.")]


@app.command(epilog=EXIT_CODES_HELP)
def check(
    flags: FlagsOpt = None,
    config: ConfigOpt = None,
    state: StateOpt = None,
    audit: AuditOpt = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Evaluate and show what would happen; send no PATCH and no alert, write no state or audit.",
        ),
    ] = False,
    as_json: JsonOpt = False,
    only: Annotated[list[str] | None, typer.Option("--only", help="Only this flag key (repeatable).")] = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", min=1, max=1024, help="Metric queries in flight at once. Default 64.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0.1, help="Seconds per HTTP call (each is retried). Default 5.")
    ] = None,
    lock_timeout: Annotated[
        float | None,
        typer.Option("--lock-timeout", min=0, help="Seconds to wait for another run's state lock before exit 5."),
    ] = None,
    budget: Annotated[
        float | None,
        typer.Option(
            "--budget",
            min=0,
            help="Seconds the whole run may spend reading (GUARDRAIL_BUDGET). Past it no new "
            "read starts, unread guardrails are skip:no_data (exit 3); decided halts are still sent. Default 90.",
        ),
    ] = None,
    ca_bundle: Annotated[str | None, typer.Option("--ca-bundle", help="CA bundle for TLS verification.")] = None,
    allow_insecure_http: Annotated[
        bool,
        typer.Option(
            "--allow-insecure-http", help="Allow sending the flag API token over plain http to a non-loopback host."
        ),
    ] = False,
    now: Annotated[
        str | None,
        typer.Option("--now", help="Evaluate as of this RFC 3339 time instead of the clock (backfills and tests)."),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            help="I/N: evaluate only the flags of shard I of N (stable hash of the key), so N cron "
            "jobs share a fleet without overlap. Use a state file per shard.",
        ),
    ] = None,
    metrics_file: Annotated[
        Path | None,
        typer.Option("--metrics-file", help="Write run metrics in Prometheus textfile-collector format to PATH."),
    ] = None,
    log_format: Annotated[
        str, typer.Option("--log-format", help="text | json: structured log lines on stderr.")
    ] = "text",
    git: Annotated[
        bool,
        typer.Option(
            "--git",
            help="The flag file is in a git clone: read it from the upstream branch, and commit and push "
            "every halt or hold there (as `flags.git: true`; see docs/git-flags.md).",
        ),
    ] = False,
    report_dir: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Refresh the report site in this directory after the run (only the flags this run "
            "touched, and the index); default: `report.dir` in --config. See docs/report.md.",
        ),
    ] = None,
) -> None:
    """Evaluate every guardrail of every ENABLED flag once, and halt flags whose treatment harms one.

    Environment: FLAG_API_URL, FLAG_API_TOKEN, METRICS_API_URL, ALERT_WEBHOOK_URL work with no config file.
    """
    from guardrail.check import run_check
    from guardrail.settings import load_settings

    settings = load_settings(
        config=config,
        overrides={
            "flags": flags,
            "state_path": state,
            "audit_path": audit,
            "concurrency": concurrency,
            "timeout": timeout,
            "lock_timeout": lock_timeout,
            "ca_bundle": ca_bundle,
            "budget": budget,
            "allow_insecure_http": allow_insecure_http or None,
            "git": git or None,
        },
    )
    import time

    from guardrail.check import parse_shard

    if log_format not in ("text", "json"):
        raise GuardrailError("must be text or json", field="--log-format")
    started = time.monotonic()
    try:
        result = run_check(settings, now=_parse_now(now), dry_run=dry_run, only=only, shard=parse_shard(shard))
    except GuardrailError as exc:
        # A run stopped before deciding (flag source down, lock held) still reports itself: exit code in
        # the metrics file and a JSON line, rather than silence. The error boundary in main() prints it.
        if log_format == "json":
            from guardrail.logs import emit_error_log

            emit_error_log(exc, sys.stderr)
        if metrics_file is not None:
            from guardrail.selfmetrics import write_error_metrics

            write_error_metrics(metrics_file, exc, duration=time.monotonic() - started)
        raise
    if log_format == "json":
        from guardrail.logs import emit_run_logs

        emit_run_logs(result, sys.stderr)
    if metrics_file is not None:
        from guardrail.selfmetrics import write_metrics_file

        write_metrics_file(metrics_file, result, duration=time.monotonic() - started)
    report_dir = report_dir or settings.report_dir
    if report_dir is not None and not dry_run:  # a dry run writes nothing, the report included
        from guardrail.site.build import refresh_site

        try:
            refresh_site(
                report_dir,
                state_path=settings.state_path,
                audit_path=settings.audit_path,
                records=result.records,
                now=result.now,
            )
        except (GuardrailError, OSError) as exc:
            # The run has acted and audited; its exit code matters more than the view of it.
            print(f"guardrail: warning: report not refreshed: {exc}", file=sys.stderr)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        from guardrail.redact import Redactor
        from guardrail.summary import append_step_summary

        append_step_summary(result, redact=Redactor(settings.secrets()), report_url=settings.report_base_url)
    _render(result, as_json)
    raise typer.Exit(int(result.exit_code))


def _render(result: Any, as_json: bool) -> None:
    from guardrail import report

    # Written piece by piece, never as one string: at 10,000 flags the text is ~4 MB, the JSON ~40 MB.
    if as_json:
        sys.stdout.writelines(json.JSONEncoder(indent=2).iterencode(report.to_json(result)))
        sys.stdout.write("\n")
    elif sys.stdout.isatty():
        from rich.console import Console

        report.print_rich(result, Console())
    else:
        sys.stdout.writelines(line + "\n" for line in report.text_lines(result))


@app.command()
def validate(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Flag files to check (YAML or JSON). Default: the config file's flag file."),
    ] = None,
    output: Annotated[str, typer.Option("--format", help="text | github (GitHub Actions annotations).")] = "text",
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Config file: check its `guardrails:` section, merge it (and `defaults:`) under each "
            "flag's metadata, and print the merged guardrails with where each value came from.",
        ),
    ] = None,
) -> None:
    """Check flag files for anything flagd would refuse and any guardrail mistake.

    Exit 0 clean (warnings allowed), 1 findings, 2 a file (or the config file) is unreadable or invalid.
    """
    from guardrail.validate import Layers, explain_paths, render_github, render_text, validate_paths

    if output not in ("text", "github"):
        raise GuardrailError("must be text or github", field="--format")
    layers = Layers()
    if config is not None:
        from guardrail.settings import load_settings

        settings = load_settings(config=config, env={})  # env={}: nothing secret is read for a check of files
        layers = Layers(defaults=settings.defaults, rules=settings.guardrail_rules)
        if not paths and settings.flags and not settings.flags.startswith(("http://", "https://")):
            paths = [Path(settings.flags)]
    if not paths:
        raise GuardrailError("name flag files to check, or a --config whose `flags:` is a file", field="PATHS")
    findings, code = validate_paths(paths, today=datetime.now(timezone.utc).date(), layers=layers)
    text = render_github(findings) if output == "github" else render_text(findings)
    if config is not None and output == "text":
        text = "\n".join(t for t in (text, explain_paths(paths, layers)) if t)
    if text:
        print(text)
    raise typer.Exit(code)


@app.command()
def demo(
    state: StateOpt = None,
) -> None:
    """Run the whole halt loop with nothing to set up: metrics from SQL over a DuckDB warehouse the demo
    generates, flags and alerts on the built-in fake API. A treatment breaches its error-rate guardrail and
    is halted on the first look; a healthy one passes."""
    from guardrail.demo import run_demo

    raise typer.Exit(run_demo(state_dir=state))


@app.command()
def replay(
    history: Annotated[
        Path,
        typer.Argument(
            help="JSON Lines of recorded aggregates: time, flag, metric, "
            "variant, window (5m | since_start), value, count[, stddev]."
        ),
    ],
    flags: Annotated[
        Path | None,
        typer.Option(
            "--flags",
            help="Flag file with the guardrails to replay "
            "(default: every metric in the history, relative_increase 0.10).",
        ),
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    report_dir: Annotated[
        Path | None,
        typer.Option(
            "--report", help="Also write the report site of the backtest (charts of every look) to this directory."
        ),
    ] = None,
) -> None:
    """Backtest recorded aggregates through the real engine: would these guardrails have halted?"""
    from guardrail.replay import run_replay_command

    raise typer.Exit(
        run_replay_command(history=history, flags=flags, config=config, as_json=as_json, report_dir=report_dir)
    )


@app.command("report")
def report_command(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Directory to write the site to. Default: `report.dir` in --config, else ./guardrail-report."
        ),
    ] = None,
    config: ConfigOpt = None,
    state: StateOpt = None,
    audit: AuditOpt = None,
    stale_after: Annotated[
        float,
        typer.Option(
            "--stale-after", help="Minutes after which the monitor's last run is flagged as stale on the pages."
        ),
    ] = 10.0,
    now: Annotated[str | None, typer.Option("--now", help="Build as of this RFC 3339 time (tests).")] = None,
) -> None:
    """Write a static HTML site from the state file and the audit log: every watched flag (halts first,
    searchable) and one page per flag with each guardrail's harm over time against its threshold.

    Self-contained: opens from a file or any static web server, fetches nothing. See docs/report.md.
    """
    from guardrail.settings import load_settings
    from guardrail.site.build import build_site

    if not stale_after > 0:
        raise GuardrailError(f"must be a positive number of minutes, got {stale_after:g}", field="--stale-after")
    settings = load_settings(config=config, overrides={"state_path": state, "audit_path": audit})
    target = out or settings.report_dir or Path("guardrail-report")
    site = build_site(
        target,
        state_path=settings.state_path,
        audit_path=settings.audit_path,
        now=_parse_now(now),
        stale_after=stale_after,
    )
    for warning in site.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {len(site.summaries)} flag page(s) and {target / 'index.html'}")


TrafficOpt = Annotated[list[float], typer.Option("--traffic", help="Events per minute per arm (repeatable).")]
EffectOpt = Annotated[
    list[float], typer.Option("--effect", help="Treatment rate / control rate; 1.0 = A/A (repeatable).")
]
MethodOpt = Annotated[list[str], typer.Option("--method", help="threshold | sequential (repeatable).")]


@app.command()
def simulate(
    traffic: TrafficOpt = [500.0],  # noqa: B006
    base_rate: Annotated[float, typer.Option("--base-rate", help="Control error rate.")] = 0.01,
    effect: EffectOpt = [1.0],  # noqa: B006
    threshold: Annotated[float, typer.Option("--threshold", help="Relative-increase threshold.")] = 0.10,
    days: Annotated[float, typer.Option("--days", help="Length of each experiment.")] = 14.0,
    cadence: Annotated[float, typer.Option("--cadence", help="Minutes between looks.")] = 2.0,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Experiments per scenario.")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 1,
    alpha: Annotated[float, typer.Option("--alpha", help="Sequential test's alpha.")] = 0.05,
    confirmations: Annotated[
        int, typer.Option("--confirmations", min=1, help="Consecutive breaching looks (sequential; threshold uses 2).")
    ] = 1,
    method: MethodOpt = ["threshold", "sequential"],  # noqa: B006
    as_json: JsonOpt = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table (for the README).")] = False,
    run_suite: Annotated[
        bool,
        typer.Option(
            "--suite",
            help="The production-like table of docs/statistics.md "
            "(clustered, ramp, rare, late onset, arms x metrics, cron).",
        ),
    ] = False,
    dispersion: Annotated[
        float,
        typer.Option(
            "--dispersion", help="Events clustered by user: D times the binomial variance per 2-minute block."
        ),
    ] = 1.0,
    scenario: Annotated[
        str,
        typer.Option(
            "--scenario", help="experiments (default) | ramps: ramped rollouts 1,5,25,50,100 % (docs/rollouts.md)."
        ),
    ] = "experiments",
    ramp_effect: Annotated[
        float, typer.Option("--ramp-effect", help="ramps: the harmful treatment's error rate / control's.")
    ] = 3.0,
    step_minutes: Annotated[float, typer.Option("--step-minutes", help="ramps: minimum minutes per step.")] = 30.0,
) -> None:
    """Synthetic A/A and A/B experiments through the engine: false-halt rate and time to halt per method.
    With --scenario ramps: time to ship, rollbacks, exposure to harm and SRM holds of ramped rollouts."""
    from guardrail.simulate import run_simulate_command

    if scenario == "ramps":
        from guardrail.simulate_ramps import run_ramps_command

        raise typer.Exit(
            run_ramps_command(
                runs=runs,
                seed=seed,
                traffic=traffic[0],
                base_rate=base_rate,
                effect=ramp_effect,
                threshold=threshold,
                alpha=alpha,
                confirmations=confirmations,
                step_minutes=step_minutes,
                cadence=int(cadence),
                as_json=as_json,
                markdown=markdown,
            )
        )
    if scenario != "experiments":
        raise GuardrailError("must be experiments or ramps", field="--scenario")

    raise typer.Exit(
        run_simulate_command(
            traffic=traffic,
            base_rate=base_rate,
            effect=effect,
            threshold=threshold,
            days=days,
            cadence=cadence,
            runs=runs,
            seed=seed,
            alpha=alpha,
            confirmations=confirmations,
            methods=method,
            as_json=as_json,
            markdown=markdown,
            run_suite=run_suite,
            dispersion=dispersion,
        )
    )


@app.command()
def status(
    flags: FlagsOpt = None,
    config: ConfigOpt = None,
    state: StateOpt = None,
    as_json: JsonOpt = False,
    stale_after: Annotated[
        float, typer.Option("--stale-after", help="Minutes after which the last run counts as stale (exit 3).")
    ] = 10.0,
    now: Annotated[
        str | None,
        typer.Option("--now", help="Report as of this RFC 3339 time instead of the clock (as `check --now`)."),
    ] = None,
) -> None:
    """Every watched flag: guardrails, streaks, last verdicts and values, halts, warmup and ramp step time
    left, last run age."""
    from guardrail.status import run_status_command

    raise typer.Exit(
        run_status_command(
            flags=flags, config=config, state=state, as_json=as_json, stale_after=stale_after, now=_parse_now(now)
        )
    )


@app.command()
def resume(
    key: Annotated[str, typer.Argument(help="The flag key to watch again.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the audit log).")],
    by: Annotated[str | None, typer.Option("--by", help="Who (default: $USER).")] = None,
    flags: FlagsOpt = None,
    config: ConfigOpt = None,
    state: StateOpt = None,
    audit: AuditOpt = None,
) -> None:
    """After a halt was reviewed and the flag restored, clear its halt and streaks so it is watched again.

    Refuses while the flag is still DISABLED (or held) at the source.
    """
    from guardrail.resume import run_resume_command

    raise typer.Exit(
        run_resume_command(key=key, reason=reason, by=by, flags=flags, config=config, state=state, audit=audit)
    )


def _redactor() -> Any:
    from guardrail.redact import process_redactor

    return process_redactor()


def main(argv: list[str] | None = None) -> None:
    """Entry point: the one error boundary. No traceback reaches a user."""
    # typer handles its own usage errors and exits (code 2); everything else ends here.
    code: int
    try:
        app(args=argv, prog_name="guardrail")
        code = 0
    except SystemExit:
        raise
    except GuardrailError as exc:
        print(f"guardrail: error: {_redactor()(str(exc))}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("guardrail: interrupted", file=sys.stderr)
        code = 130
    except Exception as exc:  # a bug: say so plainly, never dump a traceback on cron mail
        print(
            f"guardrail: internal error: {type(exc).__name__}: {_redactor()(str(exc))} "
            "(please report it; set GUARDRAIL_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        if os.environ.get("GUARDRAIL_DEBUG"):
            import traceback

            traceback.print_exc()
        code = ExitCode.UNEVALUATED
    sys.exit(code)
