"""The dashboard in a real headless Chromium, over a history filled by the real pipeline.

Events go Emitter -> Kafka -> ``resultlog process`` -> Redis + Postgres; the dashboard
runs as ``resultlog dashboard`` (a child process) on those stores; the browser loads
each page and checks what a person would: the plots have points, the stats table names
the tasks, a filter narrows the list, pages follow one another, a retried task's
timeline shows its attempts in order, a transition appears without a reload, a
hostile result string stays text, and a task whose id is awkward in a URL (slashes,
dot segments, a NUL) is reached by its links. Screenshots of each page are kept in
``build/dashboard-screenshots/`` (docs/dashboard.md shows them).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from urllib.parse import quote
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from resultlog.producers import Emitter
from resultlog.producers.heartbeats import send_heartbeat
from resultlog.schemas.event import now_ms
from resultlog.schemas.workers import WorkerHeartbeat
from resultlog.views.workers import WorkersHistory
from resultlog.settings import Settings
from resultlog.views.history import HistoryStore
from tests.conftest import cleanup
from tests.integration.browser import headless_chromium
from tests.integration.processes import ProcessorProcess
from tests.integration.test_pipeline import eventually, produce_raw

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "build" / "dashboard-screenshots"
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
BULK = 60  # more than a page (50)
#: Task ids a path cannot carry as they are (run by w-odd): "/" unescaped leads
#: elsewhere, "." and ".." are dot segments the browser resolves, HTML drops a NUL.
#: "." is left to the live test.
ODD_IDS = ("dots/../x", "a/b", "..", "%2E%2E", "nul\x00id")
NAMELESS = "nameless-1"  # no event names it: the overview's (unnamed) row
WAIT_S = 30


@dataclass
class Stack:
    settings: Settings
    url: str
    processor: ProcessorProcess
    events: int  # in the history


async def fill(settings: Settings) -> int:
    """The history every test reads; returns how many events it holds."""
    later = datetime.now(timezone.utc) + timedelta(seconds=30)
    async with Emitter(settings, worker="w-alpha") as em:
        for i in range(BULK):
            await em.started(f"bulk-{i:03d}", task_name="shop.resize", args=[i])
            await em.success(f"bulk-{i:03d}", {"size": i}, runtime=0.01 * (i + 1),
                             task_name="shop.resize")
        r = "retried-1"
        await em.received(r, task_name="shop.email", kwargs={"to": "a@example.com"})
        await em.started(r, task_name="shop.email", worker="w-alpha")
        await em.retry(r, ConnectionError("smtp down"), attempt=0, eta=later, worker="w-alpha")
        await em.started(r, attempt=1, worker="w-beta")
        await em.retry(r, ConnectionError("smtp still down"), attempt=1, eta=later,
                       worker="w-beta")
        await em.started(r, attempt=2, worker="w-gamma")
        await em.success(r, "sent", attempt=2, runtime=0.5, worker="w-gamma")
        await em.started("failed-1", task_name="shop.email", worker="w-beta")
        await em.failure("failed-1", KeyError("no such user"), traceback="Traceback: KeyError",
                         runtime=0.2, task_name="shop.email", worker="w-beta")
        await em.started("child-1", task_name="shop.thumb", parent_id="bulk-000",
                         root_id="bulk-000")
        await em.success("child-1", 1, parent_id="bulk-000", root_id="bulk-000")
        await em.started("hostile-1", task_name="shop.render", args=[HOSTILE])
        await em.failure("hostile-1", ValueError(HOSTILE), traceback=HOSTILE,
                         task_name="shop.render")
        await em.started("hostile-2", task_name="shop.render")
        await em.success("hostile-2", HOSTILE, task_name="shop.render")
        # Heartbeats: w-alpha is alive (and ran the tasks above), w-old said it stopped.
        started = now_ms() - 60_000
        await send_heartbeat(em, WorkerHeartbeat.create(
            "w-alpha", ttl_s=3600, source="test", hostname="host-a", pid=4242, queue="q",
            concurrency=4, started_at=started, tasks_processed=80, tasks_failed=2,
            active_tasks=1))
        await send_heartbeat(em, WorkerHeartbeat.create(
            "w-old", ttl_s=3600, source="test", hostname="host-b", pid=7, queue="q",
            concurrency=1, started_at=started, tasks_processed=5, tasks_failed=5,
            is_running=False))
        for task_id in (*ODD_IDS, NAMELESS):
            name = None if task_id == NAMELESS else "shop.odd"
            await em.started(task_id, task_name=name, worker="w-odd")
            await em.success(task_id, 1, task_name=name, worker="w-odd")
    # One undecodable record: a dead letter for the overview.
    await produce_raw(settings, [(b"junk", b"\x00not an event")])
    return BULK * 2 + 7 + 2 + 2 + 2 + 2 + 2 * (len(ODD_IDS) + 1)


@pytest.fixture(scope="module")
async def stack(base_settings: Settings) -> AsyncIterator[Stack]:
    tag = uuid.uuid4().hex[:12]
    settings = base_settings.replace(
        events_topic=f"t.{tag}", consumer_group=f"t.{tag}.group", redis_prefix=f"t{tag}:",
        postgres_schema=f"t_{tag}", topic_partitions=2)
    processor = ProcessorProcess(settings).start()
    try:
        expected = await fill(settings)
        async with HistoryStore(settings) as history:
            async def folded() -> bool:
                try:
                    return await history.count() == expected
                except Exception:  # noqa: BLE001 - the processor may not have migrated yet
                    return False
            await eventually(folded, f"{expected} events in the history", 120)
        async with WorkersHistory(settings) as beats:
            async def beaten() -> bool:
                return await beats.pool.fetchval(f"SELECT count(*) FROM {beats.table}") == 2
            await eventually(beaten, "2 heartbeats in the history", 60)
        async with running_dashboard(settings) as url:
            yield Stack(settings, url, processor, expected)
    finally:
        processor.stop()
        await cleanup(settings)


@asynccontextmanager
async def running_dashboard(settings: Settings) -> AsyncIterator[str]:
    """``resultlog dashboard`` on these settings, answering; yields its address."""
    log = Path(tempfile.mkstemp(prefix="resultlog-dashboard-", suffix=".log")[1])
    dashboard: subprocess.Popen[bytes] | None = None
    try:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("RESULTLOG_")},
               **settings.to_env()}
        with log.open("ab") as out:
            # Port 0: the system picks a free one, and the dashboard prints which.
            dashboard = subprocess.Popen(
                [sys.executable, "-m", "resultlog", "dashboard", "--port", "0"],
                env=env, stdout=out, stderr=subprocess.STDOUT)
        url = ""

        async def announced() -> bool:
            nonlocal url
            assert dashboard is not None and dashboard.poll() is None, log.read_text()
            found = re.search(r"resultlog dashboard: (http://127\.0\.0\.1:\d+)/ ", log.read_text())
            url = found.group(1) if found else ""
            return bool(found)
        await eventually(announced, "the dashboard to print its address", 60)
        assert not url.endswith(":0"), f"the dashboard printed port 0: {log.read_text()}"

        async def serving() -> bool:
            assert dashboard is not None and dashboard.poll() is None, log.read_text()
            try:
                await asyncio.to_thread(get, url + "/static/dashboard.js")
            except OSError:  # not listening yet
                return False
            return True
        await eventually(serving, "the dashboard to answer", 60)
        yield url
    finally:
        if dashboard is not None:
            dashboard.terminate()
            dashboard.wait(30)
            print(f"--- dashboard output ---\n{log.read_text(errors='replace')[-5000:]}")
        log.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def browser(base_settings: Settings) -> Iterator[webdriver.Chrome]:
    driver = headless_chromium(base_settings)
    try:
        yield driver
    finally:
        driver.quit()


def shot(browser: webdriver.Chrome, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, min(int(height) + 20, 4000))  # the whole page
    try:
        browser.save_screenshot(str(SHOTS / f"{name}.png"))
    finally:
        browser.set_window_size(1400, 1000)


def wait_for(browser: webdriver.Chrome, what: str, check: object) -> None:
    WebDriverWait(browser, WAIT_S).until(check, message=f"gave up waiting for {what}")  # type: ignore[arg-type]


def follow(browser: webdriver.Chrome, element: WebElement) -> None:
    """Click a link or a form's button and wait until the page it leads to has loaded.
    WebDriver's click returns once the click is dispatched, not once the navigation it
    starts has finished: reading right after it may read the old page, or a new one
    still empty."""
    old = browser.find_element(By.TAG_NAME, "html")
    element.click()
    wait_for(browser, "the old page to go", expected_conditions.staleness_of(old))
    wait_for(browser, "the new page to load",
             lambda b: b.execute_script("return document.readyState") == "complete")


def texts(browser: webdriver.Chrome, css: str) -> list[str]:
    return [e.text for e in browser.find_elements(By.CSS_SELECTOR, css)]


async def test_overview_shows_plots_stats_lag_and_dead_letters(stack: Stack, browser: webdriver.Chrome) -> None:
    browser.get(stack.url + "/")
    assert int(browser.find_element(By.ID, "plot-states").get_attribute("data-points") or 0) > 0
    assert browser.find_elements(By.CSS_SELECTOR, "#plot-states canvas"), "uPlot drew no canvas"
    names = texts(browser, "#stats-table tbody td:first-child")
    assert {"shop.resize", "shop.email", "shop.render"} <= set(names)
    resize = browser.find_element(By.XPATH, "//table[@id='stats-table']//tr[td/a='shop.resize']")
    assert resize.find_elements(By.TAG_NAME, "td")[1].text == str(BULK)
    lag_rows = browser.find_elements(By.CSS_SELECTOR, "#lag-table tbody tr")
    assert len(lag_rows) == 2  # one per partition
    # The processor's positions reach the log end once it folded everything.
    for row in lag_rows:
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        assert cells[3] == "0" and cells[5] == "0", cells
    assert browser.find_element(By.ID, "dead-letter-count").text == "1"
    assert texts(browser, "#dead-letters .reason")[0]
    # The plots and the table come from the per-minute rollups: every event of the
    # history is in the states plot (events/s x 60 s buckets), and shop.resize's p50
    # (runtimes 0.01..0.60 s: exactly 0.305 s) is within the histograms' 4.4%.
    plots = json.loads(browser.find_element(By.ID, "plot-data").get_attribute("textContent") or "")
    assert round(sum(v * 60 for vs in plots["states"]["series"].values() for v in vs)) == \
        stack.events
    p50 = resize.find_elements(By.TAG_NAME, "td")[9].text
    assert abs(float(p50.rstrip("s")) - 0.305) <= 0.305 * 0.045 + 0.0005, p50
    shot(browser, "overview")


async def test_task_list_filters_and_pages(stack: Stack, browser: webdriver.Chrome) -> None:
    browser.get(stack.url + "/tasks")
    first = texts(browser, "#task-table a.task-link")
    assert len(first) == 50
    shot(browser, "tasks")
    follow(browser, browser.find_element(By.ID, "older"))
    second = texts(browser, "#task-table a.task-link")
    total = BULK + 5 + len(ODD_IDS) + 1
    assert len(second) == total - 50 and not set(first) & set(second)
    follow(browser, browser.find_element(By.ID, "newer"))
    assert texts(browser, "#task-table a.task-link") == first
    Select(browser.find_element(By.NAME, "state")).select_by_visible_text("FAILURE")
    follow(browser, browser.find_element(By.CSS_SELECTOR, "#task-filters button"))
    assert sorted(texts(browser, "#task-table a.task-link")) == ["failed-1", "hostile-1"]
    browser.get(stack.url + "/tasks?worker=w-gamma")
    assert texts(browser, "#task-table a.task-link") == ["retried-1"]
    browser.get(stack.url + "/tasks?id=bulk-00")
    assert len(texts(browser, "#task-table a.task-link")) == 10


async def test_task_page_shows_retries_in_order_with_lineage(stack: Stack, browser: webdriver.Chrome) -> None:
    browser.get(stack.url + "/tasks/retried-1")
    rows = browser.find_elements(By.CSS_SELECTOR, "#timeline tbody tr")
    cells = [[c.text for c in r.find_elements(By.TAG_NAME, "td")] for r in rows]
    assert [c[4] for c in cells] == ["RECEIVED", "STARTED", "RETRY", "STARTED", "RETRY",
                                     "STARTED", "SUCCESS"]
    assert [c[5] for c in cells] == ["0", "0", "0", "1", "1", "2", "2"]
    assert [c[6] for c in cells][3:] == ["w-beta", "w-beta", "w-gamma", "w-gamma"]
    assert cells[2][7] and cells[4][7], "a RETRY shows its ETA"
    assert browser.find_element(By.ID, "task-result").text == '"sent"'
    assert '"to": "a@example.com"' in browser.find_element(By.ID, "task-kwargs").text
    shot(browser, "task")
    browser.get(stack.url + "/tasks/child-1")
    parent = browser.find_element(By.CSS_SELECTOR, "#lineage a.task-link")
    assert parent.text == "bulk-000"
    follow(browser, parent)
    assert texts(browser, "#lineage a.task-link") == ["child-1"]


async def test_workers_page(stack: Stack, browser: webdriver.Chrome) -> None:
    browser.get(stack.url + "/workers")
    rows = {r.get_attribute("data-worker"): [c.text for c in r.find_elements(By.TAG_NAME, "td")]
            for r in browser.find_elements(By.CSS_SELECTOR, "#worker-table tbody tr")}
    # worker, status, last seen, tasks, failed, rate, processed, failed, rate, active, host
    alpha = rows["w-alpha"]
    assert alpha[1] == "alive" and alpha[2] != "-"
    assert alpha[3] == str(BULK + 3)  # bulk, child, two hostile ones
    assert alpha[6:11] == ["80", "2", "2.5%", "1", "host-a / 4242"]  # its heartbeat
    assert rows["w-old"][1:4] == ["stopped", rows["w-old"][2], "0"]
    assert rows["w-old"][8] == "100.0%"
    assert rows["w-beta"][1] == "no heartbeat"
    assert rows["w-beta"][3:6] == ["1", "1", "100.0%"]  # failed-1
    assert rows["w-gamma"][3] == "1"
    assert list(rows)[0] == "w-alpha", "the alive first"
    shot(browser, "workers")


async def test_hostile_task_data_is_shown_as_text(stack: Stack, browser: webdriver.Chrome) -> None:
    # The result is JSON: the page shows the JSON string, quotes escaped, tags intact.
    for task_id, element, shown in (("hostile-1", "task-traceback", HOSTILE),
                                    ("hostile-2", "task-result", json.dumps(HOSTILE))):
        browser.get(f"{stack.url}/tasks/{task_id}")
        assert browser.find_element(By.ID, element).text == shown
        assert browser.execute_script("return window.__pwned === undefined")
        assert not browser.find_elements(By.CSS_SELECTOR, "main img"), "markup was interpreted"
    browser.get(stack.url + "/tasks/hostile-1")
    assert browser.find_element(By.ID, "task-args").text == json.dumps([HOSTILE], indent=2)
    assert HOSTILE in browser.find_element(By.ID, "task-exception").text
    shot(browser, "task-hostile")


def shown(task_id: str) -> str:
    """A task id as the pages show it: HTML cannot carry U+0000."""
    return task_id.replace("\x00", "\N{SYMBOL FOR NULL}")


def get(url: str) -> tuple[int, str]:
    """Status and body of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


