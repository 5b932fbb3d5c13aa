"""The flow the containers run (in the real setup this file lives in the cloned repository)."""


def load_orders(day: str = "yesterday") -> int:
    orders = [{"id": 1, "total": 12.5}, {"id": 2, "total": 40.0}]
    print(f"loaded {len(orders)} orders for {day}")
    return len(orders)
