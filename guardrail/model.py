"""Domain types shared by every part of guardrail.

Everything here is plain data: frozen dataclasses and enums, no I/O. The engine, the adapters and the
CLI all speak these types, so this module imports nothing from the rest of the package.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class ExitCode(enum.IntEnum):
    """Process exit codes; documented in the README and `guardrail --help`."""

    OK = 0  # nothing halted
    HALTED = 1  # a flag was halted (or would be, in a dry run)
    CONFIG = 2  # usage or configuration error
    UNEVALUATED = 3  # some guardrails could not be evaluated and nothing halted
    HALT_FAILED = 4  # a halt was due but the flag API refused or failed
    LOCKED = 5  # another run holds the state lock


class GuardrailError(Exception):
    """An error a user can act on: it names the place (file, flag, field) and carries an exit code.

    The CLI is the one place that catches it; it prints `str(err)` and exits with `err.exit_code`.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        flag: str | None = None,
        field: str | None = None,
        line: int | None = None,
        exit_code: ExitCode = ExitCode.CONFIG,
        kind: FailureKind | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind  # set when an outside system failed (flag source down, ...)
        self.message = message
        self.source = source
        self.flag = flag
        self.field = field
        self.line = line
        self.exit_code = exit_code

    @property
    def place(self) -> str:
        parts = []
        if self.source:
            parts.append(f"{self.source}:{self.line}" if self.line else self.source)
        if self.flag:
            parts.append(f"flag {self.flag!r}")
        if self.field:
            parts.append(f"field {self.field!r}")
        return ", ".join(parts)

    def __str__(self) -> str:
        return f"{self.place}: {self.message}" if self.place else self.message


class TextEnum(str, enum.Enum):
    """A str enum that prints as its value in f-strings and messages (Python 3.11 would print
    `Class.MEMBER`), and still compares equal to its value."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class FailureKind(TextEnum):
    """Why an outside call gave no usable answer. Carried with every failed aggregate and failed change,
    so self-metrics, logs and alerts classify failures without reading their text."""

    TIMEOUT = "timeout"  # the call's own deadline passed
    DEADLINE = "deadline"  # the run's total budget ran out before or during the call
    UNREACHABLE = "unreachable"  # connection refused, reset, DNS, TLS
    SERVER_ERROR = "server_error"  # 5xx or 429 after the retries
    AUTH = "auth"  # 401/403: a credential is missing, wrong or lacks a permission
    REFUSED = "refused"  # another 4xx: asking again will not help
    NOT_FOUND = "not_found"  # the flag or series does not exist
    BAD_ANSWER = "bad_answer"  # an answer arrived but is unusable (HTML, NaN, negative count, wrong shape)
    CONFLICT = "conflict"  # someone else changed the thing meanwhile (edited file, rejected push)
    INTERNAL = "internal"  # a bug in an adapter, contained to the one call

    @classmethod
    def of_status(cls, status: int) -> FailureKind:
        if status in (401, 403):
            return cls.AUTH
        if status == 404:
            return cls.NOT_FOUND
        if status in (409, 412):
            return cls.CONFLICT
        if status == 429 or status >= 500:
            return cls.SERVER_ERROR
        return cls.REFUSED


class Severity(TextEnum):
    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"  # information only (validate: the per-comparison alpha); never fails CI


class Comparison(str, enum.Enum):
    RELATIVE_INCREASE = "relative_increase"
    ABSOLUTE_INCREASE = "absolute_increase"
    RELATIVE_DECREASE = "relative_decrease"
    ABSOLUTE_DECREASE = "absolute_decrease"

    @property
    def relative(self) -> bool:
        return self.value.startswith("relative")

    @property
    def harm_is_increase(self) -> bool:
        return self.value.endswith("increase")


class Method(str, enum.Enum):
    """How a breach is judged.

    `threshold` compares the point estimate of one window with the threshold (the naive fixed-threshold rule, made
    robust with min_count, warmup and confirmations). `sequential` runs an always-valid one-sided test
    on since-start cumulative aggregates (see guardrail/stats.py and docs/statistics.md).
    """

    THRESHOLD = "threshold"
    SEQUENTIAL = "sequential"


class MetricKind(str, enum.Enum):
    """What the metric's value is; it decides which variance the sequential test can use."""

    PROPORTION = "proportion"  # value in [0, 1], e.g. error_rate; variance p(1-p)
    MEAN = "mean"  # needs `stddev` from the source for the sequential test
    QUANTILE = "quantile"  # p95 etc.: no valid variance from value and count alone