async def test_task_links_reach_the_task_whatever_its_id(stack: Stack, browser: webdriver.Chrome) -> None:
    for task_id in ODD_IDS:
        browser.get(stack.url + "/tasks?worker=w-odd")
        [link] = [a for a in browser.find_elements(By.CSS_SELECTOR, "#task-table a.task-link")
                  if a.text == shown(task_id)]
        follow(browser, link)
        assert browser.find_element(By.ID, "task-id").text == shown(task_id), browser.current_url
    # The escaped slash reaches the route as a slash.
    assert (await asyncio.to_thread(get, stack.url + "/tasks/a%2Fb"))[0] == 200
    # A NUL is never written into the page as it is.
    status, html = await asyncio.to_thread(get, stack.url + "/tasks?worker=w-odd")
    assert status == 200 and "\x00" not in html and shown("nul\x00id") in html


async def test_the_unnamed_row_links_nowhere(stack: Stack, browser: webdriver.Chrome) -> None:
    browser.get(stack.url + "/")
    [row] = browser.find_elements(By.XPATH, "//table[@id='stats-table']//tr[td='(unnamed)']")
    assert not row.find_elements(By.TAG_NAME, "a"), "the task list has no filter for 'no name'"
    assert row.find_elements(By.TAG_NAME, "td")[1].text == "1"  # nameless-1


