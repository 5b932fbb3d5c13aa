"""The demo flow: a plain Python function. The worker imports it and calls it with the run's
parameters; what it prints ends up in the run's logs."""


def hello(who: str = "world") -> str:
    message = f"Hello, {who}! This line was printed by a flow run."
    print(message)
    return message
