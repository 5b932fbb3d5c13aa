def etl() -> None:
    print("etl")
