"""Prefect flows the tests run through Prefect's own engine against buildsys's Prefect API."""

import asyncio
import datetime
import time

import pydantic
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import INPUTS
from prefect.deployments import run_deployment
from prefect.variables import Variable


class Cfg(pydantic.BaseModel):
    n: int


@task
def double(x: int) -> int:
    get_run_logger().info("doubling %s", x)
    return 2 * x


_calls = {"flaky": 0}


@task(retries=1)
def flaky() -> str:
    _calls["flaky"] += 1
    if _calls["flaky"] == 1:
        raise RuntimeError("first try fails")
    return "ok"


@task(cache_policy=INPUTS)
def cached(x: int) -> int:
    return x + 1


@task(tags=["db"])
def tagged() -> int:
    return 1


@flow(log_prints=True)
def etl(cfg: Cfg, when: datetime.date, count: int = 1) -> int:
    print(f"cfg={cfg!r} when={when!r} count={count!r}")
    a = double(count)
    futures = double.map([1, 2, 3])
    b = double.submit(5).result()
    flaky()
    cached(1)
    cached(1)
    tagged()
    before = Variable.get("greeting", default="unset")
    Variable.set("greeting", f"hello after {before}", overwrite=True)
    create_markdown_artifact("# report\nall good", key="report")
    return a + b + sum(f.result() for f in futures)


@flow
def child(x: int) -> int:
    get_run_logger().info("child got %s", x)
    return x * 10


@flow
def parent() -> int:
    return child(4) + child(5)


@flow
def launcher() -> str:
    run = run_deployment("child/main", parameters={"x": 1}, timeout=0)
    return str(run.id)


@flow
async def async_flow(n: int) -> int:
    await asyncio.sleep(0)
    get_run_logger().info("async got %s", n)
    return n


@flow
def boom() -> None:
    raise ValueError("boom happened")


_flow_calls = {"n": 0}


@flow(retries=1)
def retried() -> str:
    _flow_calls["n"] += 1
    if _flow_calls["n"] == 1:
        raise RuntimeError("flow fails once")
    return "second time lucky"


@flow
def sleepy(seconds: float = 300.0) -> None:
    get_run_logger().info("sleeping %s s", seconds)
    time.sleep(seconds)


@task(tags=["db"])
def slot(i: int) -> None:
    logger = get_run_logger()
    logger.info("start %s %.6f", i, time.time())
    time.sleep(0.5)
    logger.info("end %s %.6f", i, time.time())


@flow
def limited() -> None:
    for future in slot.map(range(3)):
        future.wait()
