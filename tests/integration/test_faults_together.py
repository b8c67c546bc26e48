"""Two faults at once, on a private stack (the shared one is never broken): the
processor must come back by itself once both are gone, folding what follows."""

from __future__ import annotations

import pytest

from resultlog.devstack import private_stack
from resultlog.processors.verify import verify
from resultlog.producers import Emitter
from resultlog.settings import Settings
from resultlog.views import ResultBackend
from tests.integration.processes import ProcessorProcess
from tests.integration.test_pipeline import eventually
from tests.integration.test_positions import committed

# Killed brokers make aiokafka log at ERROR.
pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.usefixtures("quiet_aiokafka")]


async def _said(proc: ProcessorProcess, text: str) -> bool:
    return text in proc.output()


async def _committed(settings: Settings, events: int) -> bool:
    return await committed(settings) >= events


async def test_a_view_lost_while_the_broker_is_down_is_rebuilt_once_it_is_back(base_settings: Settings) -> None:
    """Redis restarts empty while the broker is down. The view check claims the lost
    partitions, which asks the broker where the log begins: its BrokerUnavailable
    escaped the fold loop (only StoreUnavailable was caught there), the consumer's
    stop then raised a CancelledError in its place, and the processor ran on without
    its fold: alive, ready by its last word, and folding nothing, for good."""
    if base_settings.test_services not in ("auto", "local"):
        pytest.skip(f"private stacks are built like the local stack ({base_settings.test_services})")
    async with private_stack(base=base_settings, out=lambda line: None) as stack:
        settings = stack.settings
        with ProcessorProcess(settings) as proc:
            async with Emitter(settings) as emitter:
                await emitter.success("before", 1)
            async with ResultBackend(settings) as backend:
                assert await backend.AioAsyncResult("before").get(timeout=60) == 1, proc.output()[-3000:]
            # Idle, with its Kafka offsets committed: nothing to commit holds the loop up
            # (a commit waits for the broker), so the view check is what meets the faults.
            await eventually(lambda: _committed(settings, 1), "the processor's Kafka offsets committed")

            await stack.kill("kafka")
            await stack.kill("redis")
            await stack.start("redis")  # empty: no persistence
            await eventually(lambda: _said(proc, "cannot read where the log begins"),
                             f"the view check asking the stopped broker\n{proc.output()[-3000:]}",
                             timeout_s=120)
            await stack.start("kafka")

            async with Emitter(settings) as emitter:
                await emitter.success("after", 2)
            async with ResultBackend(settings) as backend:
                assert await backend.AioAsyncResult("after").get(timeout=120) == 2, proc.output()[-5000:]
                assert await backend.AioAsyncResult("before").get(timeout=10) == 1
            assert proc.alive(), proc.output()[-5000:]

            async def rebuilt() -> bool:
                report = await verify(settings)
                return report.ok and report.events == 2
            await eventually(rebuilt, f"the view rebuilt: verify OK\n{proc.output()[-3000:]}")


async def test_a_processor_started_while_postgresql_is_down_waits_for_it(base_settings: Settings) -> None:
    """Opening the history at start was not retried: a processor (re)started while
    PostgreSQL restarted stopped at once, and a worker stopping so acked the completion
    its chord hooks' agent was waiting to claim, whose hooks then never ran. It waits, as
    positioning does, for RESULTLOG_ASSIGN_TIMEOUT_S."""
    if base_settings.test_services not in ("auto", "local"):
        pytest.skip(f"private stacks are built like the local stack ({base_settings.test_services})")
    async with private_stack(base=base_settings, out=lambda line: None) as stack:
        settings = stack.settings
        await stack.kill("postgres")
        with ProcessorProcess(settings) as proc:
            await eventually(lambda: _said(proc, "opening the stores failed"),
                             f"the processor waiting for PostgreSQL\n{proc.output()[-3000:]}")
            assert proc.alive(), proc.output()[-3000:]
            await stack.start("postgres")
            async with Emitter(settings) as emitter:
                await emitter.success("after", 2)
            async with ResultBackend(settings) as backend:
                assert await backend.AioAsyncResult("after").get(timeout=120) == 2, proc.output()[-5000:]
            assert proc.alive(), proc.output()[-5000:]