@pytest.mark.parametrize(("query", "message"), [
    ("since=999999999w999999999w", "at most 36500 days"),
    ("until=9999-12-31T23:59:59-05:00", "after 9999-12-31T23:59:59.999Z"),
    ("since=0001-01-01T00:00:00%2B05:00", "before 1970-01-01T00:00:00.000Z"),
    ("since=0001-01-01", "before 1970-01-01T00:00:00.000Z"),
    ("after=W3RydWUsIngiXQ", "start again from the first page"),  # [true,"x"]
])
async def test_bad_task_list_requests_are_refused(stack: Stack, query: str, message: str) -> None:
    status, html = await asyncio.to_thread(get, f"{stack.url}/tasks?{query}")
    assert status == 400 and message in html, (status, html[-2000:])


async def test_live_transition_appears_without_reload(stack: Stack, browser: webdriver.Chrome) -> None:
    browser.get(stack.url + "/")
    wait_for(browser, "the live stream", lambda b: b.find_element(By.ID, "live-status").text == "live")
    browser.execute_script("window.__same_page = true")
    task_id = f"live-{uuid.uuid4().hex[:8]}"
    async with Emitter(stack.settings, worker="w-live") as em:
        await em.started(task_id, task_name="shop.live", args=[HOSTILE])
        await em.success(task_id, HOSTILE, task_name="shop.live")
    wait_for(browser, f"{task_id} in the live table",
             lambda b: task_id in texts(b, "#live-table tbody a"))
    assert browser.execute_script("return window.__same_page === true"), "the page reloaded"
    assert browser.execute_script("return window.__pwned === undefined")
    shot(browser, "overview-live")
    # A live row's link reaches its task, even one whose id is a dot segment.
    async with Emitter(stack.settings, worker="w-live") as em:
        await em.started(".", task_name="shop.live")
    wait_for(browser, "task '.' in the live table",
             lambda b: "." in texts(b, "#live-table tbody a"))
    [dot] = [a for a in browser.find_elements(By.CSS_SELECTOR, "#live-table tbody a")
             if a.text == "."]
    follow(browser, dot)
    assert browser.current_url == stack.url + "/task?id=."
    # The history may store the event a moment after the Redis view published it.
    wait_for(browser, "task '.' in the history",
             lambda b: b.refresh() or texts(b, "#task-id") == ["."])


