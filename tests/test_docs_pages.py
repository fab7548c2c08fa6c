"""The docs pages in a real browser (Debian's Chromium, driven by Playwright) with every request beyond this machine
refused: each page renders every operation of the OpenAPI document under its own Content-Security-Policy, and Swagger
UI's "Try it out" reaches the API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import Browser, Page, Route, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from service.api.extensions import DOCS_ASSETS, RedocPage, SwaggerPage

CHROMIUM = Path("/usr/bin/chromium")  # Debian's; Playwright's own browser download needs a CDN we do not reach
# Generous: the first page of a cold Chromium on a machine busy with the rest of the suite (two cores, xdist) has
# taken over 15 s to fire `load`. The tests assert what renders, never how fast.
RENDER_TIMEOUT_MS = 60_000

# Collected inside the page from its first moment (Playwright's init scripts are not subject to the page's CSP).
WATCH_CSP_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener('securitypolicyviolation',
    (event) => window.cspViolations.push(`${event.effectiveDirective} ${event.blockedURI}`));
"""

REDOC_LOGO = frozenset({"img-src https://cdn.redoc.ly/redoc/logo-mini.svg"})


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: these tests need Debian's Chromium (`apt-get install -y chromium`; "
                    ".ci/run installs it)", pytrace=False)
    return CHROMIUM


@pytest.fixture(scope="module")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(chromium))
        yield launched
        await launched.close()


@pytest.fixture(scope="module")
async def operations(api_url: str) -> dict[str, dict[str, Any]]:
    """Every operation of the OpenAPI document, by operationId."""
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        spec = (await http.get("/schema/openapi.json")).json()
    found = {op["operationId"]: op for item in spec["paths"].values() for op in item.values() if isinstance(op, dict)}
    assert len(found) > 20, found.keys()  # the whole API, not a stub
    return found


@dataclass
class OfflinePage:
    page: Page
    refused: list[str] = field(default_factory=list)  # requests for anything not on this machine
    errors: list[str] = field(default_factory=list)  # uncaught exceptions in the page's scripts

    async def csp_violations(self) -> list[str]:
        return await self.page.evaluate("window.cspViolations")

    async def rendered(self, url: str, selector: str, attribute: str) -> list[str]:
        """Open `url`, wait until its viewer has rendered `selector`, and give that attribute of every match; if it
        never renders, say what the page was refused."""
        # The viewer renders from its own scripts; waiting for the selector below is the real check, so the
        # navigation need only have the document.
        response = await self.page.goto(url, wait_until="domcontentloaded")
        assert response is not None and response.status == 200
        try:
            await self.page.wait_for_selector(selector, state="attached")
        except PlaywrightTimeoutError:
            pytest.fail(f"{selector} never rendered; requests refused: {self.refused}, CSP violations: "
                        f"{await self.csp_violations()}, script errors: {self.errors}", pytrace=False)
        return await self.page.eval_on_selector_all(
            selector, "(found, name) => found.map(element => element.getAttribute(name))", attribute)

    async def assert_clean(self, blocked_by_policy: frozenset[str] = frozenset()) -> None:
        """Nothing was fetched from outside, the policy blocked only what it is meant to, no script failed."""
        assert self.refused == [], self.refused
        assert set(await self.csp_violations()) == blocked_by_policy
        assert self.errors == []


@pytest.fixture
async def offline(browser: Browser, api_url: str) -> AsyncIterator[OfflinePage]:
    """A fresh browser tab that may reach 127.0.0.1 and nothing else."""
    assert urlsplit(api_url).hostname == "127.0.0.1"
    context = await browser.new_context()
    context.set_default_timeout(RENDER_TIMEOUT_MS)
    page = await context.new_page()
    watched = OfflinePage(page)

    async def this_machine_only(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            await route.continue_()
        else:
            watched.refused.append(route.request.url)
            await route.abort("internetdisconnected")

    await context.route("**/*", this_machine_only)
    await context.add_init_script(WATCH_CSP_VIOLATIONS)
    page.on("pageerror", lambda error: watched.errors.append(str(error)))
    yield watched
    await context.close()


async def test_swagger_ui_renders_every_operation_offline_and_try_it_out_reaches_the_api(
    offline: OfflinePage, api_url: str, operations: dict[str, dict[str, Any]]
) -> None:
    # Swagger UI gives each operation's block the id `operations-{tag}-{operationId}` (deep linking).
    block_ids = await offline.rendered(f"{api_url}/schema/swagger", ".opblock", "id")
    shown = {block_id.rpartition("-")[2] for block_id in block_ids}
    assert set(operations) - shown == set()

    health = offline.page.locator(f"#operations-{operations['health']['tags'][0]}-health")
    await health.locator(".opblock-summary-control").click()
    await health.get_by_role("button", name="Try it out").click()
    await health.get_by_role("button", name="Execute").click()
    status = health.locator(".live-responses-table .response .response-col_status")
    await status.wait_for()
    assert (await status.inner_text()).strip() == "200"
    await offline.assert_clean()


async def test_redoc_renders_every_operation_offline(
    offline: OfflinePage, api_url: str, operations: dict[str, dict[str, Any]]
) -> None:
    # ReDoc names each operation's section `operation/{operationId}`.
    sections = '[data-section-id^="operation/"]'
    section_ids = await offline.rendered(f"{api_url}/schema/redoc", sections, "data-section-id")
    page = offline.page
    shown = {section_id.partition("/")[2] for section_id in section_ids}
    assert set(operations) - shown == set()
    for operation in operations.values():  # and each by its summary, as a reader sees it
        assert await page.get_by_text(operation["summary"], exact=True).count(), operation["summary"]
    # ReDoc's sidebar credit ("API docs by Redocly") shows a logo from its CDN: the policy refuses it, and ReDoc then
    # drops the image (it removes it when it fails to load).
    assert await page.locator("img[alt='redocly logo']").count() == 0
    await offline.assert_clean(blocked_by_policy=REDOC_LOGO)


def test_each_vendored_viewer_carries_its_licence_and_the_readme_names_its_version() -> None:
    """scripts/vendor_docs_assets.py replaces a viewer's files; its README line has to follow."""
    readme = (DOCS_ASSETS / "README.md").read_text()
    viewers = [folder for folder in DOCS_ASSETS.iterdir() if folder.is_dir()]
    assert {folder.name for folder in viewers} == {SwaggerPage.viewer, RedocPage.viewer}
    for folder in viewers:
        released = json.loads((folder / "package.json").read_text())
        assert (folder / "LICENSE").read_text().strip()
        assert f"**{released['name']}@{released['version']}** ({released['license']}" in readme
