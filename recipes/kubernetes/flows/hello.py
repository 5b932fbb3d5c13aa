"""A flow is a plain Python function: the worker imports it and calls it with the run's parameters."""


def hello(who: str = "world") -> str:
    message = f"Hello, {who}!"
    print(message)
    return message


if __name__ == "__main__":
    hello()
