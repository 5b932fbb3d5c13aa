def daily_report() -> str:
    line = "daily report: 3 orders, 52.50 total"
    print(line)
    return line