async def test_live_transition_extends_the_open_timeline(stack: Stack, browser: webdriver.Chrome) -> None:
    task_id = f"live\x00{uuid.uuid4().hex[:8]}"  # matched to the page's id despite the NUL
    page = stack.url + "/tasks/" + quote(task_id, safe="")
    async with Emitter(stack.settings, worker="w-live") as em:
        await em.started(task_id, task_name="shop.live")

        async def known() -> bool:
            return (await asyncio.to_thread(get, page))[0] == 200
        await eventually(known, f"{task_id!r} in the history")
        browser.get(page)
        wait_for(browser, "the live stream",
                 lambda b: b.find_element(By.ID, "live-status").text == "live")
        await em.success(task_id, 1, task_name="shop.live")
    wait_for(browser, "the SUCCESS in the timeline",
             lambda b: texts(b, "#timeline tbody td.state") == ["STARTED", "SUCCESS"])


async def test_only_reads(stack: Stack) -> None:
    for path in ("/", "/tasks", "/tasks/bulk-000", "/workers", "/live", "/static/dashboard.js"):
        request = urllib.request.Request(stack.url + path, data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
        refused.value.close()
        assert refused.value.code == 405, path


async def test_before_the_processor_has_run_each_page_says_what_to_do(base_settings: Settings) -> None:
    # A schema no processor has migrated: the dashboard only reads, so it cannot create
    # the tables; each page says so and what to run, rather than a bare server error.
    tag = uuid.uuid4().hex[:12]
    settings = base_settings.replace(
        events_topic=f"t.{tag}", consumer_group=f"t.{tag}.group", redis_prefix=f"t{tag}:",
        postgres_schema=f"t_{tag}")
    try:
        async with running_dashboard(settings) as url:
            for path in ("/", "/tasks", "/tasks/x", "/task?id=..", "/workers"):
                status, html = await asyncio.to_thread(get, url + path)
                assert status == 503, (path, status, html[-2000:])
                assert f"schema &#39;t_{tag}&#39; lacks the history" in html, (path, html[-2000:])
                assert "`resultlog process`" in html, (path, html[-2000:])
    finally:
        await cleanup(settings)