class ExperimentType(str, enum.Enum):
    AB = "ab"  # an experiment: halt = revert to control
    ROLLOUT = "rollout"  # a progressive rollout: halt = hold at the current split


class Verdict(str, enum.Enum):
    BREACH = "breach"
    PASS = "pass"
    SKIP_MIN_COUNT = "skip:min_count"
    SKIP_WARMUP = "skip:warmup"
    SKIP_NO_DATA = "skip:no_data"

    @property
    def is_skip(self) -> bool:
        return self.value.startswith("skip")


class HaltStatus(TextEnum):
    """A halt record's life in the state file (see guardrail/halts.py for the transitions)."""

    PENDING = "pending"  # decided and written ahead; the flag has not been changed yet
    DONE = "done"  # a re-read showed the change
    FAILED = "failed"  # the backend refused or failed; retried next run


class HaltResultStatus(TextEnum):
    """What one run did about one halt, as reported to the user."""

    DONE = "done"
    FAILED = "failed"
    WOULD_HALT = "would_halt"  # dry run


class HaltAction(str, enum.Enum):
    REVERT = "revert"  # state DISABLED, defaultVariant control
    HOLD = "hold"  # metadata guardrail_hold: true, split unchanged


DEFAULT_MIN_COUNT = 100
DEFAULT_CONFIRMATIONS = 2  # the threshold rule's default; an always-valid test needs 1 (config.py)
SEQUENTIAL_CONFIRMATIONS = 1
DEFAULT_MAX_GAP_MINUTES = 15.0
DEFAULT_WINDOW = "5m"
DEFAULT_ALPHA = 0.05
SINCE_START = "since_start"


@dataclass(frozen=True, slots=True)
class Guardrail:
    """One metric a treatment must not harm, and how to judge harm."""

    metric: str
    comparison: Comparison
    threshold: float
    min_count: int = DEFAULT_MIN_COUNT
    confirmations: int = SEQUENTIAL_CONFIRMATIONS
    max_gap_minutes: float = DEFAULT_MAX_GAP_MINUTES
    window: str = DEFAULT_WINDOW
    # Sequential by default for proportion and mean metrics; config.py gives quantiles the threshold rule.
    method: Method = Method.SEQUENTIAL
    alpha: float = DEFAULT_ALPHA
    kind: MetricKind = MetricKind.PROPORTION
    # Sequential test: total sample (n_T + n_C) at which the since-start e-process is tightest.
    # None means "20 minutes of the first window's traffic" (guardrail/seqtest.py).
    tuning_n: float | None = None
    # Sequential test: a known lower bound on the events' dispersion (clustering by user); the test uses
    # max(this, the dispersion it learns from the windows). 1 = learn it all from the data.
    dispersion: float = 1.0


class AdvanceMode(str, enum.Enum):
    """When a ramp step may advance (docs/rollouts.md)."""

    NO_HARM = "no_harm"  # minimum time and counts on the step, and no guardrail shows harm
    PROVEN_SAFE = "proven_safe"  # ... and every guardrail's always-valid upper bound is below its threshold


class OnBreach(str, enum.Enum):
    ROLLBACK = "rollback"  # the flag reverts to control, as a halt does
    HOLD = "hold"  # the ramp stays on its step (metadata guardrail_hold)


class SrmAction(str, enum.Enum):
    HOLD = "hold"
    ROLLBACK = "rollback"
    WARN = "warn"


DEFAULT_SRM_METRIC = "exposures"
DEFAULT_SRM_ALPHA = 0.001


@dataclass(frozen=True, slots=True)
class RampSpec:
    """`guardrail.ramp.*` metadata: treatment shares (whole percents, increasing) and how to advance."""

    steps: tuple[int, ...]
    step_minutes: tuple[float, ...]  # one per step
    min_count: int = 0  # units per arm on the current step before it may advance
    advance: AdvanceMode = AdvanceMode.NO_HARM
    on_breach: OnBreach = OnBreach.ROLLBACK

    @property
    def tested_steps(self) -> int:
        """Steps that are watched: every step but the last (reaching the last step ships)."""
        return max(1, len(self.steps) - 1)


