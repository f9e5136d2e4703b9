"""Client methods as plans: one body for the blocking `Client` and the asyncio `AsyncClient`.

A plan is a generator that yields transport calls (`yield transport.search(...)` makes a `Call`, it calls nothing)
and receives each call's result, or has its error raised at the `yield`; its return value is the method's result.
`run` makes the calls one after another on a blocking transport, `run_async` awaits them on an asyncio one, so
argument checks, message splitting, retries on ResourceExhausted and paging are written once, free of I/O.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Generator, NamedTuple

Plan = Generator["Call", Any, Any]


class Call(NamedTuple):
    """One Transport method call, not yet made: `name` (a simdex.clients.transport.Transport method), its args."""
    name: str
    args: tuple
    kwargs: dict


class _Calls:
    """`transport.search(name, xq, k)` -> Call("search", (name, xq, k)): what a plan yields."""

    def __getattr__(self, name: str) -> Callable[..., Call]:
        def call(*args, **kwargs) -> Call:
            return Call(name, args, kwargs)

        setattr(self, name, call)  # made once per method name
        return call


transport = _Calls()


def plan(method: Callable[..., Plan]) -> Callable[..., Any]:
    """A generator method -> the method callers see: its plan run by `self._run` (a result for Client, an
    awaitable for AsyncClient). The generator itself stays reachable as `.plan`, for plans that use another."""
    @functools.wraps(method)
    def run_plan(self, *args, **kwargs):
        return self._run(method(self, *args, **kwargs))

    run_plan.plan = method
    return run_plan


def run(steps: Plan, target) -> Any:
    """Make each call of `steps` on the blocking transport `target`; the plan's result."""
    try:
        call = next(steps)
        while True:
            try:
                result = getattr(target, call.name)(*call.args, **call.kwargs)
            except BaseException as exc:  # noqa: BLE001 - raised inside the plan, which may handle it (shrinking)
                call = steps.throw(exc)
            else:
                call = steps.send(result)
    except StopIteration as done:
        return done.value


async def run_async(steps: Plan, target) -> Any:
    """Await each call of `steps` on the asyncio transport `target`; the plan's result. A cancelled task raises
    CancelledError inside the plan (nothing there handles it), which cancels the RPC in flight."""
    try:
        call = next(steps)
        while True:
            try:
                result = await getattr(target, call.name)(*call.args, **call.kwargs)
            except BaseException as exc:  # noqa: BLE001 - as in run
                call = steps.throw(exc)
            else:
                call = steps.send(result)
    except StopIteration as done:
        return done.value
