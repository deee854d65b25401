"""The dashboard in a real browser: Debian's Chromium (/usr/bin/chromium, installed by
``make test`` when missing) driven by Playwright, against a real fleet on the simulator and
``keepa-fleet web`` as a subprocess. Screenshots go to var/screenshots/ for a person to look
at. Without a browser these tests skip and say why (never ``playwright install``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fleet import Fleet
from support import ROOT, Processes, fleet_command, unused_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = os.environ.get("FLEET_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = ROOT / "var" / "screenshots"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: the browser tests need Debian's chromium "
            "(make test installs it as root: apt-get install -y chromium chromium-driver)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e '.[test]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.set_default_timeout(30_000)
    try:
        yield pg
    finally:
        context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def start_web(fleet: Fleet, processes: Processes) -> str:
    port = unused_port()
    url = f"http://127.0.0.1:{port}"
    processes.start(
        "web",
        fleet_command(
            "web",
            "--listen",
            f"127.0.0.1:{port}",
            "--db",
            str(fleet.db),
            "--broker",
            fleet.broker_address,
        ),
        env=fleet.env,
    )
    wait_until(
        lambda: requests.get(f"{url}/deals", timeout=2).status_code == 200,
        30,
        interval=0.2,
        message=lambda: f"the dashboard answering; log:\n{processes.log('web')}",
    )
    return url


def shot(page: Any, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def profits_on(page: Any) -> list[int]:
    values = page.locator("tr.deal").evaluate_all("rows => rows.map(r => r.dataset.profit)")
    return [int(v) for v in values if v not in ("", None)]


def asins_on(page: Any) -> list[str]:
    return list(page.locator("tr.deal").evaluate_all("rows => rows.map(r => r.dataset.asin)"))


CANVAS_INK = """el => {
  const c = el.querySelector('canvas');
  if (!c || !c.width || !c.height) return 0;
  const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let ink = 0;
  for (let i = 3; i < px.length; i += 4) if (px[i] > 0) ink++;
  return ink;
}"""


def test_deals_appear_sort_and_chart(tmp_path: Path, processes: Processes, page: Any) -> None:
    fleet = Fleet(processes, tmp_path)
    fleet.start(workers=2)
    url = start_web(fleet, processes)

    response = page.goto(f"{url}/deals")
    assert response.status == 200 and "Deals" in page.title()
    if page.locator("tr.deal").count() == 0:
        # The page says when deals arrive while it is open, and the link shows them.
        page.wait_for_selector("#new-live:not([hidden]) #reload", timeout=90_000)
        page.click("#reload")
    page.wait_for_selector("tr.deal")
    wait_until(
        lambda: (page.reload(), page.locator("tr.deal").count() >= 5)[1],
        90,
        interval=1,
        message=lambda: f"five deals on the page; worker log:\n{processes.log('w0')[-2000:]}",
    )
    shot(page, "deals")

    # Sort by sales rank, then by profit (the header link): the rows reorder, by profit.
    page.click("a.sort[data-sort=rank]")
    page.wait_for_url("**sort=rank**")
    by_rank = asins_on(page)
    page.click("a.sort[data-sort=profit]")
    page.wait_for_url("**sort=profit**")
    first = profits_on(page)
    assert len(first) >= 2
    descending = "order=desc" in page.url
    assert first == sorted(first, reverse=descending)
    page.click("a.sort[data-sort=profit]")  # the same header again: the other way round
    page.wait_for_url(f"**order={'asc' if descending else 'desc'}**")
    second = profits_on(page)
    assert second == sorted(second, reverse=not descending)
    assert asins_on(page) != by_rank or len(set(second)) == 1
    shot(page, "deals-by-profit")

    # A deal's page draws its price history on a canvas (the first deal with a history).
    links = page.locator("tr.deal a.detail").evaluate_all("as => as.map(a => a.href)")
    for link in links[:10]:
        page.goto(link)
        page.wait_for_selector("#deal-title")
        if page.locator("#price-chart").count():
            break
    page.wait_for_selector("#price-chart[data-drawn='1'] canvas")
    ink = page.locator("#price-chart").evaluate(CANVAS_INK)
    assert ink > 200, f"the chart's canvas is (nearly) empty: {ink} painted pixels"
    assert page.locator("#price-chart .u-legend").count() == 1
    shot(page, "deal-chart")

    page.goto(f"{url}/whynot")
    assert page.locator("h1").inner_text().startswith("Why not")
    shot(page, "whynot")


def test_fleet_panel_follows_the_brokers_tokens(
    tmp_path: Path, processes: Processes, page: Any
) -> None:
    # A slow refill (one step a minute) and a broker that asks /token every half second:
    # the balance moves only when the test moves it.
    fleet = Fleet(
        processes,
        tmp_path,
        refill_rate=50,
        refill_period_s=60,
        env={"FLEET_BROKER_SYNC_GAP_S": "0.5"},
    )
    fleet.start_sim()
    fleet.start_broker()
    url = start_web(fleet, processes)
    page.goto(f"{url}/fleet")
    page.wait_for_selector("#fleet-live.up")

    def shown() -> str:
        return str(page.locator("#tokens-now").get_attribute("data-value") or "")

    def follows(value: int) -> bool:
        state = fleet.status() or {}
        broker = (state.get("tokens") or {}).get("now")
        return broker is not None and abs(int(broker) - value) <= 50 and shown() == str(broker)

    for balance in (1234, 777):
        fleet.sim_admin("tokens", tokens=balance)
        wait_until(
            lambda b=balance: follows(b),
            30,
            interval=0.1,
            message=lambda b=balance: f"the panel showing the broker's {b} (shows {shown()!r})",
        )
    assert "777" in page.locator("#tokens-now").inner_text()

    # A worker joins: the panel lists it with its state and heartbeat.
    fleet.start_worker("w0")
    page.wait_for_selector("#workers tr.worker[data-worker=w0]", timeout=30_000)
    row = page.locator("#workers tr.worker[data-worker=w0]").inner_text()
    assert "ALIVE" in row or "WAITING" in row
    page.wait_for_function(
        "document.getElementById('tokens-chart').dataset.drawn === '1'", timeout=10_000
    )
    shot(page, "fleet")
