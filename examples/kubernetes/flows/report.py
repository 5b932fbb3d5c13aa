"""A flow is a plain function; in the Job's container it runs from /opt/flows."""

import os


def weekly_report(weeks: int = 1) -> str:
    bucket = os.environ.get("REPORT_BUCKET", "(no bucket)")
    line = f"report over {weeks} week(s) written to {bucket}"
    print(line)
    return line
