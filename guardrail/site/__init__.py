"""The report site: a static, self-contained HTML view of the state file and the audit log.

`build.build_site` writes it in full (`guardrail report`); `build.refresh_site` updates it after a run
(`guardrail check --report DIR`). See docs/report.md.
"""
