"""The operations console (`/ops`) in a real browser: partitions and their
owners, failover after a worker is killed, dead letters replayed, products
managed, the stock audit."""

from __future__ import annotations

import json
import os
import re
import time

from playwright.sync_api import expect

from conftest import LEASE_TTL_MS, PARTITIONS, run_async


def console(system, open_page):
    watched = open_page(f"{system.url}/ops#token={system.admin}")
    expect(watched.page.locator("#account")).to_contain_text("Signed in as admin")
    return watched


def rows(page):
    return page.locator("#partitions tbody tr")


def shown_owners(page) -> dict[int, str]:
    return {
        int(row.get_attribute("data-partition")): row.get_attribute("data-owner")
        for row in rows(page).all()
    }


def test_a_killed_workers_partitions_show_another_owner(system, open_page):
    page = console(system, open_page).page
    expect(rows(page)).to_have_count(PARTITIONS)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not all(shown_owners(page).values()):
        page.wait_for_timeout(200)
    owners = shown_owners(page)
    assert all(owners.values()), owners
    assert owners == system.owners()
    expect(page.locator("#workers li[data-worker]")).to_have_count(2)

    victim = "worker-1"
    lost = [p for p, owner in owners.items() if owner == victim]
    assert lost, owners
    system.kill(victim)
    killed_at = time.monotonic()
    for partition in lost:
        row = page.locator(f'#partitions tbody tr[data-partition="{partition}"]')
        expect(row).to_have_attribute("data-owner", "worker-2", timeout=LEASE_TTL_MS + 8_000)
    took = time.monotonic() - killed_at
    print(f"the console showed the failover {took:.1f} s after the kill (lease TTL {LEASE_TTL_MS} ms)")
    assert took < LEASE_TTL_MS / 1000 + 8, took
    expect(page.locator("#workers li[data-worker]")).to_have_count(1)
    expect(page.locator("#unowned")).to_have_text("Every partition has an owner.")
    system.start_worker(victim)


def publish_poison(system, product, payload: bytes) -> None:
    import nats

    async def send():
        client = await nats.connect(os.environ["CHECKLINE_NATS_URL"])
        try:
            js = client.jetstream()
            subject = f'{system.prefix}.orders.p{product["partition"]}.{product["id"]}'
            await js.publish(subject, payload)
        finally:
            await client.close()

    run_async(send)


def test_a_dead_letter_is_listed_and_replayed_from_the_page(system, open_page):
    product = system.create_product("Poisoned", 3)
    publish_poison(system, product, json.dumps({"type": "mystery"}).encode())
    page = console(system, open_page).page
    letters = page.locator("#dead-letters tbody tr")
    expect(letters).to_have_count(1, timeout=15_000)
    first = letters.first.get_attribute("data-sequence")
    expect(letters.first).to_contain_text("mystery")
    expect(page.locator("#dead-summary")).to_have_text("1 dead letter.")

    letters.first.get_by_role("button", name=f"Replay dead letter {first}").click()
    expect(page.locator("#notice")).to_contain_text(f"Dead letter {first} was queued again")
    # Still poison: the worker dead-letters it again, under a new sequence.
    expect(page.locator(f'#dead-letters tbody tr[data-sequence="{first}"]')).to_have_count(0, timeout=15_000)
    expect(letters).to_have_count(1, timeout=15_000)
    assert letters.first.get_attribute("data-sequence") != first
    # The partition was never blocked.
    buyer = system.token("poison-buyer", "customer")
    placed = system.request("POST", "/v1/orders", token=buyer, body={"product_id": product["id"], "quantity": 1},
                            headers={"Idempotency-Key": "after-poison"})
    assert placed.status == 202
    decided = system.request("GET", f'/v1/orders/{placed.json()["id"]}?wait=10', token=buyer).json()
    assert decided["status"] == "confirmed"


def test_products_are_created_restocked_and_deactivated_from_the_page(system, open_page):
    watched = console(system, open_page)
    page = watched.page
    form = page.locator("#create-product")
    sku = f"CONSOLE-{int(time.time() * 1000)}"
    form.get_by_label("SKU").fill(sku)
    form.get_by_label("Name").fill("Console-made <b>bold</b>")
    form.get_by_label("Price (cents)").fill("1234")
    form.get_by_label("Stock", exact=True).fill("5")
    form.get_by_role("button", name="Create").click()
    expect(page.locator("#notice")).to_contain_text(f"{sku} was created with 5 units")
    row = page.locator("#products tbody tr", has_text=sku)
    expect(row.locator("td.name")).to_have_text("Console-made <b>bold</b>")
    product_id = row.get_attribute("data-product-id")

    row.get_by_label(f"Units to add to {sku}").fill("7")
    row.get_by_role("button", name=f"Restock {sku}").click()
    expect(page.locator("#notice")).to_contain_text(f"{sku}: 7 units added; stock is 12")
    expect(row.locator("td.stock")).to_have_text("12")
    assert system.product(product_id)["stock"] == 12

    row.get_by_role("button", name=f"Deactivate {sku}").click()
    expect(row).to_contain_text("off sale")
    assert system.product(product_id)["active"] is False
    row.get_by_role("button", name=f"Activate {sku}").click()
    expect(row).to_contain_text("on sale")

    # A refused create is told in words and changes nothing.
    form.get_by_label("SKU").fill(sku)
    form.get_by_label("Name").fill("Again")
    form.get_by_label("Price (cents)").fill("1")
    form.get_by_label("Stock", exact=True).fill("1")
    form.get_by_role("button", name="Create").click()
    expect(page.locator("#notice")).to_contain_text("sku")


def test_the_audit_holds_and_tells_when_it_does_not(system, open_page):
    page = console(system, open_page).page
    audit = page.locator("#audit")
    expect(audit).to_have_attribute("data-holds", "true", timeout=15_000)
    product = system.create_product("Audited", 4)
    system.psql(f"UPDATE products SET stock = stock + 1 WHERE id = '{product['id']}'", database=system.database_url)
    try:
        expect(audit).to_have_attribute("data-holds", "false", timeout=15_000)
        expect(page.locator("#audit-details")).to_contain_text(product["sku"])
    finally:
        system.psql(f"UPDATE products SET stock = stock - 1 WHERE id = '{product['id']}'", database=system.database_url)
    expect(audit).to_have_attribute("data-holds", "true", timeout=15_000)


def test_the_chart_counts_orders(system, open_page):
    product = system.create_product("Charted", 50)
    buyer = system.token("chart-buyer", "customer")
    page = console(system, open_page).page
    for i in range(12):
        placed = system.request("POST", "/v1/orders", token=buyer, body={"product_id": product["id"], "quantity": 1},
                                headers={"Idempotency-Key": f"chart-{i}"})
        assert placed.status == 202
    expect(page.locator("#chart svg polyline")).to_have_count(2, timeout=10_000)
    # The page's peaks come from the orders just placed (none before them).
    expect(page.locator("#rates")).to_contain_text(re.compile(r"peak [1-9]\d* and [1-9]"), timeout=15_000)
    assert "Orders per second" in page.locator("#chart svg title").text_content()
