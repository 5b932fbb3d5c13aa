def extract(source: str = "orders") -> int:
    rows = 3
    print(f"extracted {rows} rows from {source}")
    return rows
