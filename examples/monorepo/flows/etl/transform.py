def transform(table: str = "orders") -> str:
    print(f"transformed {table}")
    return table
