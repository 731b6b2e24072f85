"""Both pages checked with axe-core (vendored, browser/vendor/axe-core):
no serious or critical violation, with content on show (products, a held
order, partitions, a dead letter)."""

from __future__ import annotations

import json
import uuid

from playwright.sync_api import expect

from conftest import AXE
from test_console import publish_poison


def violations(page) -> list[dict]:
    # The policy forbids injected scripts; the check runs in a context that
    # bypasses it (the pages themselves are tested under it elsewhere).
    page.add_script_tag(path=str(AXE))
    found = page.evaluate(
        """async () => {
            const result = await axe.run(document, {resultTypes: ["violations"]});
            return result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.slice(0, 3).map(n => n.target.join(" "))}));
        }"""
    )
    return [v for v in found if v["impact"] in ("serious", "critical")]


def test_the_storefront_has_no_serious_violation(system, open_page):
    system.create_product("Accessible lamp", 3)
    system.create_product("Gone", 0)
    token = system.token(f"a11y-{uuid.uuid4().hex[:6]}", "customer")
    for phone in (False, True):
        page = open_page(f"{system.url}/#token={token}", phone=phone, bypass_csp=True).page
        expect(page.locator("li.card").first).to_be_visible()
        if not phone:
            page.locator("li.card", has_text="Accessible lamp").get_by_role("button", name="Add to cart: Accessible lamp").click()
            page.get_by_role("button", name="Check out").click()
            expect(page.locator("#order-panel")).to_have_attribute("data-status", "reserved", timeout=20_000)
        found = violations(page)
        assert found == [], json.dumps(found, indent=1)


def test_the_console_has_no_serious_violation(system, open_page):
    product = system.create_product("Console a11y", 2)
    publish_poison(system, product, b"not json")
    for phone in (False, True):
        page = open_page(f"{system.url}/ops#token={system.admin}", phone=phone, bypass_csp=True).page
        expect(page.locator("#partitions tbody tr").first).to_be_visible()
        expect(page.locator("#dead-letters tbody tr").first).to_be_visible(timeout=15_000)
        expect(page.locator("#chart svg")).to_be_visible()
        found = violations(page)
        assert found == [], json.dumps(found, indent=1)