@dataclass(frozen=True, slots=True)
class SrmSpec:
    """`guardrail.srm.*` metadata: the sample-ratio-mismatch gate (guardrail/srm.py)."""

    metric: str = DEFAULT_SRM_METRIC
    action: SrmAction = SrmAction.HOLD
    alpha: float = DEFAULT_SRM_ALPHA
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class Flag:
    """A flag definition as guardrail sees it. `definition` is the raw flagd definition."""

    key: str
    enabled: bool
    default_variant: str
    variants: tuple[str, ...]
    control_variant: str
    treatment_variants: tuple[str, ...]
    experiment_type: ExperimentType
    guardrails: tuple[Guardrail, ...]
    started_at: datetime | None = None
    warmup_minutes: float = 0.0
    held: bool = False  # metadata.guardrail_hold already set (a rollout we held earlier)
    source: str = ""  # where the definition came from (file path or URL), for messages and links
    definition: Mapping[str, Any] = field(default_factory=dict)
    ramp: RampSpec | None = None  # a ramped rollout (guardrail/rollout.py)
    srm: SrmSpec = SrmSpec()
    # Configured split: variant -> whole percent, read from the fractional targeting (empty when none).
    split: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FlagProblem:
    """A flag that could not be read into the model; the other flags still run."""

    flag: str | None
    message: str
    source: str = ""
    field: str | None = None
    line: int | None = None
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        return str(GuardrailError(self.message, source=self.source, flag=self.flag, field=self.field, line=self.line))


@dataclass(frozen=True, slots=True)
class MetricQuery:
    """One aggregate to fetch. `end` is pinned once per run so both arms cover the same window."""

    flag: str
    variant: str
    metric: str
    window: str  # "5m", or a since-start window such as "4320m"
    end: datetime


@dataclass(frozen=True, slots=True)
class Aggregate:
    """A metric's aggregate for one variant over one window, or the reason there is none.

    Sources never raise for bad data: they return an Aggregate with `error` set, which the engine turns
    into `skip:no_data` with that cause.
    """

    value: float | None
    count: int | None
    stddev: float | None = None
    error: str | None = None
    kind: FailureKind | None = None  # set with `error`
    # Per-unit columns, optional. A source that sees the randomisation unit (the user, session or device the
    # flag splits on) fills them, so the statistics can take the variance across units: that variance stays
    # valid when events cluster by unit, the per-event one does not (Deng, Knoblich & Lu 2018, "Applying the
    # Delta Method in Metric Analytics", KDD, https://arxiv.org/abs/1803.06336). A unit u contributes
    #   - a unit-level metric (per-user conversion, revenue per user): y_u, the unit's own value;
    #       value = unit_sum / units
    #   - a ratio metric (errors / requests, latency per request): numerator x_u and denominator d_u;
    #       value = num_sum / den_sum, count = den_sum
    # Each sum runs over the arm's units in the window. None means the source does not know it.
    units: int | None = None  # randomisation units in the arm over the window
    unit_sum: float | None = None  # sum_u y_u
    unit_sum_sq: float | None = None  # sum_u y_u^2
    num_sum: float | None = None  # sum_u x_u
    num_sum_sq: float | None = None  # sum_u x_u^2
    den_sum: float | None = None  # sum_u d_u
    den_sum_sq: float | None = None  # sum_u d_u^2
    num_den_sum: float | None = None  # sum_u x_u * d_u

    @classmethod
    def missing(cls, error: str, kind: FailureKind = FailureKind.BAD_ANSWER) -> Aggregate:
        return cls(value=None, count=None, error=error, kind=kind)

    @property
    def usable(self) -> bool:
        import math

        return (
            self.error is None
            and self.value is not None
            and self.count is not None
            and math.isfinite(self.value)
            and self.count >= 0
        )


