"""guardrail: halt feature-flag experiments automatically when a treatment harms a guardrail metric."""

__version__ = "0.1.0"
