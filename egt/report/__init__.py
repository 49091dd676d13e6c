"""The run report (Markdown with PNG plots)."""

from egt.report.build import write_report

__all__ = ["write_report"]