# Aggregates keyed by (flag, variant, metric, window): what the engine reads.
AggregateKey = tuple[str, str, str, str]


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The verdict on one guardrail for one treatment variant in one run."""

    flag: str
    metric: str
    treatment_variant: str
    control_variant: str
    comparison: Comparison
    threshold: float
    method: Method
    verdict: Verdict
    reason: str
    control: Aggregate | None = None
    treatment: Aggregate | None = None
    delta: float | None = None  # in the comparison's unit (relative or absolute); may be +/-inf
    relative_delta: float | None = None  # always (t - c) / c when defined, for the alert
    streak: int = 0  # consecutive breaching runs including this one
    confirmations: int = DEFAULT_CONFIRMATIONS
    # Sequential method only: the one-sided bound on the harm and the always-valid p-value.
    bound: float | None = None
    p_value: float | None = None
    # The other side of the same confidence sequence: the harm is below this (for proven-safe ramps).
    upper_bound: float | None = None

    @property
    def guardrail_id(self) -> str:
        return guardrail_id(self.metric, self.treatment_variant)


def guardrail_id(metric: str, treatment_variant: str) -> str:
    return f"{metric}@{treatment_variant}"


@dataclass(frozen=True)
class Halt:
    """A decision to stop a flag, with the evaluation that triggered it."""

    flag: str
    action: HaltAction
    reason: str
    decided_at: datetime
    evaluation: Evaluation
    control_variant: str = "control"


@dataclass(frozen=True)
class HaltOutcome:
    """What a flag backend did about one halt or hold. `ok` only when a re-read showed the change."""

    ok: bool
    detail: str  # what happened, for the output and audit (never a secret)
    already: bool = False  # the flag was already halted/held at the source
    kind: FailureKind | None = None  # why it failed (None when ok)
    # A change made of several verified writes (a ramp's rollback: share_zero, revert): part -> done|failed.
    parts: Mapping[str, str] | None = None

    @property
    def permanent(self) -> bool:
        """Asking again will not help: a person must act."""
        return self.kind in (FailureKind.AUTH, FailureKind.REFUSED, FailureKind.NOT_FOUND)


# ---- state (the engine's memory between runs) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Streak:
    count: int = 0
    last_breach_at: datetime | None = None


@dataclass(frozen=True)
class HaltRecord:
    """A halt's life: `pending` is written before the flag API is called (write-ahead), so a run that
    dies mid-halt is finished by the next run; `done` after the API confirmed it; `failed` when the API
    refused (retried next run)."""

    status: HaltStatus
    action: HaltAction
    reason: str
    decided_at: datetime
    metric: str
    treatment_variant: str
    control_variant: str = "control"
    completed_at: datetime | None = None
    attempts: int = 0
    last_error: str | None = None
    alert_delivered: bool = False
    # What the alert needs (guardrail/alert.py context), kept until the alert is delivered.
    alert: Mapping[str, Any] | None = None
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class SeqState:
    """The sequential test's memory per guardrail × treatment (guardrail/seqtest.py explains each field)."""

    last_control: tuple[float, float, float] | None = None  # (n, Σy, Σy²) at the last window's end
    last_treatment: tuple[float, float, float] | None = None
    s: float = 0.0  # Σ D_i, the stratified contrast
    v: float = 0.0  # Σ v_i, its variance before the dispersion factor
    w: float = 0.0  # Σ w_i
    windows: int = 0
    r2: float = 0.0  # Σ r_i², the dispersion estimate's numerator
    v_per_unit: float | None = None  # frozen from the first window: tunes ρ
    minutes_per_unit: float | None = None  # frozen from the first window: a real traffic projection
    restarts: tuple[tuple[int, float, float], ...] = ()  # late-onset restarts: (grid index, S, Σv) at each
    last_at_minutes: float | None = None  # minutes since start at the last window's end


@dataclass(frozen=True)
class RampState:
    """Where a ramp is: its step (index into RampSpec.steps) and when that step's split took effect.

    Aggregates are queried since `step_started_at`, so each step is judged on its own data only.
    `shipped_at` ends watching; `last` is the last decision, for `status`. `steps` is the schedule this
    state belongs to (empty in states written before it was kept): another schedule is another ramp.
    `restarted` marks a new rollout the world declared (guardrail/world.py): the next decision adopts the
    step the split is at below the last, or starts at step 1.
    """

    step: int
    step_started_at: datetime
    shipped_at: datetime | None = None
    last: Mapping[str, Any] = field(default_factory=dict)
    steps: tuple[int, ...] = ()
    restarted: bool = False


@dataclass(frozen=True, slots=True)
class FlagState:
    first_seen_enabled: datetime | None = None
    streaks: Mapping[str, Streak] = field(default_factory=dict)
    halt: HaltRecord | None = None
    # The frozen N* of a ramp step's since-start confidence sequence (judge.compare), per guardrail id.
    tuning_n: Mapping[str, float] = field(default_factory=dict)
    last_evaluations: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sequential: Mapping[str, SeqState] = field(default_factory=dict)  # per guardrail id
    last_look_at: datetime | None = None  # the previous evaluated look: scales the streak's gap rule
    ramp: RampState | None = None
    # SRM gate: running minimum of the anytime-valid p-value over the current window (experiment or ramp
    # step), and whether a `warn` alert went out for it already.
    srm_min_p: float = 1.0
    srm_warned: bool = False


@dataclass(frozen=True)
class State:
    flags: Mapping[str, FlagState] = field(default_factory=dict)
    last_run_at: datetime | None = None
    # The last run that looked at the metrics, when `metrics.every` sets a longer cadence (guardrail/cadence.py).
    metrics_looked_at: datetime | None = None


@dataclass(frozen=True)
class Cadence:
    """`metrics.every`: whether this run looks at the metrics, and when it last and next does."""

    every_minutes: float
    due: bool
    last_look_at: datetime | None
    next_look_at: datetime | None  # the earliest run that is due again


