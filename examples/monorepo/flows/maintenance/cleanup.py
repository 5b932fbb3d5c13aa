def cleanup(keep_days: int = 30) -> int:
    print(f"removed files older than {keep_days} days")
    return 0