@dataclass(frozen=True)
class Decision:
    """What the engine returns: verdicts, the halts to carry out, and the state to persist."""

    evaluations: tuple[Evaluation, ...]
    halts: tuple[Halt, ...]
    state: State
    skipped_flags: Mapping[str, str] = field(default_factory=dict)  # flag -> why it was not evaluated
    ramps: tuple[RampDecision, ...] = ()
    srm: tuple[SrmResult, ...] = ()


class SrmVerdict(TextEnum):
    OK = "ok"
    MISMATCH = "mismatch"
    NO_DATA = "no_data"  # no usable unit counts: no verdict, nothing halted


class RampResultStatus(TextEnum):
    """What one run did about one ramped flag."""

    DONE = "done"  # the step's split was written and a re-read showed it
    FAILED = "failed"  # the write failed: the ramp stays on its step (exit 4)
    WOULD = "would"  # dry run
    DECIDED = "decided"  # nothing to write (hold, adopt)


class RampAction(TextEnum):
    START = "start"  # write the first step's split
    ADVANCE = "advance"  # write the next step's split
    SHIP = "ship"  # write the last step's split, then stop watching
    HOLD = "hold"  # stay on the step (nothing written): waits for something, or on_breach: hold
    ROLLBACK = "rollback"  # treatment's share to 0 and revert to control (carried out as a halt)
    ADOPT = "adopt"  # the split was moved to another step outside guardrail: that step starts now


@dataclass(frozen=True)
class RampDecision:
    """One run's decision on a ramped rollout (guardrail/rollout.py)."""

    flag: str
    action: RampAction
    step: int  # index of the current step
    to_step: int | None  # the step to write (start/advance/ship/adopt)
    shares: Mapping[str, int]  # the split to write (variant -> whole percent); empty when nothing is written
    reason: str
    waits_for: tuple[str, ...] = ()
    minutes_on_step: float = 0.0
    steps: tuple[int, ...] = ()


@dataclass(frozen=True)
class SrmResult:
    """The SRM gate's verdict for one flag and run (guardrail/srm.py)."""

    flag: str
    verdict: SrmVerdict
    reason: str
    p_value: float | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    expected: Mapping[str, float] = field(default_factory=dict)  # variant -> probability
    action: SrmAction = SrmAction.HOLD
    alert: bool = False  # a `warn` mismatch to page about (once)


# ---- what a run reports ----------------------------------------------------------------------------


@dataclass(frozen=True)
class HaltResult:
    """One halt a run carried out, tried, or (dry run) would have carried out."""

    flag: str
    action: str  # HaltAction value
    status: HaltResultStatus
    reason: str
    detail: str = ""
    alert: str = "not sent"
    resumed: bool = False  # finished a halt an earlier run had decided
    kind: FailureKind | None = None  # why it failed
    parts: Mapping[str, str] | None = None  # a ramp's rollback: which of its writes a re-read showed


@dataclass(frozen=True)
class RampResult:
    """What a run did about one ramped flag (guardrail/ramp_run.py)."""

    flag: str
    action: RampAction
    status: RampResultStatus
    step: int  # 1-based step the flag is on after this run
    share: int  # the treatment's percent on that step
    reason: str
    waits_for: tuple[str, ...] = ()
    detail: str = ""
    alert: str = "not sent"
    minutes_on_step: float = 0.0


@dataclass(frozen=True)
class RunResult:
    """Everything one `check` run decided and did; rendered as text, JSON, logs and self-metrics."""

    now: datetime
    dry_run: bool
    run_id: str
    evaluations: tuple[Evaluation, ...] = ()
    halts: tuple[HaltResult, ...] = ()
    problems: tuple[FlagProblem, ...] = ()
    skipped_flags: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    ramps: tuple[RampResult, ...] = ()
    srm: tuple[SrmResult, ...] = ()
    records: tuple[Mapping[str, Any], ...] = ()  # the audit lines this run wrote (redacted), for the report
    cadence: Cadence | None = None  # set when `metrics.every` is configured

    @property
    def exit_code(self) -> ExitCode:
        if any(h.status == HaltResultStatus.FAILED for h in self.halts) or any(
            r.status is RampResultStatus.FAILED for r in self.ramps
        ):
            return ExitCode.HALT_FAILED
        if any(h.status in (HaltResultStatus.DONE, HaltResultStatus.WOULD_HALT) for h in self.halts):
            return ExitCode.HALTED
        if any(p.severity == Severity.ERROR for p in self.problems):
            return ExitCode.CONFIG
        if any(e.verdict is Verdict.SKIP_NO_DATA for e in self.evaluations):
            return ExitCode.UNEVALUATED
        return ExitCode.OK
